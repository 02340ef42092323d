"""The EAGLE draft networks (their checkpoint formats: format.py).

EAGLE-1/2 (Li et al. 2024, "EAGLE"; SafeAILab/EAGLE ``cnets1.py``): the draft input at position i
is ``fc(concat(embed(t_{i+1}), f_i))`` (the target's feature, i.e. final normed hidden state, at i,
with the token that followed it); one or more Llama decoder layers turn it into ``f^_{i+1}``, and
the TARGET's lm_head reads it (no final norm). Layer 0 has no input_layernorm.

EAGLE-3 (Li et al. 2025, ``cnets.py``): ``fc`` (3h -> h, no bias) fuses the target's low, middle
and high layer features at position i; ``midlayer`` attends over
``concat(input_layernorm(embed(t_{i+1})), hidden_norm(hidden))`` (2h) with the hidden as residual;
``lm_head(norm(out))`` scores a draft vocabulary; ``d2t`` maps draft ids to target ids
(``target = draft + d2t[draft]``), ``t2d`` flags target ids in the draft vocabulary. Later draft
steps feed the midlayer's own output (pre-norm) back as the hidden.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from specdec.kernels import add_rms_norm
from specdec.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from specdec.models.llama import MLP, RMSNorm, concat_linears
from specdec.models.rope import RotaryEmbedding

from ..draft_attention import Attend, DraftAttention


def draft_model_config(config: dict) -> ModelConfig:
    """Our ModelConfig for a draft config.json (EAGLE configs are Llama configs)."""
    d = {"hidden_act": "silu", **config}
    if d.get("model_type") not in SUPPORTED_MODEL_TYPES:
        d["model_type"] = "llama"
    return ModelConfig.from_hf(d)


class DraftNet(nn.Module):
    """What the EAGLE nets share: getting ready for an engine (the target's model interface)."""
    rotary: RotaryEmbedding
    _fused_for: Optional[tuple]  # (device, dtype) that `fuse_draft` built for

    def blocks(self) -> list[tuple[DraftAttention, MLP]]:
        raise NotImplementedError

    def fuse_kernels(self) -> None:
        """Fused projections and element-wise kernels (see `fuse_draft`)."""
        fuse_draft(self, self.blocks())

    def prepare(self, device, dtype: torch.dtype, max_positions: int, fused: bool = True) -> "DraftNet":
        """Moved, in eval mode, frozen; on CUDA (``fused``) the fused kernels and a rope table for
        positions below ``max_positions``."""
        device = torch.device(device)
        self.to(device, dtype).eval().requires_grad_(False)
        if device.type == "cuda" and fused:
            self.fuse_kernels()
            self.rotary.use_table(max_positions, device, dtype)
        return self


class EagleDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, input_norm: bool, qkv_bias: bool = False) -> None:
        super().__init__()
        self.self_attn = DraftAttention(cfg, cfg.hidden_size, qkv_bias)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if input_norm else None
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attend: Attend, fused: bool = False) -> Tensor:  # [N, h]
        if fused:  # the residual add fused into the post-attention norm
            h = x if self.input_layernorm is None else _norm(self.input_layernorm, x)
            a = self.self_attn(h, cos, sin, attend, fused=True)
            post = self.post_attention_layernorm
            h, x = add_rms_norm(a, post.weight, post.eps, x)  # norm(x + a), x + a
            return x + self.mlp(h, fused=True)
        h = x if self.input_layernorm is None else self.input_layernorm(x)
        x = x + self.self_attn(h, cos, sin, attend)
        return x + self.mlp(self.post_attention_layernorm(x))


class EagleNet(DraftNet):
    """EAGLE-1/2 draft: (embedding of t_{i+1}, target feature f_i) -> predicted feature f^_{i+1}."""
    kind = "eagle"

    def __init__(self, cfg: ModelConfig, bias: bool = True, qkv_bias: bool = False) -> None:
        super().__init__()
        self.config, self.bias, self.qkv_bias = cfg, bias, qkv_bias
        h = cfg.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=bias)
        self.layers = nn.ModuleList(EagleDecoderLayer(cfg, i != 0, qkv_bias)
                                    for i in range(cfg.num_hidden_layers))
        self.rotary = RotaryEmbedding(cfg)  # no state: inv_freq is a plain attribute
        self._fused_for: Optional[tuple] = None  # (device, dtype) that fuse_draft built for

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, emb: Tensor, feat: Tensor, positions: Tensor, attends: Sequence[Attend],
                rope: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """emb, feat ``[N, h]``, positions ``[N]`` -> predicted features ``[N, h]``; ``rope``:
        cos, sin ``[N, D]`` of the positions when the caller already has them."""
        x = self.fc(torch.cat([emb, feat.to(emb.dtype)], -1))
        cos, sin = self.rotary(positions, x.dtype) if rope is None else rope
        fused = self._fused_for == (x.device, x.dtype)
        for layer, attend in zip(self.layers, attends):
            x = layer(x, cos, sin, attend, fused)
        return x

    def blocks(self) -> list[tuple[DraftAttention, MLP]]:
        return [(layer.self_attn, layer.mlp) for layer in self.layers]


class Eagle3Layer(nn.Module):
    """EAGLE-3's midlayer: attention over concat(normed embedding, normed hidden), hidden residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.self_attn = DraftAttention(cfg, 2 * h)
        self.mlp = MLP(cfg)
        self.hidden_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)

    def forward(self, emb: Tensor, hidden: Tensor, cos: Tensor, sin: Tensor, attend: Attend,
                fused: bool = False) -> Tensor:
        if fused:
            x = torch.cat([_norm(self.input_layernorm, emb), _norm(self.hidden_norm, hidden)], -1)
            a = self.self_attn(x, cos, sin, attend, fused=True)
            post = self.post_attention_layernorm
            x, h = add_rms_norm(a, post.weight, post.eps, hidden)  # norm(hidden + a), hidden + a
            return h + self.mlp(x, fused=True)
        x = torch.cat([self.input_layernorm(emb), self.hidden_norm(hidden)], -1)  # [N, 2h]
        h = hidden + self.self_attn(x, cos, sin, attend)
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Net(DraftNet):
    """EAGLE-3 draft: fused target features (or its own previous output) + embedding -> next hidden."""
    kind = "eagle3"

    def __init__(self, cfg: ModelConfig, draft_vocab_size: int, target_hidden_size: Optional[int] = None) -> None:
        super().__init__()
        self.config, self.draft_vocab_size = cfg, draft_vocab_size
        h = cfg.hidden_size
        self.target_hidden_size = target_hidden_size or h
        self.fc = nn.Linear(3 * self.target_hidden_size, h, bias=False)
        self.midlayer = Eagle3Layer(cfg)
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(h, draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(draft_vocab_size, dtype=torch.long))  # [Vd]
        self.register_buffer("t2d", torch.zeros(cfg.vocab_size, dtype=torch.bool))  # [V]
        self.rotary = RotaryEmbedding(cfg)
        self._fused_for: Optional[tuple] = None  # (device, dtype) that fuse_draft built for

    num_layers = 1

    def fuse(self, features: Tensor) -> Tensor:  # [N, 3 * target_h] (low, mid, high) -> [N, h]
        return self.fc(features.to(self.fc.weight.dtype))

    def forward(self, emb: Tensor, hidden: Tensor, positions: Tensor, attends: Sequence[Attend],
                rope: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        cos, sin = self.rotary(positions, emb.dtype) if rope is None else rope
        fused = self._fused_for == (emb.device, emb.dtype)
        return self.midlayer(emb, hidden.to(emb.dtype), cos, sin, attends[0], fused)

    def logits(self, out: Tensor) -> Tensor:  # [N, h] -> [N, Vd] float32
        if self._fused_for == (out.device, out.dtype):
            flat = _norm(self.norm, out.reshape(-1, out.shape[-1]))  # [M, h]
            return self.lm_head(flat).float().view(*out.shape[:-1], -1)
        return self.lm_head(self.norm(out)).float()

    def to_target(self, draft_ids: Tensor) -> Tensor:  # draft ids -> target ids, same shape
        return draft_ids + self.d2t[draft_ids]

    def blocks(self) -> list[tuple[DraftAttention, MLP]]:
        return [(self.midlayer.self_attn, self.midlayer.mlp)]


def fuse_draft(net: nn.Module, blocks: Sequence[tuple[DraftAttention, MLP]]) -> None:
    """Switch a draft net to the target's fused CUDA path (`specdec.models.llama.fuse_projections`):
    one q/k/v and one gate/up projection per layer (the parameters become views of the fused
    matrices, so later weight copies update both) and the Triton add+RMSNorm / rope / silu-mul
    kernels, ~12 launches per draft layer instead of ~38. Drafting a tree runs the draft layer
    once per level, so on a small target this is a large share of a step. Call it once the net
    has its device and dtype; moving or casting it afterwards falls back to the plain path (the
    reference, tested against this one)."""
    for attn, mlp in blocks:
        attn.qkv_weight, attn.qkv_bias = concat_linears(attn.q_proj, attn.k_proj, attn.v_proj)
        mlp.gate_up_weight, mlp.gate_up_bias = concat_linears(mlp.gate_proj, mlp.up_proj)
    w = next(net.parameters())
    net._fused_for = (w.device, w.dtype)


def _norm(norm: RMSNorm, x: Tensor) -> Tensor:
    """``norm(x)`` through the fused kernel (one launch; the plain RMSNorm is seven)."""
    return add_rms_norm(x, norm.weight, norm.eps)[0]
