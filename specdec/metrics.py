"""Run metrics from finished sequences: latency per request, throughput and acceptance per run.

Conventions (stated because EAGLE users trip over them): the mean accepted length tau counts the
accepted draft tokens plus the bonus token of each decode step (autoregressive decoding: 1.0);
``mean_accepted_draft_tokens`` counts the draft tokens alone. ``accept_rate_per_depth[d-1]`` is the
rate at which a depth-d token was accepted given that the path reached depth d-1 and the tree had
a node at depth d (the per-position acceptance rate of the EAGLE papers).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from specdec.engine.engine import EngineStats
from specdec.engine.sequence import Sequence


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); nan for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class RequestMetrics:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str
    ttft_ms: float
    e2e_ms: float
    itl_ms: list[float]  # one per output token after the first
    tokens_per_s: float
    mean_accepted_length: float

    def as_dict(self, with_itl: bool = False) -> dict:
        d = dict(self.__dict__)
        d["itl_ms_mean"] = statistics.fmean(self.itl_ms) if self.itl_ms else float("nan")
        if not with_itl:
            d.pop("itl_ms")
        return d


def request_metrics(seq: Sequence) -> RequestMetrics:
    ms = 1000.0
    first = seq.first_token_time
    ttft = (first - seq.arrival_time) * ms if first is not None else float("nan")
    end = seq.token_times[-1][0] if seq.token_times else seq.arrival_time
    itl, prev = [], first
    for t, n in seq.token_times[1:]:
        itl += [(t - prev) * ms / n] * n
        prev = t
    e2e_s = end - seq.arrival_time
    out = len(seq.output)
    tau = statistics.fmean(a + 1 for a in seq.accept_lengths) if seq.accept_lengths else 1.0
    return RequestMetrics(seq.request_id, seq.num_prompt, out, seq.finish_reason or "", ttft,
                          e2e_s * ms, itl, out / e2e_s if e2e_s > 0 else float("nan"), tau)


def acceptance(seqs: list[Sequence]) -> dict:
    """tau, draft tokens per step, histogram of accepted lengths, per-depth acceptance rates."""
    steps = [(a, d) for s in seqs for a, d in zip(s.accept_lengths, s.draft_depths)]
    max_depth = max((d for _, d in steps), default=0)
    hist = [0] * (max_depth + 1)
    reached, accepted = [0] * max_depth, [0] * max_depth
    for a, d in steps:
        hist[a] += 1
        for depth in range(1, d + 1):
            if a >= depth - 1:
                reached[depth - 1] += 1
                accepted[depth - 1] += a >= depth
    mean_draft = statistics.fmean(a for a, _ in steps) if steps else 0.0
    return {
        "decode_steps": len(steps),
        "mean_accepted_length": mean_draft + 1.0,
        "mean_accepted_draft_tokens": mean_draft,
        "accepted_length_histogram": hist,
        "accept_rate_per_depth": [acc / r if r else float("nan") for acc, r in zip(accepted, reached)],
    }


def run_summary(seqs: list[Sequence], stats: EngineStats, wall_s: float) -> dict:
    """The run-level numbers of summary.json (config, versions and sha are added by the caller)."""
    served = [s for s in seqs if not (s.finish_reason or "").startswith("rejected")]
    reqs = [request_metrics(s) for s in served]
    ttft = [r.ttft_ms for r in reqs]
    itl = [x for r in reqs for x in r.itl_ms]
    e2e = [r.e2e_ms for r in reqs]
    out_tokens = sum(r.output_tokens for r in reqs)
    busy = stats.draft_s + stats.verify_s
    return {
        "num_requests": len(seqs),
        "num_rejected": len(seqs) - len(served),
        "output_tokens": out_tokens,
        "wall_s": wall_s,
        "tokens_per_s": out_tokens / wall_s if wall_s > 0 else float("nan"),
        **acceptance(served),
        "ttft_ms_p50": percentile(ttft, 50), "ttft_ms_p99": percentile(ttft, 99),
        "itl_ms_mean": statistics.fmean(itl) if itl else float("nan"),
        "itl_ms_p50": percentile(itl, 50), "itl_ms_p99": percentile(itl, 99),
        "e2e_ms_p50": percentile(e2e, 50), "e2e_ms_p99": percentile(e2e, 99),
        "steps": stats.steps,
        "step_ms_mean": 1000 * statistics.fmean(stats.step_times) if stats.step_times else float("nan"),
        "draft_time_share": stats.draft_s / busy if busy > 0 else 0.0,
        "draft_s": stats.draft_s, "verify_s": stats.verify_s, "overhead_s": stats.other_s,
        "num_preemptions": sum(s.num_preemptions for s in seqs),
        "requests": [r.as_dict() for r in reqs],
    }
