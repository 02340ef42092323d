"""The target distribution, in one place: temperature, then top-k, then top-p (the order and
semantics of HF transformers' TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper),
and inverse-CDF sampling from one uniform per row.

The verifiers preserve exactly ``processed_probs(logits, temperature, top_p, top_k)``; a plain
sampler that draws ``sample_from_probs(processed_probs(...), u)`` draws the same law, so
speculative and autoregressive runs of one request are comparable token for token in law.

Rules, per row:
  * temperature 0 is greedy: the point mass at ``argmax(logits)`` (first index on ties);
  * top-k (k > 0) keeps the tokens whose scaled logit is >= the k-th largest (ties at the k-th
    value are kept, as HF does);
  * top-p (< 1) keeps the smallest set of most probable tokens whose mass reaches top_p, taking
    whole tie classes: token x stays iff the mass of tokens strictly more probable than x is
    < top_p. HF breaks exact ties at the boundary by sort order; here a tie class is kept whole,
    so the kept set can only be larger by tokens tied with the last one kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

Param = Union[float, int, Sequence[float], Tensor]


@dataclass
class RowParams:
    """Per-row sampling parameters on the logits' device, plus host-side facts the kernels'
    choice depends on (read once per call)."""
    temperature: Tensor  # [N] float32, 0 = greedy
    top_p: Tensor  # [N] float32 in (0, 1]
    top_k: Tensor  # [N] int64, 0 = off
    all_greedy: bool
    any_greedy: bool
    filter_cap: int  # 0: no row filters; else the top-k width that holds every kept set (V: sort)

    def __post_init__(self) -> None:
        self.greedy = self.temperature == 0  # [N] bool
        self.inv_temperature = 1.0 / torch.where(self.greedy, 1.0, self.temperature)  # [N]

    def repeat(self, times: int) -> "RowParams":
        """Each row repeated ``times`` times (for logits [B, T, V] flattened to [B * T, V])."""
        rep = lambda x: x.repeat_interleave(times)  # noqa: E731
        return RowParams(rep(self.temperature), rep(self.top_p), rep(self.top_k), self.all_greedy,
                         self.any_greedy, self.filter_cap)


def row_params(temperature: Param, top_p: Param, top_k: Param, rows: int, vocab: int,
               device) -> RowParams:
    """Broadcast scalars or ``[rows]`` values to tensors, validate them, and read the host facts
    in one transfer."""
    temp = _column(temperature, rows, torch.float32, "temperature")
    tp = _column(top_p, rows, torch.float32, "top_p")
    tk = _column(top_k, rows, torch.float64, "top_k")
    host = torch.stack([temp.double(), tp.double(), tk]).cpu()  # [3, rows]: one sync
    _check_params(host)
    greedy = host[0] == 0
    sampled = ~greedy
    filters = sampled & ((host[1] < 1) | (host[2] > 0))
    cap = 0
    if bool(filters.any()):
        needs_sort = sampled & (host[1] < 1) & (host[2] == 0)
        cap = vocab if bool(needs_sort.any()) else min(int(host[2][filters].max()), vocab)
    return RowParams(temp.to(device), tp.to(device), tk.long().to(device),
                     all_greedy=bool(greedy.all()), any_greedy=bool(greedy.any()), filter_cap=cap)


def _column(x: Param, rows: int, dtype, name: str) -> Tensor:  # [rows]
    t = torch.as_tensor(x, dtype=dtype) if not isinstance(x, Tensor) else x.to(dtype)
    if t.dim() == 0:
        t = t.expand(rows)
    if t.shape != (rows,):
        raise ValueError(f"{name} must be a scalar or have one value per row [{rows}]; got shape "
                         f"{tuple(t.shape)}")
    return t


def _check_params(host: Tensor) -> None:
    temp, tp, tk = host
    if not bool(torch.isfinite(temp).all()) or bool((temp < 0).any()):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy); got {temp.tolist()}")
    if not bool(((tp > 0) & (tp <= 1)).all()):
        raise ValueError(f"top_p must lie in (0, 1] (1 = off); got {tp.tolist()}")
    if bool((tk < 0).any()) or bool((tk != tk.round()).any()):
        raise ValueError(f"top_k must be a whole number >= 0 (0 = off); got {tk.tolist()}")


def processed_probs(logits: Tensor, temperature: Param = 1.0, top_p: Param = 1.0, top_k: Param = 0,
                    params: RowParams | None = None) -> Tensor:
    """The target distribution ``[..., V]`` float32 of ``logits [..., V]``. Sampling parameters
    are scalars or one value per leading row: ``[N]`` for ``[N, V]``, ``[B]`` for ``[B, T, V]``
    (shared by the T nodes of a row). ``params`` (from `row_params`) skips re-validation."""
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)  # [N, V]
    lead = logits.shape[0] if logits.dim() > 1 else 1
    if params is None:
        params = row_params(temperature, top_p, top_k, lead, vocab, logits.device)
    if params.temperature.shape[0] != flat.shape[0]:
        params = params.repeat(flat.shape[0] // params.temperature.shape[0])
    return _processed(flat, params).view(logits.shape)


def _processed(logits: Tensor, params: RowParams) -> Tensor:  # [N, V] float32
    if params.all_greedy:
        return _one_hot_argmax(logits)
    scaled = logits.float() * params.inv_temperature[:, None]  # [N, V]
    if params.filter_cap:
        thr = _keep_threshold(scaled, params)  # [N]
        scaled = scaled.masked_fill(scaled < thr[:, None], float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.any_greedy:
        probs = torch.where(params.greedy[:, None], _one_hot_argmax(logits), probs)
    return probs


def _one_hot_argmax(logits: Tensor) -> Tensor:  # [N, V] float32
    out = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    return out.scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)


def _keep_threshold(scaled: Tensor, params: RowParams) -> Tensor:  # [N]
    """The smallest scaled logit kept by top-k then top-p (-inf: keep all). Works on the
    descending top ``filter_cap`` values (a full sort only when a row uses top-p without top-k)
    and decides by value, so tie classes are kept or dropped whole."""
    vocab = scaled.shape[-1]
    cap = params.filter_cap
    vals = scaled.topk(cap, dim=-1).values if cap < vocab else scaled.sort(dim=-1, descending=True).values
    k = params.top_k.clamp(max=cap)  # [N]
    thr_k = torch.where(k > 0, vals.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0], float("-inf"))
    lse = torch.logsumexp(scaled.masked_fill(scaled < thr_k[:, None], float("-inf")), dim=-1)  # [N]
    inside = vals >= thr_k[:, None]  # [N, K]
    p_sorted = torch.where(inside, torch.exp(vals - lse[:, None]), 0.0)  # [N, K]
    mass_above = torch.cumsum(p_sorted, dim=-1) - p_sorted  # [N, K] exclusive
    keep = inside & (mass_above < params.top_p[:, None])  # a prefix, never empty
    last = (keep.sum(-1) - 1).clamp(min=0)  # [N]
    thr_p = torch.where(params.top_p < 1, vals.gather(1, last[:, None])[:, 0], float("-inf"))
    return torch.maximum(thr_k, thr_p)


def sample_from_probs(probs: Tensor, uniforms: Tensor) -> Tensor:  # [N] int64
    """Inverse-CDF draw from each row of ``probs [N, V]`` (non-negative, any positive total)
    with ``uniforms [N]`` in [0, 1): the first token whose cumulative mass exceeds u * total.
    It always lands on a token of positive mass; one uniform per draw keeps the randomness an
    input, so outputs do not depend on batch composition."""
    cdf = torch.cumsum(probs.float(), dim=-1)  # [N, V]
    total = cdf[:, -1:]  # [N, 1]
    target = torch.minimum(uniforms.float()[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    idx = torch.searchsorted(cdf, target, right=True)  # [N, 1]
    return idx.clamp_(max=probs.shape[-1] - 1)[:, 0]


def sample(logits: Tensor, temperature: Param, top_p: Param, top_k: Param, uniforms: Tensor) -> Tensor:
    """Plain sampling, ``logits [N, V]`` -> tokens ``[N]``: the law every verifier preserves."""
    return sample_from_probs(processed_probs(logits, temperature, top_p, top_k), uniforms)
