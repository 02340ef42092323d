"""`fuse_projections`: the fused layer path (one qkv and one gate-up projection, add+RMSNorm /
rope / silu-mul ops of specdec.kernels, here their torch references) gives the plain path's logits
and captured hidden states for every model family; fusing twice keeps the fused weights (CUDA
graphs hold their addresses); moving the model afterwards falls back to the plain path."""
import pytest
import torch

from model_cases import CASES, hf_model, save_hf
from specdec.engine import ragged
from specdec.models.attention import empty_cache
from specdec.models.llama import fuse_projections
from specdec.models.loader import load_model

IDS = [3, 4, 5, 6, 7, 8, 9]


def run(model, dtype=torch.float32):
    cfg = model.config
    kc, vc = empty_cache(cfg.num_hidden_layers, 4, 16, cfg.num_key_value_heads, cfg.head_dim, dtype=dtype)
    meta = ragged.attn_metadata([[0]], [0], [len(IDS)], list(range(len(IDS))), "cpu")
    out = model(torch.tensor(IDS), torch.arange(len(IDS)), meta, kc, vc, capture_layers=(0, 1))
    return model.compute_logits(out.hidden), out.captured


def load(case, tmp_path):
    return load_model(str(save_hf(hf_model(case), tmp_path / case))).model


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_path_equals_plain_path(tmp_path, case):
    model = load(case, tmp_path)
    logits, captured = run(model)
    fuse_projections(model)
    assert model._fused_for == (torch.device("cpu"), torch.float32)
    fused_logits, fused_captured = run(model)
    torch.testing.assert_close(fused_logits, logits, rtol=1e-5, atol=1e-5)
    for i in captured:
        torch.testing.assert_close(fused_captured[i], captured[i], rtol=1e-5, atol=1e-5)


def test_fusing_twice_keeps_the_weights_and_moving_falls_back(tmp_path):
    model = load("llama", tmp_path)
    fuse_projections(model)
    attn = model.model.layers[0].self_attn
    qkv = attn.qkv_weight
    assert attn.q_proj.weight.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()
    fuse_projections(model)
    assert attn.qkv_weight is qkv, "a second fuse rebuilt the weights a captured graph reads"
    reference, _ = run(load_model(str(tmp_path / "llama")).model.to(torch.bfloat16), torch.bfloat16)
    model.to(torch.bfloat16)  # a new dtype: the fused matrices are stale, the plain path must serve
    logits, _ = run(model, torch.bfloat16)
    torch.testing.assert_close(logits, reference)


@pytest.mark.parametrize("case", ["llama", "llama31_rope", "llama_linear", "llama_yarn"])
def test_rope_table_gives_the_computed_values(tmp_path, case):
    """`RotaryEmbedding.use_table` (the CUDA engine's rope: 2 launches instead of 9) reads rows of
    a precomputed table: bit-identical to computing them, for every rope type; the logits too."""
    model = load(case, tmp_path)
    rope = model.model.rotary_emb
    positions = torch.tensor([0, 5, 1, 63, 17, 17])
    want = rope(positions, torch.float32)
    logits, _ = run(model)
    rope.use_table(64, "cpu", torch.float32)
    got = rope(positions, torch.float32)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert torch.equal(run(model)[0], logits)
    old = rope.table
    rope.use_table(32, "cpu", torch.float32)  # smaller: kept
    assert rope.table is old
    rope.use_table(128, "cpu", torch.float32)  # larger: rebuilt, the old one kept alive for graphs
    assert rope.table[0] == 128 and rope._retired == [old]
    assert torch.equal(rope(positions, torch.bfloat16)[0], want[0].to(torch.bfloat16))  # no bf16 table
