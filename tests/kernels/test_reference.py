"""The references against independent oracles: dense float64 attention with an explicit mask
built by walking parent links, and element-by-element loops for the cache writes."""
import pytest
import torch

from kernel_cases import (ATTN_CASES, MIX, SeqSpec, ancestor_bits, ancestor_matrix,
                          compact_case, dense_oracle, make_batch, rel_err, store_case, tree_parents)
from specdec.kernels import compact_kv_ref, store_kv_ref, tree_attention_ref
from specdec.kernels.reference import new_token_mask_ref

FP32_REL_TOL = 1e-5


@pytest.mark.parametrize("kind", ["single", "chain", "star", "balanced", "random"])
def test_bitmask_decodes_to_ancestor_matrix(kind):
    parents = tree_parents(kind, 64, torch.Generator().manual_seed(1))
    bits = torch.tensor(ancestor_bits(parents), dtype=torch.int64)
    assert torch.equal(new_token_mask_ref(len(parents), bits), ancestor_matrix(parents))


@pytest.mark.parametrize("case", ["mix_g4_d64_p16", "mix_g3_d64_p32", "mix_g1_d32_p64",
                                  "split4_g3_d64_p32", "trees_no_flags_g2_d64", "causal_no_mask_g4_d64"])
def test_tree_attention_ref_matches_dense_oracle(case):
    specs, hq, hkv, d, page, _ = ATTN_CASES[case]
    batch = make_batch(specs, hq, hkv, d, page, seed=3)
    assert rel_err(tree_attention_ref(*batch.args()), dense_oracle(batch)) < FP32_REL_TOL


def test_tree_attention_ref_sm_scale_and_empty_sequence():
    batch = make_batch([SeqSpec(10, 0), *MIX[:3]], 4, 2, 32, 16, seed=4)
    out = tree_attention_ref(*batch.args(), sm_scale=0.3)
    assert rel_err(out, dense_oracle(batch, sm_scale=0.3)) < FP32_REL_TOL


def test_oracle_detects_a_wrong_mask():
    """The comparison has teeth: a star tree read as a chain changes the output."""
    batch = make_batch([SeqSpec(4, 9, "star")], 2, 1, 32, 16, seed=5)
    batch.tree_mask = torch.tensor(ancestor_bits(tree_parents("chain", 9, None)), dtype=torch.int64)
    assert rel_err(tree_attention_ref(*batch.args()), dense_oracle(batch)) > 1e-2


def test_store_kv_ref_matches_loop():
    k, v, kc, vc, slots = store_case(n=20, hkv=2, d=16, page=8, num_blocks=5)
    kr, vr = kc.clone(), vc.clone()
    store_kv_ref(k, v, kc, vc, slots)
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            kr[s // 8, s % 8], vr[s // 8, s % 8] = k[i], v[i]
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


def test_compact_kv_ref_reads_before_writes():
    kc, vc, src, dst = compact_case(layers=2, hkv=2, d=16, page=8)
    old_k, old_v = kc.clone(), vc.clone()
    compact_kv_ref(kc, vc, src, dst)
    want_k, want_v = old_k.clone(), old_v.clone()
    for s, t in zip(src.tolist(), dst.tolist()):
        if s >= 0 and t >= 0:  # copy from the untouched snapshot: all reads before writes
            want_k[:, t // 8, t % 8] = old_k[:, s // 8, s % 8]
            want_v[:, t // 8, t % 8] = old_v[:, s // 8, s % 8]
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)
