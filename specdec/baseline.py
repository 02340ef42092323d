"""A run's autoregressive baseline: its engine on the run's loaded target, serving it in turns with
the run (specdec/interleave.py), its summary (``<run dir>/baseline/summary.json``) and the speedup
fields of the run's summary. Which baseline and why: specdec/speedup.py."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Optional

from hydra.utils import instantiate

from specdec import experiment as exp
from specdec import speedup
from specdec.drafters.none import NoDrafter
from specdec.interleave import interleave
from specdec.results import summarize
from specdec.serving import Server, ctrl_c_stops

SAMPLING_KEYS = ("temperature", "top_p", "top_k")
log = logging.getLogger("specdec.baseline")


def longest_sequence(render, prompts, num_turns, max_new_tokens: int) -> int:
    """An upper bound on the tokens of one sequence of the run: its last turn's prompt rendered with
    empty earlier answers, each earlier answer at twice max_new_tokens (re-tokenized text may
    take more tokens than were generated), and its own answer."""
    return max((len(render(p, num_turns(p) - 1, [])) + (num_turns(p) - 1) * 2 * max_new_tokens
                + max_new_tokens for p in prompts), default=max_new_tokens)


def store_for(baseline_dir: Optional[str], run_dir: Path) -> exp.BaselineStore:
    """speedup.baseline_dir, else ``baselines/`` beside the run (in a sweep: in the sweep dir)."""
    return exp.BaselineStore(Path(baseline_dir) if baseline_dir else run_dir.parent / "baselines")


def make_engine(make, loaded, run_engine, verifier, engine_cfg, in_flight: int, seq_tokens: int):
    """The autoregressive engine (``make(loaded, drafter, verifier, engine_cfg)``) on the loaded
    target, with lossless verification; unless engine.num_blocks sets it, its KV pool holds
    ``in_flight`` sequences of ``seq_tokens`` (speedup.baseline_blocks)."""
    base_verifier = verifier if getattr(verifier, "lossless", True) else instantiate(
        {"_target_": "specdec.verifiers.LosslessVerifier"})
    if engine_cfg.num_blocks is None:
        blocks = speedup.baseline_blocks(run_engine, in_flight, seq_tokens)
        engine_cfg = dataclasses.replace(engine_cfg, num_blocks=blocks)
    return make(loaded, NoDrafter(), base_verifier, engine_cfg)


def measure(plan: speedup.Plan, run_server: Server, make_base: Callable[[], Server], prompts):
    """Serve the run's prompts, with the baseline the plan asks for in turns with it. Returns the
    run's result, the baseline's server and result (or None, None) and what was recorded: how the
    turns went, the check's numbers."""
    if plan.method in ("off", "self"):
        with ctrl_c_stops(run_server.writer):
            run_server.warmup(prompts)
            return run_server.run(prompts), None, None, {}
    base_server = make_base()
    info: dict = {}
    base_prompts, more = prompts, None
    if plan.method == "check":
        base_prompts = [p for p in prompts if p.id in plan.sample]

        def more():
            now = speedup.question_times(base_server.finished)
            info["check"] = speedup.check(plan.stored["questions"], now, plan.sample, plan.tolerance)
            log.info(f"baseline {speedup.check_text(info['check'])}")
            return [] if info["check"]["passed"] else [p for p in prompts if p.id not in plan.sample]

    with ctrl_c_stops(run_server.writer, base_server.writer):
        for server in (run_server, base_server):
            if prompts:
                server.touch(prompts[0])
            server.warmup(prompts)
        result, base_result, info["interleaving"] = interleave(run_server, base_server, prompts, base_prompts, more)
    return result, base_server, base_result, info


def summary(engine, result, seed: int, resolved: dict, verifier, key: str, role: str, out_dir: Path) -> dict:
    """The baseline's summary.json: it reads like a drafter=none run's (its config, speedup 1 over
    itself); role ``baseline``, or ``baseline_check`` for a check's sample."""
    out = {**summarize(engine, result, seed, role=role), "method": "none", "overrides": [],
           "sweep_name": resolved.get("sweep_name"), "reused": False, "baseline_key": key}
    if not out["interrupted"]:
        out.update(speedup.fields(out, out, "self", "the autoregressive baseline itself", "self", key,
                                  out_dir / "summary.json"))
    config = {**resolved, "drafter": {"_target_": "specdec.drafters.none.NoDrafter"}}
    if not getattr(verifier, "lossless", True):
        config["verifier"] = {"_target_": "specdec.verifiers.LosslessVerifier",
                              **{k: resolved["verifier"][k] for k in SAMPLING_KEYS}}
    return {**out, "config": config}


def attach_speedup(summary: dict, plan: speedup.Plan, base: Optional[dict], info: dict, key: str,
                   run_dir: Path) -> dict:
    """The speedup fields of the plan's method (none when the run was interrupted)."""
    summary["baseline_key"] = key
    if summary["interrupted"] or plan.method == "off":
        if plan.method == "off" and plan.why != "speedup.baseline=off":
            summary["baseline"] = {"method": None, "why": plan.why}
        return summary
    if plan.method == "self":
        return {**summary, **speedup.fields(summary, summary, "self", plan.why, "self", key, run_dir / "summary.json")}
    check = info.get("check")
    extra = {"interleaving": info["interleaving"], **({"check": check} if check else {})}
    if check and check["passed"]:
        found = plan.stored
        source = f"reused: {shown(found.get('registered_from') or plan.stored_dir)}"
        return {**summary, **speedup.fields(summary, found, "reused-after-check", speedup.check_text(check),
                                            source, key, plan.stored_dir / "summary.json", **extra)}
    method, why = ("re-measured", speedup.check_text(check)) if check else ("interleaved", plan.why)
    path = run_dir / "baseline" / "summary.json"
    extra["preemptions"] = {"run": summary["num_preemptions"], "baseline": base["num_preemptions"]}
    return {**summary, **speedup.fields(summary, base, method, why, f"interleaved: {shown(path.parent)}", key,
                                        path, **extra)}


def shown(path) -> str:
    """A path as summaries record it: relative to the working directory when under it (results
    committed from a sweep then name no machine's folders), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
