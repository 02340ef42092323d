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

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

Param = Union[float, int, Sequence[float], Tensor]


@dataclass(frozen=True)
class SamplingPlan:
    """Host-side facts about a batch's sampling parameters: they pick the verifier's code path
    and loop bounds, so that verification needs no device-to-host read. They are derived for
    free from parameters given as Python numbers or CPU tensors; pass one explicitly when the
    parameters live on the GPU and no read is allowed (CUDA-graph capture). Any plan that holds
    for the batch gives the same results; a looser one only costs time.

    * ``all_greedy``: every row has temperature 0 (only the argmax is computed);
    * ``any_greedy``: some row may have temperature 0;
    * ``filter_cap``: 0 = no sampled row uses top-k or top-p; K >= 1 = every sampled row that
      filters has 0 < top_k <= K (its kept set is decided within its top K logits: one batched
      ``topk`` over all nodes); None = a row may use top-p without top-k (a full sort of the
      current nodes' rows at every depth: the slow path)."""
    all_greedy: bool = False
    any_greedy: bool = True
    filter_cap: Optional[int] = None

    @staticmethod
    def of(temperature: Tensor, top_p: Tensor, top_k: Tensor) -> "SamplingPlan":
        """The tightest plan for host parameter values ``[N]``: CPU tensors or numpy arrays (the
        same expressions work on both; numpy's are ~10x cheaper on small arrays)."""
        greedy = temperature == 0
        filters = ~greedy & ((top_p < 1) | (top_k > 0))
        if not bool(filters.any()):
            cap = 0
        elif bool((filters & (top_k <= 0)).any()):
            cap = None
        else:
            cap = int(top_k[filters].max())
        return SamplingPlan(bool(greedy.all()), bool(greedy.any()), cap)

    def violation(self, temperature: Tensor, top_p: Tensor, top_k: Tensor) -> Optional[str]:
        """Why this plan does not hold for host parameter values (None: it holds)."""
        tight = SamplingPlan.of(temperature, top_p, top_k)
        if self.all_greedy and not tight.all_greedy:
            return "all_greedy=True but some row has temperature > 0"
        if tight.any_greedy and not self.any_greedy:
            return "any_greedy=False but some row has temperature 0"
        if tight.all_greedy or self.filter_cap is None or tight.filter_cap == 0:
            return None
        if tight.filter_cap is None or tight.filter_cap > self.filter_cap:
            return (f"filter_cap={self.filter_cap} but a sampled row has top_k = 0 or above it "
                    f"with top-p or top-k on (tight plan: {tight})")
        return None


@dataclass
class RowParams:
    """Per-row sampling parameters on the logits' device, plus the plan's host facts."""
    temperature: Tensor  # [N] float32, 0 = greedy
    top_p: Tensor  # [N] float32 in (0, 1]
    top_k: Tensor  # [N] int64, 0 = off
    all_greedy: bool
    any_greedy: bool
    filter_cap: int  # 0: no row filters; K < V: batched top-K thresholds; V: sort per row

    def __post_init__(self) -> None:
        self.greedy = self.temperature == 0  # [N] bool
        self.inv_temperature = 1.0 / torch.where(self.greedy, 1.0, self.temperature)  # [N]

    def repeat(self, times: int) -> "RowParams":
        """Each row repeated ``times`` times (for logits [B, T, V] flattened to [B * T, V])."""
        rep = lambda x: x.repeat_interleave(times)  # noqa: E731
        return RowParams(rep(self.temperature), rep(self.top_p), rep(self.top_k), self.all_greedy,
                         self.any_greedy, self.filter_cap)


def read_plan(temperature: Param, top_p: Param, top_k: Param, rows: int,
              plan: Optional[SamplingPlan] = None, check: bool = True) -> SamplingPlan:
    """The plan for a batch of ``rows``: ``plan`` as given, else derived from the values. Values
    are read from the device (one transfer) only when they live there and are needed: no plan
    was given, or ``check`` asks to validate them (against the plan too)."""
    if plan is not None and not check:  # trusted: shapes only, no tensor op
        for x, name in ((temperature, "temperature"), (top_p, "top_p"), (top_k, "top_k")):
            _check_shape(x, rows, name)
        return plan
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (temperature, top_p, top_k)):
        return _scalar_plan(float(temperature), float(top_p), float(top_k), plan)
    cols = [_column(x, rows, dt, name) for x, dt, name in
            ((temperature, torch.float32, "temperature"), (top_p, torch.float32, "top_p"),
             (top_k, torch.float64, "top_k"))]
    host = _on_host(cols)  # [3, rows] float64 on the CPU
    _check_params(host)
    temp, tp, tk = host
    if plan is None:
        return SamplingPlan.of(temp, tp, tk)
    why = plan.violation(temp, tp, tk)
    if why:
        raise ValueError(f"the SamplingPlan does not hold for these parameters: {why}")
    return plan


def _scalar_plan(temp: float, tp: float, tk: float, plan: Optional[SamplingPlan]) -> SamplingPlan:
    """`read_plan` for Python numbers: no tensor is made."""
    if not (math.isfinite(temp) and temp >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy); got {temp}")
    if not 0 < tp <= 1:
        raise ValueError(f"top_p must lie in (0, 1] (1 = off); got {tp}")
    if not (tk >= 0 and tk == round(tk)):
        raise ValueError(f"top_k must be a whole number >= 0 (0 = off); got {tk}")
    greedy = temp == 0
    filters = not greedy and (tp < 1 or tk > 0)
    tight = SamplingPlan(greedy, greedy, 0 if not filters else (None if tk <= 0 else int(tk)))
    if plan is None:
        return tight
    why = plan.violation(*(torch.tensor([v]) for v in (temp, tp, tk)))
    if why:
        raise ValueError(f"the SamplingPlan does not hold for these parameters: {why}")
    return plan


def device_params(temperature: Param, top_p: Param, top_k: Param, rows: int, plan: SamplingPlan,
                  vocab: int, device) -> RowParams:
    """Parameters as ``[rows]`` tensors on ``device`` (no device-to-host read)."""
    out = []
    for x, dtype, name in ((temperature, torch.float32, "temperature"),
                           (top_p, torch.float32, "top_p"), (top_k, torch.int64, "top_k")):
        if isinstance(x, Tensor):
            t = _column(x, rows, dtype, name).to(device, non_blocking=True)
        elif isinstance(x, (int, float)):
            t = torch.full((rows,), x, dtype=dtype, device=device)
        else:
            t = torch.as_tensor(x, dtype=dtype).to(device, non_blocking=True)
        out.append(t)
    cap = vocab if plan.filter_cap is None else min(plan.filter_cap, vocab)
    return RowParams(*out, all_greedy=plan.all_greedy, any_greedy=plan.any_greedy, filter_cap=cap)


def row_params(temperature: Param, top_p: Param, top_k: Param, rows: int, vocab: int,
               device, plan: Optional[SamplingPlan] = None, check: bool = True) -> RowParams:
    """Validate, plan and place the parameters (see `read_plan`, `device_params`)."""
    plan = read_plan(temperature, top_p, top_k, rows, plan, check)
    return device_params(temperature, top_p, top_k, rows, plan, vocab, device)


def _column(x: Param, rows: int, dtype, name: str) -> Tensor:  # [rows]
    t = torch.as_tensor(x, dtype=dtype) if not isinstance(x, Tensor) else x.to(dtype)
    if t.dim() == 0:
        t = t.expand(rows)
    if t.shape != (rows,):
        raise ValueError(f"{name} must be a scalar or have one value per row [{rows}]; got shape "
                         f"{tuple(t.shape)}")
    return t


def _check_shape(x: Param, rows: int, name: str) -> None:
    shape = tuple(x.shape) if isinstance(x, Tensor) else (() if isinstance(x, (int, float)) else (len(x),))
    if shape not in ((), (rows,)):
        raise ValueError(f"{name} must be a scalar or have one value per row [{rows}]; got shape {shape}")


def _on_host(cols: list[Tensor]) -> Tensor:  # [3, rows] float64 on the CPU
    """CPU columns cost nothing; device ones are read in one transfer."""
    if all(c.device.type == "cpu" for c in cols):
        return torch.stack([c.double() for c in cols])
    dev = next(c.device for c in cols if c.device.type != "cpu")
    return torch.stack([c.to(dev).double() for c in cols]).cpu()


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
