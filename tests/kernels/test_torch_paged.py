"""The CPU fast path (batched SDPA over a per-step plan) equals the plain-torch reference."""
import pytest
import torch

from specdec.kernels.reference import tree_attention_ref
from specdec.kernels.torch_paged import plan_torch_paged, tree_attention_torch
from specdec.verifiers import DraftTree


def random_batch(gen, kinds, hq=6, hkv=2, d=16, bs=4, num_blocks=64):
    """A ragged batch mixing decode (T=1), tree and prefill sequences over shuffled blocks."""
    perm = torch.randperm(num_blocks, generator=gen)
    tables, prefix, counts, bits, use = [], [], [], [], []
    used = 0
    for kind in kinds:
        p = int(torch.randint(0, 30, (1,), generator=gen))
        n = {"decode": 1, "tree": int(torch.randint(2, 12, (1,), generator=gen)),
             "prefill": int(torch.randint(65, 90, (1,), generator=gen)),
             "chunk": int(torch.randint(2, 20, (1,), generator=gen))}[kind]
        nb = -(-(p + n) // bs)
        tables.append(perm[used: used + nb].tolist())
        used += nb
        prefix.append(p)
        counts.append(n)
        if kind == "tree":
            parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
            t = DraftTree.from_lists([[0] * n], [parents])
            bits += t.ancestor_mask[0].tolist()
        else:
            bits += [0] * n
        use.append(kind == "tree")
    width = max(len(t) for t in tables)
    block_tables = torch.zeros(len(kinds), width, dtype=torch.int32)
    for b, t in enumerate(tables):
        block_tables[b, : len(t)] = torch.tensor(t)
    k_cache = torch.randn(num_blocks, bs, hkv, d, generator=gen)
    v_cache = torch.randn(num_blocks, bs, hkv, d, generator=gen)
    indptr = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(int(indptr[-1]), hq, d, generator=gen)
    return (q, k_cache, v_cache, block_tables, torch.tensor(prefix, dtype=torch.int32), indptr,
            torch.tensor(bits), torch.tensor(use))


@pytest.mark.parametrize("kinds", [["decode"], ["tree"], ["prefill"], ["chunk", "decode"],
                                   ["decode", "tree", "prefill", "chunk", "tree", "decode"]])
@pytest.mark.parametrize("seed", range(3))
def test_matches_reference(kinds, seed):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, tables, prefix, indptr, bits, use = random_batch(gen, kinds)
    ref = tree_attention_ref(q, kc, vc, tables, prefix, indptr, bits, use)
    plan = plan_torch_paged(indptr, prefix, tables, kc.shape[1], bits, use)
    got = tree_attention_torch(q, kc, vc, plan)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_causal_everywhere_without_mask():
    gen = torch.Generator().manual_seed(7)
    q, kc, vc, tables, prefix, indptr, _, _ = random_batch(gen, ["chunk", "prefill", "decode"])
    ref = tree_attention_ref(q, kc, vc, tables, prefix, indptr)
    got = tree_attention_torch(q, kc, vc, plan_torch_paged(indptr, prefix, tables, kc.shape[1]))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
