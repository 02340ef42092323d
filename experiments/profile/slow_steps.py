"""Where a continuous-batching run's slow steps come from: each engine step timed, and marked
graphed or eager, and mixed (prefill chunks beside decode trees), with the engine's draft /
verify / other split, for AR and EAGLE-2 trees of the given sizes; ``--split 0 1`` runs every
system with one eager mixed forward and then with mixed steps split in two (the trees graphed),
``--prefill-graphs 0 1`` without and with the prefill steps replayed as CUDA graphs.

Target: the SmolLM2-135M architecture with random bf16 weights (no checkpoint; acceptance is
near zero, so this measures step costs, not tau). 32 random prompts of 40-400 tokens, 256 new
tokens each, two timed passes per system after a warm-up pass. Drafts: the shipped EAGLE head.

    python experiments/profile/slow_steps.py --batch 16 --nodes 60 16 --split 0 1 --out experiments/results/slow_steps.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from specdec.drafters import formats
from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.synthetic import random_model
from specdec.run import git_sha, versions
from specdec.verifiers import LosslessVerifier

WEIGHTS = formats.expand_default("default", "eagle")  # the shipped EAGLE-2 head


def drafter(nodes: int | None, vocab: bool):
    if nodes is None:
        return NoDrafter()
    depth, top_k = (6, 10) if nodes > 20 else (3, 6)
    return EagleDrafter(WEIGHTS, total_tokens=nodes, depth=depth, top_k=top_k,
                        draft_vocab="default" if vocab else None)


def timed_pass(engine, prompts) -> dict:
    """One pass over ``prompts``; per step: seconds, graphed or not, and the engine's split."""
    steps, orig = [], engine.step

    def replays() -> int:  # the target's decode and prefill graphs
        return engine.runner.graphs.replays

    def step():
        s, mixed, before_replays = engine.stats, engine.stats.mixed_steps, replays()
        before = (s.draft_s, s.verify_s, s.other_s)
        t = time.perf_counter()
        out = orig()
        steps.append({"s": time.perf_counter() - t, "graphed": replays() > before_replays,
                      "mixed": engine.stats.mixed_steps > mixed,
                      "draft_s": s.draft_s - before[0], "verify_s": s.verify_s - before[1],
                      "other_s": s.other_s - before[2]})
        return out

    engine.step = step
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    seqs = engine.generate(prompts, SamplingParams(max_new_tokens=256, ignore_eos=True))
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    engine.step = orig
    med = statistics.median(x["s"] for x in steps)
    slow = [x for x in steps if x["s"] > 5 * med]
    eager = [x["s"] for x in steps if not x["graphed"]]
    mixed = [x["s"] for x in steps if x["mixed"]]
    return {"tokens_per_s": sum(len(s.output) for s in seqs) / wall, "wall_s": wall, "steps": len(steps),
            "median_step_ms": 1e3 * med, "mean_step_ms": 1e3 * sum(x["s"] for x in steps) / len(steps),
            "slow_steps": len(slow), "slow_s": sum(x["s"] for x in slow),
            "slow_graphed": sum(x["graphed"] for x in slow), "eager_steps": len(eager),
            "eager_median_ms": 1e3 * statistics.median(eager) if eager else None,
            "mixed_steps": len(mixed), "mixed_s": sum(mixed),
            "mixed_median_ms": 1e3 * statistics.median(mixed) if mixed else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--nodes", type=int, nargs="*", default=[60, 16], help="EAGLE-2 tree budgets")
    ap.add_argument("--split", type=int, nargs="*", default=[1], choices=[0, 1],
                    help="engine.split_mixed_steps values to run every system with")
    ap.add_argument("--prefill-graphs", type=int, nargs="*", default=[0], choices=[0, 1],
                    help="engine.prefill_graphs values to run every system with")
    ap.add_argument("--vocab", action="store_true", help="EAGLE drafts from its draft_vocab=default")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("slow_steps.py times CUDA-graphed steps: it needs a CUDA GPU")
    model = random_model("smollm2_135m")
    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(40, 400, (32,), generator=gen).tolist()
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=gen).tolist() for n in lens]
    rows = []
    for split, pg, nodes in [(split, pg, nodes) for split in args.split for pg in args.prefill_graphs
                             for nodes in [None, *args.nodes]]:
        name = "none" if nodes is None else f"eagle_{nodes}"
        engine = Engine(model, drafter(nodes, args.vocab), LosslessVerifier(),
                        EngineConfig(device="cuda", dtype="bfloat16", max_num_seqs=args.batch,
                                     max_model_len=2048, split_mixed_steps=bool(split),
                                     prefill_graphs=bool(pg)))
        engine.warm_up()
        engine.generate(prompts, SamplingParams(max_new_tokens=8, ignore_eos=True))  # prefill shapes
        for rep in range(2):
            engine.stats = type(engine.stats)()
            row = {"system": name, "batch": args.batch, "split_mixed_steps": bool(split),
                   "prefill_graphs": bool(pg), "pass": rep,
                   **timed_pass(engine, prompts)}
            print(json.dumps(row))
            rows.append(row)
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    if args.out:
        meta = {"device": torch.cuda.get_device_name(), "versions": versions(), "git_sha": git_sha(),
                "date": datetime.date.today().isoformat()}
        Path(args.out).write_text(json.dumps({"script": "experiments/profile/slow_steps.py", "args": vars(args),
                                              **meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
