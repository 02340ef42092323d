"""Attention for drafter layers, with two interchangeable backends behind one call
``attend(q [N, Hq, D], k [N, Hkv, D], v [N, Hkv, D]) -> [N, Hq, D]`` (rope already applied):

  * `paged`: inference through the engine's paged kernels (own KV cache, own block table);
  * `DenseTTT`: training over padded batches ``[B, S]`` (rows flattened ``N = B * S``), causal at
    step 0 and, for EAGLE-3's training-time test (Li et al. 2025, "EAGLE-3", sec. 3.2), steps
    k >= 1 where the query at position i sees the step-0 keys at positions <= i and its own
    position's keys of steps 1..k: exactly what a depth-k chain node sees at inference (the
    context, its ancestors, itself).

`DraftAttention` holds the projections; its input width may differ from its output width
(EAGLE-3's midlayer attends over concat(embedding, hidden), 2h -> h).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdec.kernels import rope_
from specdec.models.attention import AttnMetadata, paged_attention
from specdec.models.config import ModelConfig
from specdec.models.rope import apply_rope

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


class DraftAttention(nn.Module):
    """Llama attention whose q/k/v read ``in_dim`` features (h or 2h) and o_proj writes h."""

    def __init__(self, cfg: ModelConfig, in_dim: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(in_dim, self.hq * self.d, bias=qkv_bias)
        self.k_proj = nn.Linear(in_dim, self.hkv * self.d, bias=qkv_bias)
        self.v_proj = nn.Linear(in_dim, self.hkv * self.d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.hq * self.d, cfg.hidden_size, bias=False)
        self.qkv_weight: Tensor | None = None  # [(Hq + 2 Hkv) D, in] set by eagle_net.fuse_draft
        self.qkv_bias: Tensor | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attend: Attend,
                fused: bool = False) -> Tensor:  # [N, in] -> [N, h]
        n = x.shape[0]
        if fused:  # one projection, rope in place on its q and k heads (the target's fused path)
            qkv = rope_(F.linear(x, self.qkv_weight, self.qkv_bias), cos, sin, self.hq + self.hkv)
            a, b = self.hq * self.d, (self.hq + self.hkv) * self.d
            q = qkv[:, :a].view(n, self.hq, self.d)  # [N, Hq, D] views of [N, (Hq + 2 Hkv) D]
            k = qkv[:, a:b].view(n, self.hkv, self.d)
            v = qkv[:, b:].view(n, self.hkv, self.d)
            return self.o_proj(attend(q, k, v).reshape(n, self.hq * self.d))
        q = apply_rope(self.q_proj(x).view(n, self.hq, self.d), cos, sin)  # [N, Hq, D]
        k = apply_rope(self.k_proj(x).view(n, self.hkv, self.d), cos, sin)  # [N, Hkv, D]
        v = self.v_proj(x).view(n, self.hkv, self.d)  # [N, Hkv, D]
        return self.o_proj(attend(q, k, v).reshape(n, self.hq * self.d))


def paged(k_cache: Tensor, v_cache: Tensor, meta: AttnMetadata) -> Attend:
    """One layer's attention over its paged cache ``[num_blocks, block_size, Hkv, D]``."""
    return lambda q, k, v: paged_attention(q, k, v, k_cache, v_cache, meta)


class DenseTTT:
    """Dense attention for training over a padded batch ``[B, S]`` (right padding: a causal query
    never sees a padded key). Call ``step()`` once per unrolled step; keys of earlier steps stay."""

    def __init__(self, batch: int, seq_len: int) -> None:
        self.b, self.s = batch, seq_len
        self.keys: list[Tensor] = []  # per step [B, Hkv, S, D]
        self.values: list[Tensor] = []

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # [N, H*, D] each
        q, k, v = (self._split(x) for x in (q, k, v))  # [B, H*, S, D]
        self.keys.append(k)
        self.values.append(v)
        groups = q.shape[1] // k.shape[1]
        if len(self.keys) == 1:
            o = F.scaled_dot_product_attention(q, _repeat(k, groups), _repeat(v, groups), is_causal=True)
        else:
            o = self._ttt(q, groups)
        return o.transpose(1, 2).reshape(self.b * self.s, q.shape[1], q.shape[3])

    def _split(self, x: Tensor) -> Tensor:  # [N, H, D] -> [B, H, S, D]
        return x.view(self.b, self.s, x.shape[1], x.shape[2]).transpose(1, 2)

    def _ttt(self, q: Tensor, groups: int) -> Tensor:
        """Step k >= 1: causal scores over step 0, diagonal scores over steps 1..k, one softmax."""
        scale = q.shape[-1] ** -0.5
        k0, v0 = _repeat(self.keys[0], groups), _repeat(self.values[0], groups)
        s0 = (q @ k0.transpose(-1, -2)).float() * scale  # [B, H, S, S]
        causal = torch.ones(self.s, self.s, dtype=torch.bool, device=q.device).tril()
        s0 = s0.masked_fill(~causal, float("-inf"))
        diag = torch.stack([(q * _repeat(k, groups)).sum(-1).float() * scale
                            for k in self.keys[1:]], -1)  # [B, H, S, k]
        p = torch.cat([s0, diag], -1).softmax(-1).to(q.dtype)
        out = p[..., : self.s] @ v0  # [B, H, S, D]
        for j, v in enumerate(self.values[1:]):
            out = out + p[..., self.s + j, None] * _repeat(v, groups)
        return out


def _repeat(x: Tensor, groups: int) -> Tensor:  # [B, Hkv, S, D] -> [B, Hkv * groups, S, D]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)
