"""The host timeline of an engine step, part by part: microseconds per step spent in scheduling,
the policy's plan, drafting, staging the step's inputs, the graph replay (or the eager body), the
read-back (on a GPU: the wait for the device), the drafter's update and the bookkeeping. Each part
is a wall-clock timer around one function of the engine (no profiler: its overhead would be larger
than some parts); what the timers leave out is reported as the rest of the step.

On a GPU a small model's decode step is host-bound at B = 1: every microsecond here is a
microsecond of the step. On the CPU the step body dominates, and caches cooled by it make the host
parts slower than on a GPU's host; compare parts across trees or settings on one machine.

    python experiments/profile/step_host.py --drafters none ngram_tree eagle3 --batch 1 \\
        --out experiments/results/step_host.json

``--plain`` runs every drafter at budget 1 on every step (plain decoding, the steps an adaptive
policy takes when no tree pays): what a drafter costs a step in which it does not draft, part by
part, beside ``none``'s.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_e2e import make_drafter  # noqa: E402

from specdec import data as data_mod  # noqa: E402
from specdec.engine import engine as engine_mod, graphs, model_runner, step_inputs  # noqa: E402
from specdec.engine.config import EngineConfig  # noqa: E402
from specdec.experiment import write_json  # noqa: E402
from specdec.engine.sequence import SamplingParams  # noqa: E402
from specdec.engine.speculation import FixedPolicy  # noqa: E402
from specdec.models.loader import load_model  # noqa: E402
from specdec.run import git_sha, versions  # noqa: E402
from specdec.verifiers import LosslessVerifier  # noqa: E402

# (owner, attribute, part): the functions timed, in the order a step calls them. A part nested in
# another (staging and replay run inside `launch`) is subtracted from its parent's time.
PARTS = [
    (engine_mod.Engine, "step", "step"),
    ("scheduler", "schedule", "schedule"),
    ("policy", "plan", "policy plan"),
    ("drafter", "propose", "draft"),
    (model_runner.ModelRunner, "launch", "launch (the rest)"),
    (step_inputs.SamplingRows, "of", "sampling rows"),
    (model_runner, "stage", "stage inputs"),
    (model_runner, "sampling_plan", "sampling plan"),
    (graphs.GraphRunner, "run", "copy in + replay (or eager body)"),
    ("policy", "observe", "policy observe"),
    (model_runner.ModelRunner, "finish", "read back"),
    (model_runner.StepRun, "step_result", "step result"),
    ("drafter", "update", "drafter update"),
    (engine_mod.Engine, "_postprocess", "postprocess"),
]
NESTED = {"launch (the rest)": ("sampling rows", "stage inputs", "sampling plan",
                                "copy in + replay (or eager body)")}


class Timers:
    def __init__(self) -> None:
        self.total: collections.Counter = collections.Counter()
        self.on = False

    def wrap(self, fn, part: str):
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[part] += time.perf_counter() - t
        return timed

    @contextmanager
    def installed(self, engine):
        """Wrap every part's function (instances: the engine's scheduler, policy and drafter)."""
        undo = []
        owners = {"scheduler": engine.scheduler, "policy": engine.policy, "drafter": engine.drafter}
        for owner, name, part in PARTS:
            obj = owners[owner] if isinstance(owner, str) else owner  # a class, a module or an instance
            undo.append((obj, name, vars(obj).get(name)))  # an instance's own: none (its class's shows)
            setattr(obj, name, self.wrap(getattr(obj, name), part))
        try:
            yield self
        finally:
            for obj, name, old in reversed(undo):
                if old is None:
                    delattr(obj, name)
                else:
                    setattr(obj, name, old)

    def per_step(self, steps: int) -> dict[str, float]:
        us = {part: 1e6 * s / steps for part, s in self.total.items()}
        for parent, children in NESTED.items():
            if parent in us:
                us[parent] -= sum(us.get(c, 0.0) for c in children)
        us["rest of the step"] = us.pop("step", 0.0) - sum(us.values())
        return {part: round(v, 1) for part, v in us.items()}


class PlainPolicy(FixedPolicy):
    """Budget 1 (plain decoding) for every decoding sequence, every step: the drafter never drafts
    but keeps up with what the target settles (its `update`), as under an adaptive policy's plain
    steps. As the adaptive policy, it has the scheduler count each decoding sequence at one token
    (`fits_budget`): counted at the drafter's whole tree, a 60-node drafter's step would hold 34 of
    64 sequences (2048 tokens) and be cheaper than `none`'s for holding less."""
    name = "plain"
    fits_budget = True

    def plan(self, items, room=None):
        return [i if i.is_prefill else dataclasses.replace(i, num_new=1) for i in items]


def profile(loaded, spec: str, prompts, batch: int, max_new_tokens: int, config: dict,
            plain: bool = False) -> dict:
    label, drafter, overrides, policy = make_drafter(spec)
    if plain:
        label, policy = f"{label} (plain)", PlainPolicy()
    engine = engine_mod.Engine(loaded.model, drafter, LosslessVerifier(), EngineConfig(**{**config, **overrides}),
                               tokenizer=loaded.tokenizer, stop_token_ids=loaded.stop_token_ids, policy=policy)
    engine.warm_up()
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    engine.generate(prompts[:batch], params)  # warm-up: kernels compiled, caches warm
    timers = Timers()
    with timers.installed(engine):
        seqs = [engine.add_request(p, params) for p in prompts[:batch]]
        while not all(s.first_token_time for s in seqs):
            engine.step()  # the prefill steps: not timed
        timers.on, steps = True, 0
        while engine.has_work():
            engine.step()
            steps += 1
        timers.on = False
    engine.close()
    return {"system": label, "batch": batch, "steps": steps, "us_per_step": timers.per_step(max(steps, 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="builtin:mt_bench.jsonl")
    ap.add_argument("--drafters", nargs="+", default=["none", "ngram_tree", "eagle3"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--cuda-graphs", default="1", help="1 (CUDA graphs on a GPU), 0, or emulate")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--plain", action="store_true",
                    help="every step at budget 1: what each drafter costs a step it does not draft in")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    graphs_mode = {"1": True, "0": False}.get(args.cuda_graphs, args.cuda_graphs)
    config = dict(device=args.device, dtype=args.dtype, max_num_seqs=args.batch, cuda_graphs=graphs_mode)
    cfg = EngineConfig(**config)
    device = cfg.torch_device()
    loaded = load_model(args.model, dtype=cfg.torch_dtype(device), device=device)
    prompts = [data_mod.render(p, loaded.tokenizer) for p in
               data_mod.select(data_mod.load_prompt_file(args.data), max(args.batch, 1))]
    rows = []
    for spec in args.drafters:
        row = profile(loaded, spec, prompts, args.batch, args.max_new_tokens, config,
                      plain=args.plain and spec.split()[0].rpartition(":")[2] != "none")
        rows.append(row)
        print(f"{row['system']} B={row['batch']} ({row['steps']} decode steps): "
              + ", ".join(f"{k} {v:.1f}" for k, v in row["us_per_step"].items()) + " us", flush=True)
    result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "threads": torch.get_num_threads(), "versions": versions(), "git_sha": git_sha(), "rows": rows}
    parts = list(dict.fromkeys(k for r in rows for k in r["us_per_step"]))
    print("\n| part (us per decode step) | " + " | ".join(r["system"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for part in parts:
        print(f"| {part} | " + " | ".join(f"{r['us_per_step'].get(part, 0.0):.1f}" for r in rows) + " |")
    if args.out:
        write_json(Path(args.out), result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
