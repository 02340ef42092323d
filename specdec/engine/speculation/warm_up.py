"""Step costs timed at start-up: the adaptive policy's (batch bucket, budget) table filled before
the first request instead of by exploring on it.

Cold, the policy can only learn what a tree of n nodes costs at a batch of b by running one (and
min_samples of them before it trusts the figure); at 64 sequences with a 60-node drafter every
bucket the batch passes through as it drains explores its levels. Where steps replay CUDA graphs
a step costs milliseconds, so `time_budgets` runs them all at start-up on timing requests: for each
batch bucket, largest first, ``samples`` steps at each budget level the saved costs lack, through
the engine's own step (the drafter drafts, the target verifies, the bookkeeping runs). The
requests are then aborted and forgotten; only the costs remain (and are saved for the next run).

A bucket's levels are timed in turns (1, 2, ..., top, 1, 2, ...), after `LEAD_IN` untimed steps
of its largest level: a device that has idled (engine start, graph capture) may run its first
steps slower, and a level timed first and alone — plain decoding, by the order of the levels —
would take that for its cost. (On an H100 the tables held 1.9-2.7 ms for plain steps that run in
1.4 ms, which made every tree look cheap beside them; timed in turns, 1.55-1.84 ms, the rest being
the policy's and the drafter's own work in a plain step: BENCHMARKS.md, "Speculation policies".)

The timing requests repeat a short random pattern, so that lookup drafters (n-gram, suffix) find
continuations and draft whole trees too; a step whose trees came out smaller than its budget is
not recorded (what it cost says nothing about a full tree of that budget).
"""
from __future__ import annotations

import time

import numpy as np

from ..sequence import SamplingParams

PATTERN, PROMPT = 16, 64  # a timing prompt: a PATTERN-token random cycle, PROMPT tokens long
LEAD_IN = 2  # untimed steps before a bucket's timed ones


def time_budgets(engine, policy, samples: int, max_seconds: float, log=print) -> int:
    """Run ``samples`` steps at every (batch bucket, budget level) ``policy`` has no cost for, on
    timing requests in ``engine``; returns the steps run. Stops after ``max_seconds`` (the rest is
    explored while serving, as without this)."""
    top = min(engine.config.max_num_seqs, policy.buckets[-1])
    todo = {b: [n for n in policy.levels if not policy.costs.known(b, n)] for b in policy.buckets if b <= top}
    todo = {b: levels for b, levels in todo.items() if levels}
    if not todo:
        return 0
    start = time.perf_counter()
    log(f"[specdec] timing {sum(map(len, todo.values()))} (batch, tree budget) step costs at start-up "
        f"({samples} steps each; saved for the next run)")
    length = max(2, min(PROMPT, engine.max_model_len // 4))
    rng = np.random.default_rng(0)
    vocab = engine.model.config.vocab_size
    params = SamplingParams(max_new_tokens=engine.max_model_len, ignore_eos=True)
    live = []
    for i in range(max(todo)):
        cycle = rng.integers(0, vocab, PATTERN).tolist()
        live.append(engine.add_request((cycle * (length // PATTERN + 1))[:length], params,
                                       request_id=f"step-cost-timing-{i}"))
    steps = 0
    try:
        policy.forced = 1  # prefill, then one plain step each: every request decoding
        while engine.has_work() and not all(s.output or s.finished for s in live):
            engine.step()
        for b in sorted(todo, reverse=True):
            for s in live[b:]:
                engine.abort(s.request_id)
            live = [s for s in live[:b] if not s.finished]
            turns = [None] * LEAD_IN + todo[b] * samples  # None: a lead-in step, not timed
            for n in turns:
                if time.perf_counter() - start > max_seconds:
                    log(f"[specdec] step-cost timing stopped at speculation.warm_up_seconds="
                        f"{max_seconds:g}; the costs left are measured while serving")
                    return steps
                if not engine.has_work():  # the timing requests reached max_model_len
                    return steps
                policy.forced, policy.untimed = (max(todo[b]), True) if n is None else (n, False)
                engine.step()
                steps += 1
        return steps
    finally:
        for s in live:
            engine.abort(s.request_id)
        engine.close()  # the last step's time reaches the policy (forced: costs only), and is saved
        policy.forced, policy.untimed = None, False
        log(f"[specdec] timed {steps} steps in {time.perf_counter() - start:.1f} s")
