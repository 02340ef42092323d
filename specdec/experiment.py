"""Experiment bookkeeping on plain dicts (no Hydra here): which settings a run's autoregressive
baseline must share, a store of finished baselines keyed by them, per-question and per-category
speed and acceptance, and whether a run directory already holds a finished run (sweep resume).

Speedup (specdec/speedup.py measures it): per question, as Spec-Bench's evaluation/speed.py, a
question's speed is its output tokens over its requests' end-to-end time (all turns); a set of
questions' speedup is the ratio of its mean question speed to the baseline's on the same questions.
A run folder holding ``FAILED`` (what ``failed`` reads) is a run that raised: nothing here reuses it.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
from pathlib import Path
from typing import Iterable, Optional

# What the autoregressive baseline must share with a run (plus the sampling parameters and the
# resolved device and dtype): same model, data, engine, serving, lengths and seed.
BASELINE_KEYS = ("model", "data", "engine", "serving", "max_new_tokens", "seed")
SAMPLING_KEYS = ("temperature", "top_p", "top_k")
# Keys that do not change what a run measures: a finished run with other values is reused.
VOLATILE_KEYS = ("logger", "progress", "log_every", "resume", "sweep_name", "run_name")


def baseline_settings(config: dict, device: str, dtype: str) -> dict:
    settings = {k: config.get(k) for k in BASELINE_KEYS}
    settings["sampling"] = {k: config["verifier"][k] for k in SAMPLING_KEYS}
    settings["engine"] = {**(settings["engine"] or {}), "device": device, "dtype": dtype}
    return settings


def settings_key(settings: dict) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_json(path: Path, data: dict) -> None:
    """Atomic: a reader (a parallel sweep job, an interrupted run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


FAILED = "FAILED"  # in a run folder: the run raised (JSON: the error, the config; specdec/rundirs.py)


def failed(run_dir: Path) -> Optional[dict]:
    """What a failed run recorded in its folder (its ``FAILED`` file); None when it did not fail."""
    path = Path(run_dir) / FAILED
    if not path.exists():
        return None
    return read_json(path) or {"status": "failed", "error": path.read_text(errors="replace")[:500]}


def is_complete(summary: Optional[dict]) -> bool:
    return bool(summary) and summary.get("interrupted") is False and "tokens_per_s" in summary


class BaselineStore:
    """<root>/<settings key>/summary.json: finished autoregressive runs, found by their settings."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def dir(self, key: str) -> Path:
        return self.root / key

    def find(self, key: str) -> Optional[dict]:
        return self.find_checked(key)[0]

    def find_checked(self, key: str) -> tuple[Optional[dict], str]:
        """(the finished baseline stored under ``key``, or None and why not)."""
        summary = read_json(self.dir(key) / "summary.json")
        if not is_complete(summary):
            return None, f"no finished baseline of these settings in {self.root}"
        for folder in (self.dir(key), summary.get("run_dir") or summary.get("registered_from")):
            if folder and (why := failed(folder)) is not None:
                return None, (f"the stored baseline's run {folder} failed ({why.get('error', '?')}): "
                              f"not reused")
        return summary, f"stored baseline {self.dir(key)}"

    def register(self, key: str, summary: dict, run_dir: Path, source: Optional[Path] = None) -> None:
        """Keep a copy of a finished autoregressive run (marked so that reports skip it): the run
        of ``run_dir``, or the baseline it timed (``source``, a folder in it)."""
        write_json(self.dir(key) / "summary.json",
                   {**summary, "role": "baseline_copy", "registered_from": str(source or run_dir),
                    "run_dir": str(run_dir)})


def comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VOLATILE_KEYS}


def finished_run(run_dir: Path, config: dict) -> Optional[dict]:
    """The summary of a finished (not interrupted) run of the same config in ``run_dir``."""
    summary = read_json(Path(run_dir) / "summary.json")
    if not is_complete(summary) or summary.get("role") != "run":
        return None
    return summary if comparable(summary.get("config", {})) == comparable(config) else None


# ---- per question / per category ------------------------------------------------------------
def question_stats(requests: Iterable[dict]) -> dict[str, dict]:
    """Per question (prompt id): category, output tokens and end-to-end seconds summed over its
    turns, decode steps and tokens per step summed (for tau)."""
    out: dict[str, dict] = {}
    for r in requests:
        q = out.setdefault(str(r["prompt_id"]), {"category": r.get("category", ""), "output_tokens": 0,
                                                 "time_s": 0.0, "decode_steps": 0, "step_tokens": 0.0})
        q["output_tokens"] += r["output_tokens"]
        q["time_s"] += r["e2e_ms"] / 1000.0
        steps = r.get("decode_steps", 0)
        q["decode_steps"] += steps
        q["step_tokens"] += r["mean_accepted_length"] * steps
    return out


def category_stats(questions: dict[str, dict], baseline: Optional[dict[str, dict]] = None,
                   groups: Optional[dict[str, str]] = None) -> dict[str, dict]:
    """{category: {questions, output_tokens, tokens_per_s, mean_accepted_length, speedup}} plus
    ``overall``; ``groups`` maps a category to the column it is reported under (Spec-Bench puts
    MT-bench's 8 categories into one), ``baseline`` is the baseline's question_stats."""
    def label(q: dict) -> str:
        return (groups or {}).get(q["category"], q["category"]) or "uncategorized"

    def buckets(qs: dict[str, dict]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for q in qs.values():
            out.setdefault(label(q), []).append(q)
            out.setdefault("overall", []).append(q)
        return out

    base = buckets(baseline) if baseline else {}
    return {cat: _category(qs, base.get(cat)) for cat, qs in buckets(questions).items()}


def _speed(qs: list[dict]) -> float:
    speeds = [q["output_tokens"] / q["time_s"] for q in qs if q["time_s"] > 0]
    return statistics.fmean(speeds) if speeds else float("nan")


def _category(qs: list[dict], base: Optional[list[dict]]) -> dict:
    steps = sum(q["decode_steps"] for q in qs)
    speed = _speed(qs)
    base_speed = _speed(base) if base else float("nan")
    return {"questions": len(qs), "output_tokens": sum(q["output_tokens"] for q in qs),
            "tokens_per_s": speed,
            "mean_accepted_length": sum(q["step_tokens"] for q in qs) / steps if steps else 1.0,
            "baseline_tokens_per_s": base_speed,
            "speedup": speed / base_speed if base_speed and base_speed == base_speed else float("nan")}
