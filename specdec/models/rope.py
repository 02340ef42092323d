"""Rotary position embeddings (Su et al. 2021) with the scaling variants HF checkpoints name.

The frequency formulas follow transformers' `modeling_rope_utils` so that our logits match HF's:
  * default: ``inv_freq[i] = theta ** (-2i / D)``;
  * linear (position interpolation, Chen et al. 2023): ``inv_freq / factor``;
  * dynamic (NTK): transformers rescales only past ``max_position_embeddings``; we cap contexts
    there (`ModelConfig.max_model_len`), where it equals default;
  * llama3 (Llama 3.1): low frequencies divided by ``factor``, high kept, a smooth ramp between;
  * yarn (Peng et al. 2023): per-dimension blend of interpolation and extrapolation plus an
    attention factor that scales cos and sin.
Rotation is the "rotate half" layout of HF Llama (the first and second halves of a head pair up).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import ModelConfig


def base_inv_freq(theta: float, dim: int) -> Tensor:  # [dim // 2] float32
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def linear_inv_freq(theta: float, dim: int, p: dict) -> Tensor:
    return base_inv_freq(theta, dim) / p["factor"]


def llama3_inv_freq(theta: float, dim: int, p: dict) -> Tensor:
    inv = base_inv_freq(theta, dim)  # [dim // 2]
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_attention_factor(p: dict, factor: float) -> float:
    if p.get("attention_factor") is not None:
        return float(p["attention_factor"])
    ms, ms_all = p.get("mscale"), p.get("mscale_all_dim")
    if ms and ms_all:
        return float(yarn_mscale(factor, ms) / yarn_mscale(factor, ms_all))
    return yarn_mscale(factor)


def yarn_correction_range(p: dict, dim: int, theta: float, orig_len: int) -> tuple[float, float]:
    """Dimensions below ``low`` extrapolate, above ``high`` interpolate (YaRN eq. 17-18)."""
    def dim_of(rotations: float) -> float:
        return dim * math.log(orig_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(p.get("beta_fast") or 32), dim_of(p.get("beta_slow") or 1)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def yarn_inv_freq(theta: float, dim: int, p: dict, max_pos: int) -> tuple[Tensor, float]:
    orig_len = p["original_max_position_embeddings"]
    factor = p.get("factor") or max_pos / orig_len
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)  # [dim // 2]
    low, high = yarn_correction_range(p, dim, theta, orig_len)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # [dim // 2] weight of the unscaled frequency
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv, yarn_attention_factor(p, factor)


def rope_inv_freq(cfg: ModelConfig) -> tuple[Tensor, float]:
    """(inv_freq [head_dim // 2] float32, attention scaling applied to cos/sin)."""
    theta, dim, p = cfg.rope_theta, cfg.head_dim, cfg.rope_scaling
    kind = cfg.rope_type
    if kind in ("default", "dynamic"):
        return base_inv_freq(theta, dim), 1.0
    if kind == "linear":
        return linear_inv_freq(theta, dim, p), 1.0
    if kind == "llama3":
        return llama3_inv_freq(theta, dim, p), 1.0
    if kind == "yarn":
        return yarn_inv_freq(theta, dim, p, cfg.max_position_embeddings)
    raise ValueError(f"rope type {kind!r} has no implementation")  # ModelConfig rejects it first


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # A plain attribute, not a buffer: `model.to(torch.bfloat16)` must not round the frequencies.
        # Computed on the CPU even when the model is built under `torch.device("meta")`.
        with torch.device("cpu"):
            self.inv_freq, self.scaling = rope_inv_freq(cfg)  # [D / 2] float32
        self.table: tuple | None = None  # (positions, device, dtype, cos [P, D], sin [P, D])
        self._retired: list[tuple] = []  # replaced tables: CUDA graphs may still read them

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin ``[N, D]`` in ``dtype``, computed in fp32 as HF does; rows of the table
        (`use_table`) when there is one for this device and dtype (callers keep positions below
        its size)."""
        t = self.table
        if t is not None and t[1] == positions.device and t[2] == dtype:
            return t[3][positions], t[4][positions]  # 2 launches; computing them is 9
        return self._compute(positions, dtype)

    def _compute(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [N, D / 2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [N, D]
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)

    def use_table(self, num_positions: int, device, dtype: torch.dtype) -> None:
        """Precompute cos, sin for positions ``[0, num_positions)`` (same formula, so the same
        values) and read rows of them from now on. A step of a small model is launch-bound and
        drafters run rope once per tree level. Grows, never shrinks; a replaced table stays
        alive for the CUDA graphs captured on it."""
        cos, sin = self._compute(torch.arange(1, device=device), dtype)  # the device with its index
        t = self.table
        if t is not None and t[1] == cos.device and t[2] == dtype and t[0] >= num_positions:
            return
        if t is not None:
            self._retired.append(t)
        cos, sin = self._compute(torch.arange(num_positions, device=cos.device), dtype)
        self.table = (num_positions, cos.device, dtype, cos, sin)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x ``[N, H, D]``, cos/sin ``[N, D]`` -> ``[N, H, D]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # rotate_half
    return x * cos[:, None, :] + rotated * sin[:, None, :]
