"""``speculation=fixed``: every decoding sequence drafts the drafter's whole budget, every step
(the behaviour before speculation policies; the reference `AdaptivePolicy` is compared with)."""
from __future__ import annotations

from typing import Optional

from ..scheduler import ScheduledSeq


class FixedPolicy:
    """Every decoding sequence drafts its whole budget (the drafter's ``max_nodes``)."""
    name = "fixed"
    wants_trees = False  # no node statistics needed
    fits_budget = False  # the scheduler counts each tree at its whole budget

    def summary(self) -> dict:
        return {"policy": self.name}

    def attach(self, engine) -> None:
        pass

    def plan(self, items: list[ScheduledSeq], room: Optional[int] = None) -> list[ScheduledSeq]:
        return items

    def observe(self, *args, **kwargs) -> None:
        pass

    def warm_up(self, engine) -> int:
        return 0

    def release(self, seq) -> None:
        pass

    def close(self) -> None:
        pass

