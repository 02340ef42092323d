"""How a run's speedup is measured: against which autoregressive baseline, timed how.

One definition (``DEFINITION``, every table of the report names it): as Spec-Bench's speed.py, a
question's speed is its output tokens over its end-to-end seconds (all its turns), and the
speedup is the mean question speed of the run over the baseline's on the same questions.

Methods (summary.json: ``baseline.method``, with ``baseline.why``):

- ``self``: the run is the baseline (drafter none, lossless verification): speedup 1.
- ``interleaved``: the autoregressive engine serves the same prompts in the same process, on the
  same loaded target, in turns with the run (specdec/interleave.py): both are timed at the same
  moments. What ``speedup.baseline=auto`` does unless a reuse is possible, and always with
  ``speedup.baseline=interleaved``.
- ``reused-after-check``: a finished baseline of the same settings (the baseline store: a sweep's
  own drafter=none runs, or ``baselines/`` beside a run) is reused only when the serving is one
  request at a time (``serving.concurrency=1``, no request rate: a question's time does not
  depend on the others), and only after a check: a sample of its questions (every k-th,
  ``speedup.check_fraction`` of them, at least 2) is served again now, interleaved with the run's
  first requests, and their tokens/s must lie within ``speedup.check_tolerance`` of what the
  stored baseline measured on them (configs/config.yaml: ``speedup.check_tolerance=0.2``).
  ``baseline.check`` holds the numbers. A stored baseline whose run failed is not reused.
- ``re-measured``: the check failed; the baseline goes on serving the other questions, still
  interleaved with the run, and the speedup is over that fresh baseline (``baseline.why`` says
  by how much the stored one was off).

``speedup.baseline=reuse`` reuses after the check or gives no speedup; ``off`` measures none.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Optional

from specdec import experiment as exp
from specdec.metrics import request_metrics

log = logging.getLogger("specdec.speedup")

MODES = ("auto", "interleaved", "reuse", "off")
DEFINITION = ("Spec-Bench's: the mean over questions of output tokens / end-to-end seconds (all turns), "
              "over the same mean of the autoregressive baseline on the same questions")
SHORT = "mean question speed over the baseline's, as Spec-Bench"  # DEFINITION in a table's caption
CHECK_FRACTION = 0.2  # of the stored baseline's questions re-timed by the check (at least 2)
CHECK_TOLERANCE = 0.1  # |tokens/s now / stored - 1| that passes


@dataclasses.dataclass
class Plan:
    method: str  # off | self | interleaved | check
    why: str
    stored: Optional[dict] = None  # check: the stored baseline's summary
    stored_dir: Optional[Path] = None
    sample: tuple[str, ...] = ()  # check: the question ids re-timed
    tolerance: float = CHECK_TOLERANCE


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"speedup.baseline must be auto (reuse a stored baseline after a check, else time "
                         f"one interleaved with the run), interleaved, reuse (only reuse) or off; got {mode!r}")
    return mode


def one_at_a_time(serve_cfg) -> bool:
    """Does a question's time not depend on the other questions (closed loop, one in flight)?"""
    return serve_cfg.concurrency == 1 and serve_cfg.request_rate is None


def sample_ids(ids: list[str], fraction: float) -> tuple[str, ...]:
    """Every k-th of ``ids``, ``fraction`` of them (at least 2, at most all), first and last included."""
    n = len(ids)
    k = min(n, max(2, math.ceil(fraction * n)))
    if k < 2:
        return tuple(ids)
    return tuple(ids[round(i * (n - 1) / (k - 1))] for i in range(k))


def plan(mode: str, is_baseline: bool, store: exp.BaselineStore, key: str, serve_cfg, prompt_ids: list[str],
         fraction: float = CHECK_FRACTION, tolerance: float = CHECK_TOLERANCE) -> Plan:
    """Which baseline this run's speedup will be measured against, and why."""
    if mode == "off":
        return Plan("off", "speedup.baseline=off")
    if is_baseline:
        return Plan("self", "this run is the autoregressive baseline (drafter none, lossless verification)")
    if mode == "interleaved":
        return Plan("interleaved", "speedup.baseline=interleaved")
    if not one_at_a_time(serve_cfg):
        why = ("requests are served together (serving.concurrency is not 1, or a request rate is set): a "
               "question's time depends on the others, so a stored baseline cannot be checked by re-timing "
               "a sample of its questions")
    else:
        stored, note = store.find_checked(key)
        ids = [i for i in prompt_ids if stored and i in (stored.get("questions") or {})]
        if stored is None:
            why = note
        elif len(ids) < 2 or len(ids) < len(prompt_ids):
            why = f"the stored baseline {store.dir(key)} lacks questions of this run"
        else:
            return Plan("check", f"stored baseline {store.dir(key)}", stored, store.dir(key),
                        sample_ids(ids, fraction), tolerance)
    if mode == "reuse":
        return Plan("off", f"speedup.baseline=reuse and no stored baseline can be reused: {why}")
    return Plan("interleaved", why)


def question_times(finished) -> dict[str, dict]:
    """Per question id: output tokens and end-to-end seconds (all turns) of served requests."""
    rows = []
    for req in finished:
        m = request_metrics(req.seq)
        rows.append({"prompt_id": req.prompt.id, "category": req.prompt.category, "output_tokens": m.output_tokens,
                     "e2e_ms": m.e2e_ms, "mean_accepted_length": 1.0, "decode_steps": 0})
    return exp.question_stats(rows)


def check(stored: dict[str, dict], now: dict[str, dict], ids, tolerance: float) -> dict:
    """Tokens/s over the sample now against what the stored baseline measured on it."""
    def rate(qs: dict[str, dict]) -> float:
        time_s = sum(qs[i]["time_s"] for i in ids)
        return sum(qs[i]["output_tokens"] for i in ids) / time_s if time_s > 0 else float("nan")

    if any(i not in now for i in ids):
        return {"questions": list(ids), "passed": False, "tolerance": tolerance,
                "error": "the sample did not finish (interrupted or rejected requests)"}
    ratio = rate(now) / rate(stored)
    return {"questions": list(ids), "tokens_per_s_now": rate(now), "tokens_per_s_stored": rate(stored),
            "ratio": ratio, "tolerance": tolerance, "passed": abs(ratio - 1) <= tolerance}


def check_text(result: dict) -> str:
    if "ratio" not in result:
        return f"check failed: {result['error']}"
    verdict = "passed" if result["passed"] else "failed"
    return (f"check {verdict}: {len(result['questions'])} of its questions ran at "
            f"{result['tokens_per_s_now']:.2f} tokens/s now vs {result['tokens_per_s_stored']:.2f} stored "
            f"(x{result['ratio']:.2f}, tolerance +-{result['tolerance']:.0%})")


def fields(summary: dict, baseline: dict, method: str, why: str, source: str, key: str,
           baseline_path: Optional[Path], **extra) -> dict:
    """What summary.json records about its baseline and the speedup over it."""
    base_q = baseline.get("questions") or {}
    per_category = exp.category_stats(summary["questions"], base_q)
    base_tps = baseline["tokens_per_s"]
    return {
        "speedup": per_category["overall"]["speedup"],
        "speedup_definition": DEFINITION,
        "throughput_ratio": summary["tokens_per_s"] / base_tps if base_tps else float("nan"),
        "baseline_tokens_per_s": base_tps,
        "baseline": {"method": method, "why": why, "source": source, "key": key,
                     "summary": str(baseline_path) if baseline_path else None,
                     "git_sha": baseline.get("git_sha"), "questions": base_q, **extra},
        "per_category": per_category,
    }


def baseline_blocks(run_engine, in_flight: int, seq_tokens: int) -> int:
    """The baseline engine's KV pool: what ``in_flight`` sequences of ``seq_tokens`` (an upper
    bound on this run's) fill, never more than the run's engine holds: the baseline never lacks
    room the run had, and the two pools do not double a run's memory."""
    per_seq = -(-min(seq_tokens, run_engine.max_model_len) // run_engine.config.block_size) + 1
    return min(run_engine.blocks.num_blocks, max(1, in_flight) * per_seq)
