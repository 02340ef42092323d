"""Step latency of the target forward: verify a tree of T nodes vs plain decode (T = 1), on a
synthetic Llama-3-8B-shaped target (random bf16 weights, the real config; no checkpoint needed).

Each step is what the engine's CUDA graph runs for the target: the fused layers, the Triton tree
attention over the paged cache (every sequence has L - T tokens cached and T new ones, a chain's
ancestor masks) and the logits of all T nodes. Every (B, L, T) point is captured in a CUDA graph
and timed by replays (CUDA events, median of 3 rounds of 10). Points whose KV cache would not fit
in --kv-gb are listed as skipped. With --tau the table projects speedups:
tau(T) x decode step / verify step (tau measured elsewhere, e.g. by bench_e2e.py).

    python experiments/bench_steps.py --shape llama3_8b --out experiments/results/steps.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from specdec.engine import ragged
from specdec.engine.graphs import capture
from specdec.models.synthetic import SHAPES, random_model
from specdec.run import git_sha, versions

BLOCK = 16


def step_fn(model, kc, vc, batch: int, context: int, nodes: int):
    """A graph-capturable step for B sequences of ``context`` tokens, the last ``nodes`` new."""
    per_seq = -(-(context + 1) // BLOCK)
    tables = [list(range(b * per_seq, (b + 1) * per_seq)) for b in range(batch)]
    prefix = context - nodes
    slots = [s for t in tables for s in ragged.slots(t, prefix, nodes, BLOCK)]
    bits = [(1 << (i + 1)) - 1 - (1 << 64 if i == 63 else 0) for i in range(nodes)]  # chains (int64)
    bits = bits * batch if nodes > 1 else None
    meta = ragged.attn_metadata(tables, [prefix] * batch, [nodes] * batch, slots, "cuda", bits)
    ids = torch.randint(0, model.config.vocab_size, (batch * nodes,), device="cuda")
    pos = torch.tensor([prefix + i for i in range(nodes)] * batch, device="cuda")

    def run():
        out = model(ids, pos, meta, kc, vc)
        return model.compute_logits(out.hidden)  # [B * T, V]: verification needs every node's

    return run


@torch.inference_mode()
def time_graph(fn, rounds: int = 3, reps: int = 10) -> float:
    """Median over rounds of the mean replay time (ms) of ``fn`` captured in a CUDA graph."""
    g, _, _ = capture(fn, "cuda")
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    del g
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama3_8b", choices=sorted(SHAPES))
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16, 64])
    ap.add_argument("--contexts", type=int, nargs="*", default=[1024, 4096, 16384])
    ap.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--kv-gb", type=float, default=36.0, help="KV cache budget")
    ap.add_argument("--tau", default=None,
                    help="JSON {T: tau} of measured acceptance lengths, for the projection")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    model = random_model(args.shape)
    model.prepare("cuda", torch.bfloat16, max(args.contexts) + max(args.nodes))  # the engine's fused path
    cfg = model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2  # bytes
    fits = [(b, c) for b in args.batches for c in args.contexts
            if b * (-(-(c + 1) // BLOCK)) * BLOCK * per_token <= args.kv_gb * 2**30]
    blocks = max(b * -(-(c + 1) // BLOCK) for b, c in fits)
    shape = (cfg.num_hidden_layers, blocks, BLOCK, cfg.num_key_value_heads, cfg.head_dim)
    kc = torch.zeros(shape, dtype=torch.bfloat16, device="cuda")
    vc = torch.zeros_like(kc)
    rows, skipped = [], []
    for b in args.batches:
        for c in args.contexts:
            if (b, c) not in fits:
                skipped.append({"batch": b, "context": c, "kv_gb": b * c * per_token / 2**30})
                continue
            base = None
            for t in args.nodes:
                ms = time_graph(step_fn(model, kc, vc, b, c, t))
                base = ms if t == 1 else base
                rows.append({"batch": b, "context": c, "nodes": t, "ms": ms,
                             "x_decode": ms / base if base else None})
                print(f"B={b:3d} L={c:6d} T={t:3d}  {ms:8.3f} ms  x{rows[-1]['x_decode'] or 1:.2f}",
                      flush=True)
    tau = {int(k): v for k, v in json.loads(args.tau).items()} if args.tau else {}
    for r in rows:
        if r["nodes"] in tau and r["x_decode"]:
            r["tau"] = tau[r["nodes"]]
            r["projected_speedup"] = tau[r["nodes"]] / r["x_decode"]
    result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
              "shape": args.shape, "config": SHAPES[args.shape], "gpu": torch.cuda.get_device_name(),
              "versions": versions(), "git_sha": git_sha(), "rows": rows, "skipped": skipped}
    print("\n| B | L | " + " | ".join(f"T={t}" for t in args.nodes) + " |")
    print("|---|---|" + "---|" * len(args.nodes))
    for b in args.batches:
        for c in args.contexts:
            cells = [r for r in rows if r["batch"] == b and r["context"] == c]
            if cells:
                print(f"| {b} | {c} | " + " | ".join(
                    f"{r['ms']:.2f} ms (x{r['x_decode']:.2f})" for r in cells) + " |")
    for s in skipped:
        print(f"skipped B={s['batch']} L={s['context']}: KV cache {s['kv_gb']:.0f} GiB > --kv-gb")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
