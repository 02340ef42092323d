"""Batch-invariant ops (kernels/batch_invariant.py): each row's result is bitwise the one it has
computed alone, and the ops compute what the plain ones do (to rounding)."""
import random

import pytest
import torch
import torch.nn.functional as F

from specdec.kernels.batch_invariant import attention_bi, key_lists, linear_bi, pack_weight
from specdec.kernels.batch_invariant_attention import KeyLists, key_group, shared_scores, shared_values
from specdec.kernels.reference import tree_attention_ref


@pytest.mark.parametrize("dtype,packed", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)],
                         ids=["fp32", "bf16", "bf16-packed"])
@pytest.mark.parametrize("out_in", [(1536, 576), (576, 1536)])
def test_linear_rows_do_not_depend_on_the_batch(dtype, packed, out_in):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(*out_in, generator=gen).to(dtype)
    x = torch.randn(120, out_in[1], generator=gen).to(dtype)
    pw = pack_weight(w) if packed else None
    if packed and pw is None:
        pytest.skip("no oneDNN bf16 GEMM here: linear_bi runs unpacked")
    alone = torch.cat([linear_bi(x[i:i + 1], w, packed=pw) for i in range(120)])
    rng = random.Random(0)
    for _ in range(12):
        n = rng.choice([2, 3, 5, 16, 17, 33, 64, 100])
        start = rng.randrange(0, 120 - n)
        assert torch.equal(linear_bi(x[start:start + n], w, packed=pw), alone[start:start + n]), f"{n} rows at {start}"
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(linear_bi(x, w, packed=pw), F.linear(x, w), **tol)


def test_a_packed_weight_serves_only_the_weight_it_packed():
    """Reloaded in place, replaced or cast, the weight is no longer what was packed: linear_bi
    computes from the weight itself (unpacked tiles)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=gen).bfloat16()
    x = torch.randn(5, 32, generator=gen).bfloat16()
    pw = pack_weight(w)
    if pw is None:
        pytest.skip("no oneDNN bf16 GEMM here")
    assert pw.packs(w) and pack_weight(w.float()) is None
    with torch.no_grad():
        w.mul_(2)  # in place: the version changes
    assert not pw.packs(w)
    assert torch.equal(linear_bi(x, w, packed=pw), linear_bi(x, w))
    assert not pw.packs(w.clone()) and not pw.packs(w[:32])


def ragged_batch(gen):
    """Three sequences: two draft trees over prefixes (one crossing a key block), one causal
    prefill chunk; GQA (9 query heads over 3 KV heads)."""
    nb, bs, hkv, hq, d = 64, 16, 3, 9, 64
    kc, vc = torch.randn(nb, bs, hkv, d, generator=gen), torch.randn(nb, bs, hkv, d, generator=gen)
    prefix = torch.tensor([5, 70, 0], dtype=torch.int32)
    counts = [4, 6, 20]
    indptr = torch.tensor([0, 4, 10, 30], dtype=torch.int32)
    tables = torch.randperm(nb, generator=gen)[:30].view(3, 10).int()
    rng, bits = random.Random(1), []
    for c in counts:
        parents = [-1] + [rng.randrange(0, i) for i in range(1, c)]
        for i in range(c):
            b, p = 1 << i, parents[i]
            while p >= 0:
                b, p = b | (1 << p), parents[p]
            bits.append(b)
    use = torch.tensor([True, True, False])
    q = torch.randn(30, hq, d, generator=gen)
    return q, kc, vc, tables, prefix, indptr, torch.tensor(bits), use


def test_attention_equals_the_reference():
    q, kc, vc, tables, prefix, indptr, bits, use = ragged_batch(torch.Generator().manual_seed(0))
    keys = key_lists(indptr, prefix, tables, kc.shape[1], bits, use)
    ref = tree_attention_ref(q, kc, vc, tables, prefix, indptr, bits, use)
    torch.testing.assert_close(attention_bi(q, kc, vc, keys), ref, rtol=1e-5, atol=1e-5)


def test_attention_rows_do_not_depend_on_the_batch():
    """Each sequence alone, and the batch cut differently (rows share nothing)."""
    q, kc, vc, tables, prefix, indptr, bits, use = ragged_batch(torch.Generator().manual_seed(0))
    whole = attention_bi(q, kc, vc, key_lists(indptr, prefix, tables, kc.shape[1], bits, use))
    for b in range(3):
        lo, hi = int(indptr[b]), int(indptr[b + 1])
        keys = key_lists(torch.tensor([0, hi - lo], dtype=torch.int32), prefix[b:b + 1], tables[b:b + 1],
                         kc.shape[1], bits[lo:hi], use[b:b + 1])
        assert torch.equal(attention_bi(q[lo:hi], kc, vc, keys), whole[lo:hi]), f"sequence {b}"


def test_key_lists_follow_logical_positions():
    """A tree node sees the prefix, then its ancestors root first; a causal row its predecessors."""
    tables = torch.arange(4, dtype=torch.int32)[None]
    bits = torch.tensor([0b1, 0b11, 0b101, 0b1011])  # parents: -, 0, 0, 1
    keys = key_lists(torch.tensor([0, 4], dtype=torch.int32), torch.tensor([3], dtype=torch.int32),
                     tables, 4, bits)
    assert keys.lengths.tolist() == [4, 5, 5, 6]
    assert keys.slots[3].tolist() == [0, 1, 2, 3, 4, 6]  # prefix 0..2, node 0 (3), node 1 (4), itself (6)
    assert keys.slots[2, :5].tolist() == [0, 1, 2, 3, 5]


def shared_batch(gen):
    """Sequences whose rows share their prefix's whole key blocks (``S`` = prefix // 64): a
    4-node tree over 200 cached tokens (S = 3), a 20-node tree over 130 (S = 2), a causal chunk of
    70 tokens over 130 (two row chunks), two one-token decodes (no shared part)."""
    nb, bs, hkv, hq, d = 96, 16, 3, 9, 64
    kc, vc = torch.randn(nb, bs, hkv, d, generator=gen), torch.randn(nb, bs, hkv, d, generator=gen)
    prefix = [200, 130, 130, 77, 150]
    counts = [4, 20, 70, 1, 1]
    use = torch.tensor([True, True, False, False, False])
    tables = torch.randperm(nb, generator=gen)[:5 * 19].view(5, 19).int()
    rng, bits = random.Random(3), []
    for c, tree in zip(counts, use.tolist()):
        parents = [-1] + [rng.randrange(0, i) for i in range(1, c)]
        for i in range(c):
            b, p = 1 << i, parents[i]
            while p >= 0:
                b, p = b | (1 << p), parents[p]
            bits.append(b if tree else 0)  # causal sequences: no mask bits
    indptr = torch.tensor([0, 4, 24, 94, 95, 96], dtype=torch.int32)
    q = torch.randn(96, hq, d, generator=gen)
    return q, kc, vc, tables, torch.tensor(prefix, dtype=torch.int32), indptr, torch.tensor(bits), use


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_shared_prefix_blocks_change_no_bit(dtype):
    """Rows attending through their sequence's shared prefix blocks read bitwise what they read
    gathering every key themselves, and what each reads alone (a one-row decode at its
    position), in both loop orders of the shared GEMMs."""
    q, kc, vc, tables, prefix, indptr, bits, use = shared_batch(torch.Generator().manual_seed(0))
    q, kc, vc = q.to(dtype), kc.to(dtype), vc.to(dtype)
    keys = key_lists(indptr, prefix, tables, kc.shape[1], bits, use)
    assert [g.blocks for g in keys.groups] == [0, 3, 2, 2]  # decodes first, then S per sequence
    assert [len(g.chunks) for g in keys.groups] == [1, 1, 1, 2]  # ROW_CHUNK = 64
    shared = attention_bi(q, kc, vc, keys)
    assert torch.equal(shared, attention_bi(q, kc, vc, key_lists(indptr, prefix, tables, kc.shape[1], bits, use,
                                                                 share=False)))
    for r in range(q.shape[0]):
        alone = key_group([0], None, 0, keys.slots[r:r + 1], keys.lengths[r:r + 1])  # a decode's gathers
        one = KeyLists(keys.slots[r:r + 1], keys.lengths[r:r + 1], [alone])
        assert torch.equal(attention_bi(q[r:r + 1], kc, vc, one), shared[r:r + 1]), f"row {r}"
    ref = tree_attention_ref(q.float(), kc.float(), vc.float(), tables, prefix, indptr, bits, use)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(shared.float(), ref, **tol)


def test_shared_gemm_loop_orders_agree():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 7, 3, 64, generator=gen), torch.randn(3, 4, 64, 64, generator=gen)  # [Hkv, n, G, D], [Hkv, S, D, KB]
    p, v = torch.rand(3, 7, 4, 3, 64, generator=gen), torch.randn(3, 4, 64, 64, generator=gen)
    assert torch.equal(shared_scores(q, k, by_row=True), shared_scores(q, k, by_row=False))
    assert torch.equal(shared_values(p, v, by_row=True), shared_values(p, v, by_row=False))
    torch.testing.assert_close(shared_scores(q, k), torch.einsum("hngd,hbdk->hnbgk", q, k), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(shared_values(p, v), torch.einsum("hnbgk,hbkd->hnbgd", p, v), rtol=1e-5, atol=1e-4)
