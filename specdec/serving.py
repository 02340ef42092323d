"""The serving loop of a run: requests enter the continuous-batching engine at their arrival times.

Arrivals: all at t = 0 (offline batch), a Poisson process at ``request_rate`` requests/s (as
vLLM's and SGLang's serving benchmarks draw them), and/or at most ``concurrency`` requests in
flight (1 = one at a time, the batch-size-1 protocol of Spec-Bench and the EAGLE papers).
Multi-turn prompts (MT-bench) ask turn t+1 as soon as their turn t finished, with the model's own
answer in the chat. Ctrl-C stops early; everything that finished is kept.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from tqdm.auto import tqdm

from specdec.clock import Clock
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
    """Feeds an Engine: submits requests at their arrival times, steps it, follows up turns.

    ``run`` serves prompts to the end; ``start``, ``advance`` (one step) and ``finish`` let two
    servers take turns (specdec/interleave.py), each on its own ``clock`` (specdec/clock.py):
    request times are then recorded on that clock."""

    def __init__(self, engine: Engine, render: Render, decode: Callable[[list[int]], str],
                 params: SamplingParams, config: ServeConfig,
                 on_finish: Callable[[Request], None] = lambda r: None,
                 on_step: Callable[[Engine], None] = lambda e: None, progress: bool = False,
                 desc: str = "requests", clock: Optional[Clock] = None, position: int = 0):
        self.engine, self.render, self.decode = engine, render, decode
        self.params, self.config = params, config
        self.on_finish, self.on_step = on_finish, on_step
        self.progress, self.desc, self.position = progress, desc, position  # the progress bar
        self.clock = clock or Clock()
        self.queue: list[tuple[float, int, Request]] = []  # heap by arrival time
        self.order = itertools.count()
        self.in_flight: dict[str, Request] = {}
        self.finished: list[Request] = []
        self.submitted = 0
        self.planned = 0
        self.emitted = 0  # output tokens of the finished requests
        self.start_s = 0.0
        self.bar = None

    def warmup(self, prompts: list[Prompt]) -> None:
        """Run the first turns of the first ``config.warmup`` prompts and forget their timing:
        lazy allocations and first-call costs stay out of the measurement."""
        ids = [self.render(p, 0, []) for p in prompts[: self.config.warmup]]
        if ids:
            with self.clock.running():
                self.engine.generate(ids, self.params)
            self.engine.stats = EngineStats()

    def touch(self, prompt: Prompt) -> None:
        """One prompt's prefill and a token, untimed: first-call costs of the process (weights
        paged in, lazy allocations) do not land on whichever of two systems runs first."""
        params = dataclasses.replace(self.params, max_new_tokens=1)
        with self.clock.running():
            self.engine.generate([self.render(prompt, 0, [])], params)
        self.engine.stats = EngineStats()

    def run(self, prompts: list[Prompt]) -> ServeResult:
        """Serve every prompt (every turn); Ctrl-C stops early and keeps what finished."""
        with self.clock.running():
            self.start(prompts)
            interrupted = False
            try:
                while self.advance():
                    pass
            except KeyboardInterrupt:
                interrupted = True
            return self.finish(interrupted)

    def start(self, prompts: list[Prompt]) -> None:
        self.bar = tqdm(total=0, desc=self.desc, unit="req", disable=not self.progress, position=self.position)
        self.start_s = self.clock.now()
        arrivals = poisson_arrivals(len(prompts), self.config.request_rate, self.config.seed)
        for prompt, at in zip(prompts, arrivals):
            self._push(Request(prompt, 0, [], at))
        self._plan(prompts)

    def extend(self, prompts: list[Prompt]) -> None:
        """More prompts, arriving now (a closed loop: one at a time or all at once)."""
        now = self.clock.now() - self.start_s
        for prompt in prompts:
            self._push(Request(prompt, 0, [], now))
        self._plan(prompts)

    def _plan(self, prompts: list[Prompt]) -> None:
        self.planned += sum(self.config.num_turns(p) for p in prompts)
        self.bar.total = self.planned
        self.bar.refresh()

    def busy(self) -> bool:
        return bool(self.queue) or self.engine.has_work()

    @property
    def progress_tokens(self) -> int:
        """Output tokens so far, finished requests and those in flight."""
        return self.emitted + sum(len(r.seq.output) for r in self.in_flight.values())

    def advance(self) -> bool:
        """Admit what has arrived and run one engine step (or wait for the next arrival);
        returns whether work is left."""
        if not self.busy():
            return False
        self._admit()
        if not self.engine.has_work():
            if self.queue:  # idle until the next arrival
                self.clock.wait_until(self.start_s + self.queue[0][0])
            return self.busy()
        done = self.engine.step()
        for seq in done:
            self._finish(seq)
        self.on_step(self.engine)
        return self.busy()

    def finish(self, interrupted: bool = False) -> ServeResult:
        wall = self.clock.now() - self.start_s
        self.bar.close()
        self.engine.close()  # the policy saves what it measured (step costs) for the next run
        return ServeResult(self.finished, self.submitted, self.planned, wall, interrupted, self.engine.stats)

    def _admit(self) -> None:
        limit = self.config.concurrency or math.inf
        now = self.clock.now() - self.start_s
        while self.queue and self.queue[0][0] <= now and len(self.in_flight) < limit:
            _, _, req = heapq.heappop(self.queue)
            req.seq = self.engine.submit(self.render(req.prompt, req.turn, req.answers), self.params)
            if self.config.request_rate is not None and req.turn == 0:
                # open loop: latency counts from the Poisson arrival, waits for a step (or for a
                # free slot under a concurrency cap) included; closed loop (all at once, or a
                # fixed concurrency): from the submission
                req.seq.arrival_time = self.start_s + req.arrival_s
            else:
                req.seq.arrival_time = self.clock.own(req.seq.arrival_time)
            self.submitted += 1
            self.in_flight[req.seq.request_id] = req
            if req.seq.finished:  # rejected on arrival: never reaches a step
                self._finish(req.seq)

    def _finish(self, seq: Sequence) -> None:
        req = self.in_flight.pop(seq.request_id)
        own = self.clock.own  # the engine's stamps onto this server's clock
        if seq.first_token_time is not None:
            seq.first_token_time = own(seq.first_token_time)
        seq.token_times = [(own(t), n) for t, n in seq.token_times]
        self.finished.append(req)
        self.emitted += len(seq.output)
        self.on_finish(req)
        self.bar.update(1)
        rejected = (seq.finish_reason or "").startswith("rejected")
        if not rejected and req.turn + 1 < self.config.num_turns(req.prompt):
            answers = req.answers + [self.decode(seq.output)]
            self._push(Request(req.prompt, req.turn + 1, answers, self.clock.now() - self.start_s))
        elif rejected:  # its later turns cannot be asked without this answer
            self.bar.update(self.config.num_turns(req.prompt) - req.turn - 1)

    def _push(self, req: Request) -> None:
        heapq.heappush(self.queue, (req.arrival_s, next(self.order), req))


@contextmanager
def ctrl_c_stops(*files) -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt inside (a server stops and keeps what finished), whatever
    handler was set before; ``files`` (the outputs being written) are closed at the end."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        for f in files:
            f.close()
