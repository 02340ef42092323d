"""A server's clock: wall time for a system served alone, or its own time when two systems take
turns on one machine (specdec/interleave.py).

Own time is ``time.perf_counter()`` minus the time the system sat paused while the other one
ran, plus the idle gaps it skipped instead of sleeping (waiting for a Poisson arrival). The
engine stamps a sequence's times with ``perf_counter`` during the system's own steps, never while
it is paused, so ``own(t)`` maps each stamp onto the system's own time line exactly.
"""
from __future__ import annotations

import bisect
import time
from contextlib import contextmanager
from typing import Iterator


class Clock:
    """Wall time: ``own`` is the identity and waiting sleeps."""

    def now(self) -> float:
        return time.perf_counter()

    def own(self, stamp: float) -> float:
        return stamp

    def wait_until(self, when: float) -> None:
        time.sleep(max(0.0, when - self.now()))

    @contextmanager
    def running(self) -> Iterator[None]:
        yield


class OwnClock(Clock):
    """A system's own time while it takes turns with another; paused until ``running``."""

    def __init__(self) -> None:
        start = time.perf_counter()
        self.paused_at: float | None = start
        self.starts = [float("-inf")]  # perf_counter stamps where the offset changed
        self.offsets = [0.0]  # own time = stamp + offset, from that stamp on

    def now(self) -> float:
        stamp = self.paused_at if self.paused_at is not None else time.perf_counter()
        return stamp + self.offsets[-1]

    def own(self, stamp: float) -> float:
        return stamp + self.offsets[bisect.bisect_right(self.starts, stamp) - 1]

    def _shift(self, stamp: float, by: float) -> None:
        self.starts.append(stamp)
        self.offsets.append(self.offsets[-1] + by)

    def wait_until(self, when: float) -> None:
        """Idle until own time ``when``: skipped, the other system uses the machine meanwhile."""
        self._shift(time.perf_counter(), max(0.0, when - self.now()))

    @contextmanager
    def running(self) -> Iterator[None]:
        """The system's turn: its time runs inside, stands still outside."""
        assert self.paused_at is not None, "the clock is already running"
        stamp = time.perf_counter()
        self._shift(stamp, -(stamp - self.paused_at))
        self.paused_at = None
        try:
            yield
        finally:
            self.paused_at = time.perf_counter()
