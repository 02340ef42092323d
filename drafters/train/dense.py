"""A dense, differentiable forward of our Llama model (`specdec.models.LlamaForCausalLM`) over a
padded batch ``[B, S]``, for training a small draft model: the same modules and numerics as the
paged forward (tested equal), with torch SDPA in place of the paged kernels (which have no
backward)."""
from __future__ import annotations

from torch import Tensor

from specdec.drafters.draft_attention import DenseTTT
from specdec.models.rope import apply_rope


def dense_forward(model, ids: Tensor, positions: Tensor) -> Tensor:
    """ids, positions ``[B, S]`` (right padded) -> final normed hidden ``[B, S, h]``."""
    b, s = ids.shape
    h = model.model.embed_tokens(ids.flatten())  # [B * S, h]
    cos, sin = model.model.rotary_emb(positions.flatten(), h.dtype)
    for layer in model.model.layers:
        h = h + _attention(layer.self_attn, layer.input_layernorm(h), cos, sin, DenseTTT(b, s))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.model.norm(h).view(b, s, -1)


def _attention(attn, x: Tensor, cos: Tensor, sin: Tensor, attend: DenseTTT) -> Tensor:
    n = x.shape[0]
    q = attn.q_proj(x).view(n, attn.hq, attn.d)
    k = attn.k_proj(x).view(n, attn.hkv, attn.d)
    v = attn.v_proj(x).view(n, attn.hkv, attn.d)
    if attn.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return attn.o_proj(attend(q, k, v).reshape(n, attn.hq * attn.d))
