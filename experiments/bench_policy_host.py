"""Host time of the adaptive speculation policy per step (its goal: <= 50 us at B = 64): `plan`
(the budget decision, on the critical path before drafting) and `observe` (the acceptance model's
update, run while the next forward is on the device), on synthetic trees of EAGLE-3's shape.

    python experiments/bench_policy_host.py --batch 1 16 64 --nodes 24 --depth 6 --out host.json
"""
from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np

from specdec.engine.graphs import batch_buckets
from specdec.engine.scheduler import ScheduledSeq
from specdec.engine.speculation import AdaptivePolicy, budget_levels
from specdec.engine.speculation.acceptance import Acceptance
from specdec.engine.speculation.costs import StepCosts


def synthetic_tree(rng, b: int, t: int, max_depth: int):
    """``[B, T]`` depth, score, parents of random trees in node order (each node's parent earlier)."""
    parents = np.full((b, t), -1)
    depth = np.zeros((b, t), dtype=np.int64)
    for j in range(1, t):
        parents[:, j] = rng.integers(0, j, size=b)
        depth[:, j] = np.minimum(depth[np.arange(b), parents[:, j]] + 1, max_depth)
    score = -rng.random((b, t)) * depth
    return depth, score, parents


def host_us(batch: int, nodes: int, max_depth: int, steps: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    policy = AdaptivePolicy(persist=False, log=lambda *_: None)  # what `attach` sets, without an engine
    policy.levels = budget_levels(SimpleNamespace(max_nodes=nodes, budget_levels=None))
    policy.buckets, policy.acceptance = batch_buckets(batch), Acceptance(nodes)
    policy.costs = StepCosts({"bench": 1}, min_samples=policy.min_samples)
    for b in policy.buckets:  # every level measured: the policy decides instead of exploring
        for n in policy.levels:
            for _ in range(policy.min_samples):
                policy.costs.observe(b, n, 1e-3 * (1 + n / 32))
    items = [ScheduledSeq(SimpleNamespace(seq_id=i), nodes, False) for i in range(batch)]
    depth, score, parents = synthetic_tree(rng, batch, nodes, max_depth)
    num = np.full(batch, nodes)
    plan_s, observe_s = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        planned = policy.plan(items)
        t1 = time.perf_counter()
        accepted = [[0, *range(1, 1 + int(k))] for k in rng.integers(0, 3, size=batch)]
        t2 = time.perf_counter()
        policy.observe(planned, 1e-3, (depth, score, parents, num), accepted)
        t3 = time.perf_counter()
        plan_s.append(t1 - t0)
        observe_s.append(t3 - t2)
    return {"batch": batch, "nodes": nodes, "max_depth": max_depth, "steps": steps,
            "plan_us_median": 1e6 * float(np.median(plan_s)),
            "observe_us_median": 1e6 * float(np.median(observe_s))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [host_us(b, args.nodes, args.depth, args.steps) for b in args.batch]
    print("| B | nodes | plan us (median) | observe us (median, overlapped) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['nodes']} | {r['plan_us_median']:.1f} | {r['observe_us_median']:.1f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python experiments/bench_policy_host.py", "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
