"""Where a speculative step's time goes on a small target, measured part by part: the drafter's
CUDA graph and the target's decode/verify graph each timed alone (replays between CUDA events),
and the rest of the engine step by difference from the measured step: the host work the GPU
does not hide (staging before the draft graph, reading the result back, bookkeeping; the target
step's staging overlaps the draft graph, whose tree stays on the device).

Target: the SmolLM2-135M architecture with random bf16 weights (``--model synthetic``, the
default: no checkpoint needed) or a real checkpoint (``--model default`` / a path). Drafts: the
shipped heads of drafters/weights/smollm2-135m-instruct. Graph timings and kernel counts depend on
shapes only (a dynamic tree always keeps ``total_tokens`` nodes), so random target weights give
the same figures; acceptance does not matter here (bench_e2e.py measures it).

    python experiments/profile/profile_draft.py --out experiments/results/profile_draft.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from specdec.drafters import formats
from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.eagle.eagle3 import Eagle3Drafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.synthetic import random_model
from specdec.run import git_sha, versions
from specdec.verifiers import LosslessVerifier

WEIGHTS = Path(formats.expand_default("default", "eagle")).parent  # the shipped heads


def replay_ms(graph, repeats: int = 50) -> float:
    """Mean ms of one replay, by CUDA events around ``repeats`` back-to-back replays (x3, median)."""
    out = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / repeats)
    return statistics.median(out)


SYSTEMS = {
    "none": lambda: NoDrafter(),
    "eagle": lambda: EagleDrafter(str(WEIGHTS / "eagle")),
    "eagle_plain_layers": lambda: _plain(EagleDrafter(str(WEIGHTS / "eagle"))),
    "eagle_depth4_t32": lambda: EagleDrafter(str(WEIGHTS / "eagle"), total_tokens=32, depth=4, top_k=8),
    "eagle3": lambda: Eagle3Drafter(str(WEIGHTS / "eagle3")),
    # the shipped 8192-token drafting vocabulary (FR-Spec) instead of the full 49152
    "eagle_vocab": lambda: EagleDrafter(str(WEIGHTS / "eagle"), draft_vocab="default"),
    "eagle_d3k6t16": lambda: EagleDrafter(str(WEIGHTS / "eagle"), total_tokens=16, depth=3, top_k=6),
    "eagle_d3k6t16_vocab": lambda: EagleDrafter(str(WEIGHTS / "eagle"), total_tokens=16, depth=3, top_k=6,
                                                draft_vocab="default"),
}


def _plain(drafter):
    drafter.fuse_on_cuda = False  # the draft layers' plain torch path (the target stays fused)
    return drafter


def kernel_profile(graph, replays: int = 10, top: int = 12) -> dict:
    """Kernels one replay of ``graph`` runs, from the profiler (CUPTI reports the kernels inside
    a graph launch): count, summed kernel time, and the kernels of largest total time. The
    replay's wall time minus the summed kernel time is what the launches and gaps cost."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time)
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {"kernels_per_replay": len(kernels) / replays,
            "kernel_ms_per_replay": sum(e.device_time for e in kernels) / replays / 1e3,
            "top": [{"name": n[:90], "per_replay": len(t) / replays, "us_each": sum(t) / len(t)}
                    for n, t in ranked]}


def measure(model, name: str, batch: int, steps: int, prompt_len: int, kernels: bool = False) -> dict:
    drafter = SYSTEMS[name]()
    cfg = EngineConfig(device="cuda", dtype="bfloat16", max_num_seqs=batch, max_model_len=4096)
    engine = Engine(model, drafter, LosslessVerifier(), cfg)
    engine.warm_up()
    gen = torch.Generator().manual_seed(0)
    for b in range(batch):
        ids = torch.randint(0, model.config.vocab_size, (prompt_len,), generator=gen).tolist()
        engine.add_request(ids, SamplingParams(max_new_tokens=100000, ignore_eos=True))
    last = {}
    graphs = engine.runner.graphs
    dg = getattr(drafter, "graphs", None)
    for name, runner in (("target", graphs), ("draft", dg)):
        if runner is not None:  # remember the graph each part of the step replayed
            def run(key, *args, runner=runner, name=name, orig=runner.run):
                last[name] = key
                return orig(key, *args)
            runner.run = run
    streak = 0
    while streak < 5:  # prefill, then five graphed decode steps in a row (the graphs are warm)
        before = graphs.replays
        engine.step()
        streak = streak + 1 if graphs.replays > before else 0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    step_ms = 1e3 * statistics.median(times)
    key = last["target"]
    target = graphs.entries[key]
    out = {"system": name, "batch": batch, "step_ms": step_ms,
           "target_graph_key": f"({key[0].trees}, {key[0].nodes})", "target_graph_ms": replay_ms(target.graph)}
    if "draft" in last:
        entry = dg.entries[last["draft"]]
        out.update(draft_graph_key=str(last["draft"]), draft_graph_ms=replay_ms(entry.graph))
        if kernels:
            out["draft_kernels"] = kernel_profile(entry.graph)
    if kernels:
        out["target_kernels"] = kernel_profile(target.graph)
    out["host_and_sync_ms"] = step_ms - out["target_graph_ms"] - out.get("draft_graph_ms", 0.0)
    acc = [a for s in engine.sequences.values() for a in s.accept_lengths]
    out["mean_accepted"] = sum(acc) / max(len(acc), 1)
    del engine, drafter
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default="none,eagle,eagle_plain_layers,eagle_depth4_t32,eagle3")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--kernels", action="store_true",
                    help="also list the kernels of one drafter and one target replay (profiler)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_draft.py times CUDA graphs: it needs a CUDA GPU")
    model = random_model("smollm2_135m")  # bf16 on the GPU
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for name in args.systems.split(","):
            row = measure(model, name, batch, args.steps, args.prompt_len, args.kernels)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"script": "experiments/profile_draft.py", "args": vars(args), "rows": rows,
              "device": torch.cuda.get_device_name(), "versions": versions(), "git_sha": git_sha(),
              "date": datetime.date.today().isoformat()}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\n{'system':22s} {'B':>3s} {'step ms':>8s} {'target':>7s} {'draft':>7s} {'host':>7s}")
    for r in rows:
        print(f"{r['system']:22s} {r['batch']:3d} {r['step_ms']:8.3f} {r['target_graph_ms']:7.3f} "
              f"{r.get('draft_graph_ms', 0):7.3f} {r['host_and_sync_ms']:7.3f}")
    for r in rows:
        for part in ("draft_kernels", "target_kernels"):
            if part in r:
                k = r[part]
                print(f"\n{r['system']} B={r['batch']} {part}: {k['kernels_per_replay']:.0f} kernels, "
                      f"{k['kernel_ms_per_replay']:.3f} ms of kernel time per replay")
                for t in k["top"]:
                    print(f"  {t['per_replay']:5.1f} x {t['us_each']:7.2f} us  {t['name']}")


if __name__ == "__main__":
    main()
