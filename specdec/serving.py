"""The serving loop of a run: requests enter the continuous-batching engine at their arrival times.

Arrivals: all at t = 0 (offline batch), a Poisson process at ``request_rate`` requests/s (as
vLLM's and SGLang's serving benchmarks draw them), and/or at most ``concurrency`` requests in
flight (1 = one at a time, the batch-size-1 protocol of Spec-Bench and the EAGLE papers).
Multi-turn prompts (MT-bench) ask turn t+1 as soon as their turn t finished, with the model's own
answer in the chat. Ctrl-C stops early; everything that finished is kept.
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from tqdm.auto import tqdm

from specdec.data import Prompt
from specdec.engine.engine import Engine, EngineStats
from specdec.engine.sequence import SamplingParams, Sequence


@dataclass(frozen=True)
class ServeConfig:
    request_rate: Optional[float] = None  # requests/s, Poisson; None (or inf): all at t = 0
    concurrency: Optional[int] = None  # max requests in flight; None: no limit but the engine's
    max_turns: Optional[int] = 1  # turns asked per prompt; None: all the prompt has
    warmup: int = 0  # requests run and discarded before timing starts
    seed: int = 0  # of the arrival times

    def __post_init__(self) -> None:
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError(f"serving.request_rate must be > 0 requests/s or null (all at once); "
                             f"got {self.request_rate}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"serving.concurrency must be >= 1 or null; got {self.concurrency}")
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"data.max_turns must be >= 1 or null (all turns); got {self.max_turns}")
        if self.warmup < 0:
            raise ValueError(f"serving.warmup must be >= 0; got {self.warmup}")

    def num_turns(self, prompt: Prompt) -> int:
        return len(prompt.turns) if self.max_turns is None else min(self.max_turns, len(prompt.turns))


@dataclass
class Request:
    """One turn of one prompt, as served."""
    prompt: Prompt
    turn: int
    answers: list[str]  # the model's answers to the earlier turns
    arrival_s: float  # seconds after the start of serving
    seq: Optional[Sequence] = None


@dataclass
class ServeResult:
    finished: list[Request]  # in finishing order
    submitted: int
    planned: int  # prompts x turns
    wall_s: float
    interrupted: bool
    stats: EngineStats = field(default_factory=EngineStats)


def poisson_arrivals(n: int, rate: Optional[float], seed: int) -> list[float]:
    """Arrival offsets in seconds: the first at 0, then exponential gaps of mean 1/rate (a
    Poisson process); all zeros for rate None or inf."""
    if rate is None or math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    return list(itertools.accumulate([0.0] + [rng.expovariate(rate) for _ in range(n - 1)]))[:n]


Render = Callable[[Prompt, int, list[str]], list[int]]  # (prompt, turn, answers) -> token ids


class Server:
    """Feeds an Engine: submits requests at their arrival times, steps it, follows up turns."""

    def __init__(self, engine: Engine, render: Render, decode: Callable[[list[int]], str],
                 params: SamplingParams, config: ServeConfig,
                 on_finish: Callable[[Request], None] = lambda r: None,
                 on_step: Callable[[Engine], None] = lambda e: None, progress: bool = False,
                 desc: str = "requests"):
        self.engine, self.render, self.decode = engine, render, decode
        self.params, self.config = params, config
        self.on_finish, self.on_step = on_finish, on_step
        self.progress, self.desc = progress, desc  # the progress bar, and what it counts
        self.queue: list[tuple[float, int, Request]] = []  # heap by arrival time
        self.order = itertools.count()
        self.in_flight: dict[str, Request] = {}
        self.finished: list[Request] = []
        self.submitted = 0

    def warmup(self, prompts: list[Prompt]) -> None:
        """Run the first turns of the first ``config.warmup`` prompts and forget their timing:
        lazy allocations and first-call costs stay out of the measurement."""
        ids = [self.render(p, 0, []) for p in prompts[: self.config.warmup]]
        if ids:
            self.engine.generate(ids, self.params)
            self.engine.stats = EngineStats()

    def run(self, prompts: list[Prompt]) -> ServeResult:
        arrivals = poisson_arrivals(len(prompts), self.config.request_rate, self.config.seed)
        for prompt, at in zip(prompts, arrivals):
            self._push(Request(prompt, 0, [], at))
        planned = sum(self.config.num_turns(p) for p in prompts)
        bar = tqdm(total=planned, desc=self.desc, unit="req", disable=not self.progress)
        start = time.perf_counter()
        interrupted = False
        try:
            self._loop(start, bar)
        except KeyboardInterrupt:
            interrupted = True
        wall = time.perf_counter() - start
        bar.close()
        self.engine.close()  # the policy saves what it measured (step costs) for the next run
        return ServeResult(self.finished, self.submitted, planned, wall, interrupted, self.engine.stats)

    def _loop(self, start: float, bar) -> None:
        while self.queue or self.engine.has_work():
            self._admit(start, bar)
            if not self.engine.has_work():
                if self.queue:  # idle until the next arrival
                    time.sleep(max(0.0, start + self.queue[0][0] - time.perf_counter()))
                continue
            done = self.engine.step()
            for seq in done:
                self._finish(seq, start, bar)
            self.on_step(self.engine)

    def _admit(self, start: float, bar) -> None:
        limit = self.config.concurrency or math.inf
        now = time.perf_counter() - start
        while self.queue and self.queue[0][0] <= now and len(self.in_flight) < limit:
            _, _, req = heapq.heappop(self.queue)
            req.seq = self.engine.submit(self.render(req.prompt, req.turn, req.answers), self.params)
            if self.config.request_rate is not None and req.turn == 0:
                # open loop: latency counts from the Poisson arrival, waits for a step (or for a
                # free slot under a concurrency cap) included; closed loop (all at once, or a
                # fixed concurrency): from the submission
                req.seq.arrival_time = start + req.arrival_s
            self.submitted += 1
            self.in_flight[req.seq.request_id] = req
            if req.seq.finished:  # rejected on arrival: never reaches a step
                self._finish(req.seq, start, bar)

    def _finish(self, seq: Sequence, start: float, bar) -> None:
        req = self.in_flight.pop(seq.request_id)
        self.finished.append(req)
        self.on_finish(req)
        bar.update(1)
        rejected = (seq.finish_reason or "").startswith("rejected")
        if not rejected and req.turn + 1 < self.config.num_turns(req.prompt):
            answers = req.answers + [self.decode(seq.output)]
            self._push(Request(req.prompt, req.turn + 1, answers, time.perf_counter() - start))
        elif rejected:  # its later turns cannot be asked without this answer
            bar.update(self.config.num_turns(req.prompt) - req.turn - 1)

    def _push(self, req: Request) -> None:
        heapq.heappush(self.queue, (req.arrival_s, next(self.order), req))
