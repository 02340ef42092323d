"""Two systems timed in turns on one machine: a run's drafter and its autoregressive baseline, each
served by its own Server and engine on the same loaded target, on the same prompts.

The turn goes to the system that has emitted fewer output tokens so far (finished requests and
those in flight; ties: the one with less time of its own), so the two go through their work at
the same pace and meet the same machine conditions (other jobs, clock boosts) at the same
moments. A turn is one engine step, or the wait for the next Poisson arrival (skipped). Each
system's clock runs only during its own turns (specdec/clock.py): its latencies and wall time are
what it would have measured alone, at the load of that moment.

The baseline may serve a sample first: ``more()`` is called once when it has nothing left, and
returns the prompts it must still serve (none: it stops, and the run goes on alone).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from specdec.data import Prompt
from specdec.serving import ServeResult, Server


def interleave(run: Server, base: Server, run_prompts: list[Prompt], base_prompts: list[Prompt],
               more: Optional[Callable[[], list[Prompt]]] = None) -> tuple[ServeResult, ServeResult, dict]:
    """Serve both to the end (Ctrl-C: both stop, interrupted). Returns both results and how the
    turns went: turns per system, and each one's seconds alone after the other had stopped."""
    servers = (run, base)
    for server, prompts in zip(servers, (run_prompts, base_prompts)):
        server.start(prompts)
    active = [True, True]
    turns, alone = [0, 0], [0.0, 0.0]
    interrupted = False
    try:
        while any(active):
            i = min((i for i in (0, 1) if active[i]), key=lambda i: (
                servers[i].progress_tokens, servers[i].clock.now() - servers[i].start_s))
            t = time.perf_counter()
            with servers[i].clock.running():
                active[i] = servers[i].advance()
            turns[i] += 1
            if not active[1 - i]:
                alone[i] += time.perf_counter() - t
            if i == 1 and not active[1] and more is not None:
                extra, more = more(), None
                if extra:
                    base.extend(extra)
                    active[1] = True
    except KeyboardInterrupt:
        interrupted = True
    run_result, base_result = (server.finish(interrupted) for server in servers)
    return run_result, base_result, {"run_turns": turns[0], "baseline_turns": turns[1],
                                     "run_alone_s": alone[0], "baseline_alone_s": alone[1]}
