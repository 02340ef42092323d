"""What exact mode (``engine.exact=true``) costs per target step: the forward and the logits of
a T-node tree (a chain mask) over a cached prefix, batch-invariant against the plain path, on
the same model and cache, alternating (median of --reps each).

    python experiments/bench_exact_step.py --dtype bfloat16 --prefix 300 --nodes 1 8 60 \\
        --threads 1 --out experiments/results/exact_step_cpu_bf16.json

``--shape llama3_8b --layers 2``: a synthetic target of that shape (random weights, the first
``--layers`` layers: each layer, the vocabulary and the lm_head at their real sizes) instead of
``--model``; the ratio is then that of a step of those layers and the logits.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from specdec.engine import ragged
from specdec.models.loader import load_model
from specdec.run import git_sha, versions

BLOCK = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--shape", default=None, help="a synthetic shape (specdec/models/synthetic.py) instead of --model")
    ap.add_argument("--layers", type=int, default=None, help="with --shape: its first N layers only")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the Triton kernels of exact mode)")
    ap.add_argument("--prefix", type=int, default=300, help="tokens cached before the step")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 8, 60])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.shape:
        from specdec.models.synthetic import random_model

        model = random_model(args.shape, args.device, dtype, num_layers=args.layers)
    else:
        model = load_model(args.model, dtype=dtype, device=args.device).model
    dev = torch.device(args.device)
    model.prepare(dev, dtype, args.prefix + max(args.nodes) + 1, exact=True)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = model.config
    blocks = -(-(args.prefix + max(args.nodes)) // BLOCK)
    shape = (cfg.num_hidden_layers, blocks, BLOCK, cfg.num_key_value_heads, cfg.head_dim)
    kc, vc = torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev)
    table, p = list(range(blocks)), args.prefix
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        meta = ragged.attn_metadata([table], [0], [p], ragged.slots(table, 0, p, BLOCK), dev)
        model(torch.randint(0, cfg.vocab_size, (p,), generator=gen).to(dev), torch.arange(p, device=dev), meta,
              kc, vc, exact=True)
        for t in args.nodes:
            bits = [(1 << (i + 1)) - 1 for i in range(t)] if t > 1 else None
            ids = torch.randint(0, cfg.vocab_size, (t,), generator=gen).to(dev)
            times = {False: [], True: []}
            for _ in range(args.reps):
                for exact in (False, True):
                    meta = ragged.attn_metadata([table], [p], [t], ragged.slots(table, p, t, BLOCK), dev, bits)
                    sync()
                    start = time.perf_counter()
                    out = model(ids, torch.arange(p, p + t, device=dev), meta, kc, vc, exact=exact)
                    model.compute_logits(out.hidden, exact=exact)
                    sync()
                    times[exact].append(time.perf_counter() - start)
            plain, exact = (sorted(times[e])[len(times[e]) // 2] * 1e3 for e in (False, True))
            rows.append({"nodes": t, "plain_ms": plain, "exact_ms": exact, "ratio": exact / plain})
            print(f"T={t}: plain {plain:.1f} ms, exact {exact:.1f} ms, x{exact / plain:.2f}", flush=True)
    result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv), "dtype": args.dtype,
              "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
              "model": f"{args.shape} (first {cfg.num_hidden_layers} layers, random weights)" if args.shape else args.model,
              "threads": torch.get_num_threads(), "prefix": p, "versions": versions(), "git_sha": git_sha(),
              "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
