"""Verifier latency: B = 32 trees of T = 64 nodes over a 128,256-token vocabulary (Llama 3).

    python experiments/bench_verifiers.py --out experiments/results/verifiers_h100.json

Times one `verify_tree` call (all its host syncs included, as the engine sees it) with CUDA
events: median over --repeat calls after --warmup. Trees: an EAGLE-2-like static top-k tree of 64
nodes (DETERMINISTIC candidates) and a chain of 64. Logits: "accept" boosts each node's first
child so every row walks to the deepest leaf (the per-depth loop's worst case); "random" logits
reject at depth 1. Sampling modes: temperature only; temperature + top-k 50 + top-p 0.9 (topk
path); temperature + top-p 0.9 alone (full-sort path); SAMPLED candidates with draft_probs
(general rank-by-rank path).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from specdec.verifiers import CandidateKind, DraftTree, TreeChoices, sample, verify_tree

MODES = {  # name -> (temperature, top_p, top_k)
    "greedy": (0.0, 1.0, 0),
    "temp1": (1.0, 1.0, 0),
    "temp0.7_topk50_topp0.9": (0.7, 0.9, 50),
    "temp0.7_topp0.9": (0.7, 0.9, 0),
}


def eagle_like_choices(num: int = 63) -> list[list[int]]:
    """A top-k tree: paths ranked by (sum of ranks + depth), the first ``num`` (prefix-closed)."""
    paths, frontier = [], [[]]
    while frontier:
        frontier = [p + [r] for p in frontier for r in range(8) if sum(p) + r + len(p) + 1 <= 7]
        paths += frontier
    paths.sort(key=lambda p: (sum(p) + len(p), len(p), p))
    return paths[:num]


def make_tree(shape: str, batch: int, nodes: int, vocab: int, kind: CandidateKind, gen) -> DraftTree:
    if shape == "chain":
        tokens = torch.randint(0, vocab, (batch, nodes), generator=gen)
        tree = DraftTree.chains(tokens)
    else:
        tc = TreeChoices(eagle_like_choices(nodes - 1))
        tree = DraftTree.from_choices(tc, torch.randint(0, vocab, (batch, tc.num_nodes), generator=gen))
    probs = None
    if kind != CandidateKind.DETERMINISTIC:
        probs = torch.softmax(torch.randn(batch, tree.max_nodes, vocab, generator=gen), -1)
        par = tree.parents.clamp(min=0)
        q_par = probs[torch.arange(batch)[:, None], par]  # drafts come from q at the parent
        draws = torch.multinomial(q_par.view(-1, vocab), 1, generator=gen).view(batch, -1)
        tokens = torch.where(tree.parents >= 0, draws, tree.tokens)
        tree = DraftTree(tokens, tree.parents, tree.num_nodes)
    kinds = torch.full(tree.tokens.shape, int(kind), dtype=torch.int8)
    return DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=kinds, draft_probs=probs)


def make_logits(tree: DraftTree, vocab: int, regime: str, gen) -> torch.Tensor:
    logits = torch.randn(*tree.tokens.shape, vocab, generator=gen)
    if regime == "accept":  # each node's first child gets almost all the mass
        first = torch.full_like(tree.tokens, -1)
        idx = torch.arange(tree.max_nodes).expand_as(tree.tokens)
        first.scatter_reduce_(1, tree.parents.clamp(min=0), torch.where(tree.parents >= 0, idx, 10 ** 6), "amin",
                              include_self=False)
        has = (first >= 0) & (first < 10 ** 6)
        tok = tree.tokens.gather(1, first.clamp(0, tree.max_nodes - 1))
        logits.scatter_add_(2, tok[:, :, None], torch.where(has, 30.0, 0.0)[:, :, None])
    return logits


def time_ms(fn, warmup: int, repeat: int) -> dict:
    """CUDA-event time per call (host perf_counter on CPU, for smoke runs)."""
    for _ in range(warmup):
        fn()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        if not cuda:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[(9 * len(times)) // 10]}


def run(args) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    dev = args.device
    rows = []
    cases = []
    for shape in ("eagle64", "chain"):
        for regime in ("accept", "random"):
            for mode in MODES:
                cases.append((shape, regime, mode, torch.float32, CandidateKind.DETERMINISTIC, True))
    cases += [("eagle64", "accept", m, torch.bfloat16, CandidateKind.DETERMINISTIC, True) for m in ("greedy", "temp1")]
    cases += [("eagle64", "accept", m, torch.float32, CandidateKind.DETERMINISTIC, False) for m in ("greedy", "temp1")]
    cases += [("eagle64", r, "temp1", torch.float32, CandidateKind.SAMPLED, True) for r in ("accept", "random")]
    built = {}
    for shape, regime, mode, dtype, kind, check in cases:
        key = (shape, regime, dtype, kind)
        if key not in built:
            built.clear()
            if dev == "cuda":
                torch.cuda.empty_cache()
            tree = make_tree(shape, args.batch, args.nodes, args.vocab, kind, gen)
            logits = make_logits(tree, args.vocab, regime, gen).to(dtype)
            built[key] = (tree.to(dev), logits.to(dev))
        tree, logits = built[key]
        temp, top_p, top_k = MODES[mode]
        params = (torch.full((args.batch,), temp, device=dev), torch.full((args.batch,), top_p, device=dev),
                  torch.full((args.batch,), top_k, device=dev, dtype=torch.long))
        u = torch.rand(args.batch, args.nodes + 1, device=dev)
        fn = lambda: verify_tree(tree, logits, *params, uniforms=u, check=check)  # noqa: E731
        result = fn()
        stats = time_ms(fn, args.warmup, args.repeat)
        row = {"tree": shape, "logits": regime, "mode": mode, "dtype": str(dtype).replace("torch.", ""),
               "kind": kind.name, "check": check, "max_depth": tree.max_depth,
               "mean_accepted": float(result.num_accepted.float().mean()), **stats}
        rows.append(row)
        print(_line(row), flush=True)
    # the plain autoregressive sampler on [B, V], for scale
    x = torch.randn(args.batch, args.vocab, device=dev)
    u = torch.rand(args.batch, device=dev)
    for mode in MODES:
        temp, top_p, top_k = MODES[mode]
        stats = time_ms(lambda: sample(x, temp, top_p, top_k, u), args.warmup, args.repeat)
        row = {"tree": "plain_sample[B,V]", "logits": "random", "mode": mode, "dtype": "float32",
               "kind": "-", "check": False, "max_depth": 0, "mean_accepted": 0.0, **stats}
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(r: dict) -> str:
    return (f"| {r['tree']} | {r['logits']} | {r['mode']} | {r['dtype']} | {r['kind']} | {r['check']} | "
            f"{r['max_depth']} | {r['mean_accepted']:.2f} | {r['median_ms']:.3f} | {r['p10_ms']:.3f}-{r['p90_ms']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/verifiers_h100.json"))
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (host timing)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --device cpu for a smoke run)")
    print("| tree | logits | mode | dtype | kind | check | depth | accepted | median ms | p10-p90 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = run(args)
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(), "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "batch": args.batch, "nodes": args.nodes,
            "vocab": args.vocab, "warmup": args.warmup, "repeat": args.repeat}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
