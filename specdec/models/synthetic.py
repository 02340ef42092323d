"""Real architectures with random weights, for benchmarks that need a model's shape, not its
knowledge: step latencies, kernel counts, graph timings (experiments/)."""
from __future__ import annotations

from typing import Optional

import torch

from .config import ModelConfig
from .llama import LlamaForCausalLM

SHAPES = {
    "llama3_8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                      rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                        high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "smollm2_135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                         tie_word_embeddings=True),
}


def random_model(shape: str, device="cuda", dtype: torch.dtype = torch.bfloat16,
                 seed: int = 0, num_layers: Optional[int] = None) -> LlamaForCausalLM:
    """``SHAPES[shape]`` with N(0, 0.02) weights (norms 1), built on ``device`` directly (an 8B
    model is not initialised on the host first); ``num_layers``: only the first so many layers
    (the shape's per-layer and vocabulary costs, in the memory of a few layers)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    cfg = ModelConfig(**{**SHAPES[shape], **({"num_hidden_layers": num_layers} if num_layers else {})})
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(before)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, 0.02, generator=gen)
    return model
