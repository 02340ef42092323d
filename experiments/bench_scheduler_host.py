"""Host time of `Scheduler.schedule` per step with B decoding sequences (no model, no device): the
part of every step's host work that grows with the batch, for every drafter and `none` alike.
``--aux`` adds one drafter table per sequence (EAGLE's draft KV, as `kv_demand` asks for it).

    python experiments/bench_scheduler_host.py --batch 1 16 64 --aux 0 1
"""
from __future__ import annotations

import argparse
import time

from specdec.engine.block_manager import BlockManager
from specdec.engine.scheduler import Scheduler, SchedulerConfig
from specdec.engine.sequence import SamplingParams, Sequence


def schedule_us(batch: int, aux: bool, steps: int = 300, lookahead: int = 60) -> float:
    """Median microseconds of `schedule` over ``steps`` decode steps of ``batch`` sequences of
    100+ tokens, each step appending one token to each (block tables grow every 16 steps)."""
    blocks = BlockManager(20000, 16)
    demand = (lambda seq, n: {"eagle": len(seq) + 64}) if aux else None
    sched = Scheduler(SchedulerConfig(batch, 2048, 4096, lookahead, 1, reserve=1), blocks, demand)
    seqs = [Sequence(list(range(100)), SamplingParams(), request_id=str(i)) for i in range(batch)]
    for seq in seqs:
        sched.add(seq)
    sched.schedule()  # admitted: their prompts as prefill chunks
    times = []
    for _ in range(steps + 1):
        for seq in seqs:  # the step before settled every position, then sampled one more token
            seq.tokens.append(1)
            seq.num_cached = len(seq) - 1
        t = time.perf_counter()
        sched.schedule()
        times.append(time.perf_counter() - t)
    times = sorted(times[1:])
    return 1e6 * times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--aux", type=int, nargs="+", default=[0, 1], help="0: the target's table only; 1: and a drafter's")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    print("| B | drafter table | schedule us (median) |\n|---|---|---|")
    for b in args.batch:
        for aux in args.aux:
            print(f"| {b} | {'yes' if aux else 'no'} | {schedule_us(b, bool(aux), args.steps):.1f} |")


if __name__ == "__main__":
    main()
