"""Where an eager prefill step's time goes: a step that prefills newly admitted prompts runs
eagerly when it has no CUDA graph (``engine.prefill_graphs=false``, or past the largest token
bucket), and eagerly it launches the target's ~350 small kernels one by one. Per (prompts,
length) case this times the parts of one ``engine.step()`` with the device synchronised around
each (stage: the host inputs; forward: the 30 layers; verify; body_rest: logits, commit and the
read-back row; read: the one transfer; update; postprocess; rest: scheduling, bookkeeping), then
profiles one step: kernels launched, their summed device time, the host's busy time, syncs, and
the host-side ops that cost most. Host time far above kernel time means a launch-bound step
(graph it); kernel time near the step's means compute (nothing to gain). ``--prefill-graphs``
also times the same step replayed from a CUDA graph (engine.prefill_graphs).

Target: the SmolLM2-135M architecture with random weights (no checkpoint), drafter ``none``.

    python experiments/profile/profile_prefill.py --prompts 1 4 16 --lengths 64 256 --out experiments/results/profile_prefill.json
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.synthetic import random_model
from specdec.run import git_sha, versions
from specdec.verifiers import LosslessVerifier

# the parts of an eager step: staging the inputs on the host, the body's forward, its verifier
# and the rest of the body (logits, commit, read-back row), reading back, the drafter's update
PARTS = ("stage", "forward", "verify", "body_rest", "read", "update", "postprocess", "rest")


def build_model(device: str):
    """bf16 on the GPU; a CPU smoke run: the same shape in fp32."""
    return random_model("smollm2_135m", device, torch.bfloat16 if device == "cuda" else torch.float32)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_prefill(engine, prompts: list[list[int]], device: str) -> dict[str, float]:
    """Admit ``prompts`` and run their prefill step, ``engine.step()`` itself, with the device
    synchronised around each part (ms each; "rest": scheduling, the read-back, bookkeeping)."""
    seqs = [engine.add_request(p, SamplingParams(max_new_tokens=2, ignore_eos=True)) for p in prompts]
    ms = dict.fromkeys(PARTS, 0.0)
    runner = engine.runner
    parts = {"launch": (runner, "launch"), "body": (runner.graphs, "run"), "forward": (engine.model, "forward"),
             "verify": (engine.verifier, "verify"), "read": (runner, "finish"),
             "update": (engine.drafter, "update"), "postprocess": (engine, "_postprocess")}
    ms.update(launch=0.0, body=0.0)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            sync(device)
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            ms[name] += 1e3 * (time.perf_counter() - t)
            return out
        return wrapper

    for name, (owner, attr) in parts.items():  # instance attributes shadow the methods
        setattr(owner, attr, timed(name, getattr(owner, attr)))
    try:
        sync(device)
        t = time.perf_counter()
        engine.step()
        sync(device)
        ms["total"] = 1e3 * (time.perf_counter() - t)
    finally:
        for owner, attr in parts.values():
            delattr(owner, attr)
    ms["stage"] = ms.pop("launch") - ms["body"]
    ms["body_rest"] = ms.pop("body") - ms["forward"] - ms["verify"]
    ms["rest"] = ms["total"] - sum(ms[p] for p in PARTS if p != "rest")
    while engine.has_work():  # finish them: free the blocks for the next case
        engine.step()
    assert all(s.finished for s in seqs)
    return ms


def timed_warm_up(engine, device: str) -> dict:
    """engine.warm_up(): graphs captured and seconds (start-up cost of the graphs)."""
    sync(device)
    t = time.perf_counter()
    count = engine.warm_up()
    sync(device)
    return {"graphs": count, "s": time.perf_counter() - t}


def whole_step_ms(engine, prompts: list[list[int]], device: str) -> float:
    """One unsynchronised engine.step() of the same prefill, as the engine runs it (ms)."""
    for p in prompts:
        engine.add_request(p, SamplingParams(max_new_tokens=2, ignore_eos=True))
    sync(device)
    t = time.perf_counter()
    engine.step()
    sync(device)
    ms = 1e3 * (time.perf_counter() - t)
    while engine.has_work():
        engine.step()
    return ms


def profiled(engine, prompts: list[list[int]], device: str, top: int) -> dict:
    """torch.profiler over one prefill step: kernel count and time, host busy time, syncs, top ops."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for p in prompts:
        engine.add_request(p, SamplingParams(max_new_tokens=2, ignore_eos=True))
    sync(device)
    with profile(activities=acts) as prof:
        engine.step()
        sync(device)
    while engine.has_work():
        engine.step()
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    syncs = [e for e in events if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                             "cudaMemcpyAsync", "cudaMemcpy")]
    table = prof.key_averages()
    host = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"kernels": len(kernels), "kernel_ms": sum(e.device_time for e in kernels) / 1e3,
            "launches": sum(1 for e in events if e.name in ("cudaLaunchKernel", "cuLaunchKernel",
                                                            "cudaLaunchKernelExC", "cuLaunchKernelEx")),
            "memcpy_or_sync_calls": len(syncs),
            "host_self_ms": sum(e.self_cpu_time_total for e in table) / 1e3,
            "top_host_ops": [{"name": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3}
                             for e in host]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, nargs="*", default=[1, 4, 16], help="prompts per prefill step")
    ap.add_argument("--lengths", type=int, nargs="*", default=[64, 256], help="tokens per prompt")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=12, help="host ops listed per case")
    ap.add_argument("--prefill-graphs", action="store_true",
                    help="also time the step with engine.prefill_graphs=true (CUDA): graphed_step_ms")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = build_model(args.device)
    cfg = EngineConfig(device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32",
                       max_num_seqs=max(args.prompts), max_model_len=2048,
                       max_num_batched_tokens=max(args.prompts) * max(args.lengths),
                       prefill_graphs=False)  # the eager prefill step is what is taken apart
    engine = Engine(model, NoDrafter(), LosslessVerifier(), cfg)
    warm_up = {"eager_prefill": timed_warm_up(engine, args.device)}
    graphed = None
    if args.prefill_graphs:
        graphed = Engine(model, NoDrafter(), LosslessVerifier(), dataclasses.replace(cfg, prefill_graphs=True))
        warm_up["prefill_graphs"] = timed_warm_up(graphed, args.device)
    print(json.dumps({"warm_up": warm_up}), flush=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for count in args.prompts:
        for length in args.lengths:
            prompts = [torch.randint(0, model.config.vocab_size, (length,), generator=gen).tolist()
                       for _ in range(count)]
            timed_prefill(engine, prompts, args.device)  # warm-up: Triton specialisations, allocator
            parts = [timed_prefill(engine, prompts, args.device) for _ in range(args.repeats)]
            whole = [whole_step_ms(engine, prompts, args.device) for _ in range(args.repeats)]
            row = {"prompts": count, "length": length,
                   "step_ms": statistics.median(whole),
                   "parts_ms": {k: statistics.median(p[k] for p in parts) for k in (*PARTS, "total")},
                   "profile": profiled(engine, prompts, args.device, args.top)}
            if graphed is not None:
                whole_step_ms(graphed, prompts, args.device)  # a warm-up step (steps above 2048 tokens: eager)
                row["graphed_step_ms"] = statistics.median(
                    whole_step_ms(graphed, prompts, args.device) for _ in range(args.repeats))
                row["graph_replays"] = graphed.runner.graphs.replays
            print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
            prof = row["profile"]
            print(f"  kernels {prof['kernels']} ({prof['kernel_ms']:.2f} ms), launches {prof['launches']}, "
                  f"memcpy/sync calls {prof['memcpy_or_sync_calls']}, host self {prof['host_self_ms']:.2f} ms",
                  flush=True)
            rows.append(row)
    if args.out:
        meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "versions": versions(), "git_sha": git_sha(), "date": datetime.date.today().isoformat()}
        Path(args.out).write_text(json.dumps({"script": "experiments/profile/profile_prefill.py", "args": vars(args),
                                              **meta, "warm_up": warm_up, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
