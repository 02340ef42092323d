"""A request as the engine tracks it: tokens, cache state, sampling parameters and timings."""
from __future__ import annotations

import itertools
import math
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 is greedy; top_k 0 and top_p 1 are off."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    seed: Optional[int] = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy); got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must lie in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off); got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


@dataclass
class Sequence:
    prompt: list[int]
    params: SamplingParams
    request_id: str = ""
    seq_id: int = field(default_factory=lambda: next(_ids))
    tokens: list[int] = field(default_factory=list)  # prompt + generated
    status: Status = Status.WAITING
    num_cached: int = 0  # tokens whose K/V sit in the cache (positions 0..num_cached-1)
    block_table: list[int] = field(default_factory=list)  # the target's KV blocks
    aux_tables: dict[str, list[int]] = field(default_factory=dict)  # drafters' own KV blocks
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort" | "rejected: ..."
    seed: Optional[int] = None  # resolved at creation: params.seed, else a fresh random one
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: Optional[float] = None
    token_times: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens appended)
    num_preemptions: int = 0
    last_scheduled: int = -1  # scheduler step that last ran it (fair rotation under a tight budget)
    accept_lengths: list[int] = field(default_factory=list)  # accepted draft tokens per decode step
    draft_depths: list[int] = field(default_factory=list)  # depth of the tree verified, per decode step

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = list(self.prompt)
        if not self.request_id:
            self.request_id = str(self.seq_id)
        if self.seed is None:
            # a fresh seed from the OS: torch.seed() would also reseed torch's global generators
            # (a user's torch.manual_seed undone by each request) and costs ~0.7 ms on the host
            self.seed = self.params.seed if self.params.seed is not None else secrets.randbits(62)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_prompt(self) -> int:
        return len(self.prompt)

    @property
    def output(self) -> list[int]:
        return self.tokens[self.num_prompt:]

    @property
    def in_prefill(self) -> bool:
        """True while a token other than the last one lacks K/V. A prefill chunk may run through
        the last token too, and then samples from it; otherwise the last token is the root of the
        next decode step's draft tree. Either way positions ``0..num_cached-1`` are cached."""
        return self.num_cached < len(self.tokens) - 1

    @property
    def samples(self) -> bool:
        return self.params.temperature > 0

    def generator(self, stream: int, ahead: int = 0) -> torch.Generator:
        """The randomness of one sampling event, keyed by (request seed, current length + ``ahead``,
        stream): the same whatever batch, schedule or preemption the request goes through (a
        counter-based scheme: a stateful stream would shift when a preempted request recomputes
        its prefix). Streams: 0 = the verifier's uniforms, 1 = the drafter's."""
        key = hash((self.seed, len(self.tokens) + ahead, stream)) % 2**63  # int-tuple hashes are stable
        return torch.Generator().manual_seed(key)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
