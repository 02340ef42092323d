"""ModelConfig parsing (both rope spellings, eos lists, biases, sliding windows, clear errors) and
our rope frequencies against transformers' own RoPE init functions."""
import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from specdec.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from specdec.models.rope import rope_inv_freq

BASE = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=1024)


def test_old_and_v5_rope_spellings_agree():
    old = ModelConfig.from_hf({**BASE, "rope_theta": 5e5, "rope_scaling": {**LLAMA3}})
    new = ModelConfig.from_hf({**BASE, "rope_parameters": {**LLAMA3, "rope_theta": 5e5}})
    legacy = ModelConfig.from_hf({**BASE, "rope_theta": 5e5,
                                  "rope_scaling": {**LLAMA3, "type": "llama3"}})
    for cfg in (old, new, legacy):
        assert cfg.rope_theta == 5e5 and cfg.rope_type == "llama3"
        assert cfg.rope_scaling["factor"] == 8.0
    plain = ModelConfig.from_hf({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert plain.rope_scaling is None and plain.rope_type == "default"


def test_architecture_flags():
    q2 = ModelConfig.from_hf({**BASE, "model_type": "qwen2", "sliding_window": 4096,
                              "use_sliding_window": False, "eos_token_id": [5, 6]})
    assert q2.attention_bias and not q2.o_proj_bias and q2.sliding_window is None
    assert q2.eos_token_ids == (5, 6)
    q3 = ModelConfig.from_hf({**BASE, "model_type": "qwen3", "head_dim": 128})
    assert q3.qk_norm and q3.head_dim == 128 and not q3.attention_bias
    llama = ModelConfig.from_hf({**BASE, "attention_bias": True, "mlp_bias": True, "eos_token_id": 2})
    assert llama.attention_bias and llama.o_proj_bias and llama.mlp_bias
    assert llama.head_dim == 16 and llama.eos_token_ids == (2,)


def test_sliding_window_caps_max_model_len():
    mistral = ModelConfig.from_hf({**BASE, "model_type": "mistral", "sliding_window": 1024})
    assert mistral.sliding_window == 1024 and mistral.max_model_len == 1024
    assert ModelConfig.from_hf({**BASE, "model_type": "mistral", "sliding_window": None}).max_model_len == 4096
    qwen = ModelConfig.from_hf({**BASE, "model_type": "qwen2", "sliding_window": 512,
                                "use_sliding_window": True})
    assert qwen.max_model_len == 512


def test_unknown_model_type_lists_supported():
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported") as e:
        ModelConfig.from_hf({**BASE, "model_type": "gpt2"})
    assert all(t in str(e.value) for t in SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("scaling,match", [
    ({"rope_type": "longrope", "factor": 2.0}, "rope type 'longrope' is not supported"),
    ({"type": "su"}, "supported rope types: default, linear, dynamic, llama3, yarn"),
])
def test_bad_rope_type(scaling, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf({**BASE, "rope_scaling": scaling})


def test_other_bad_configs():
    with pytest.raises(ValueError, match="lacks 'hidden_size'"):
        ModelConfig.from_hf({k: v for k, v in BASE.items() if k != "hidden_size"})
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        ModelConfig.from_hf({**BASE, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        ModelConfig.from_hf({**BASE, "partial_rotary_factor": 0.5})


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
    LLAMA3,
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512, "beta_fast": 16.0,
     "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 1.0},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048,
     "attention_factor": 1.5},
])
def test_inv_freq_matches_transformers(scaling):
    d = {**BASE, "head_dim": 128, "rope_theta": 5e5}
    if scaling is not None:
        d["rope_scaling"] = dict(scaling)
    ours, ours_scale = rope_inv_freq(ModelConfig.from_hf(d))
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in d.items() if k != "model_type"})
    kind = "default" if scaling is None else scaling["rope_type"]
    ref, ref_scale = ROPE_INIT_FUNCTIONS[kind](hf_cfg, "cpu") if kind != "default" else (
        1.0 / (5e5 ** (torch.arange(0, 128, 2).float() / 128)), 1.0)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=0)
    assert math.isclose(ours_scale, ref_scale, rel_tol=1e-9)
    if kind in ("linear", "llama3", "yarn"):  # the scaling really changes something
        assert not torch.allclose(ours, 1.0 / (5e5 ** (torch.arange(0, 128, 2).float() / 128)))
