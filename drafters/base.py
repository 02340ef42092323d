"""Defaults for drafters. The protocol itself (`Drafter`, `TargetContext`, `StepResult`) is the
engine's: `specdec.engine.protocol`."""
from __future__ import annotations

from typing import Optional

from specdec.engine.protocol import StepResult, TargetContext
from specdec.engine.sequence import Sequence


class DrafterBase:
    """Defaults for drafters that keep no KV and no per-sequence state."""
    name = "base"
    max_nodes = 1

    def load(self, target: TargetContext) -> None:
        self.target = target

    def kv_demand(self, seq: Sequence, lookahead: int) -> dict[str, int]:
        return {}

    def update(self, step: StepResult) -> None:
        pass

    def release(self, seq: Sequence) -> None:
        pass

    def warm_up(self) -> int:
        """Capture the drafter's CUDA graphs now (engine start); returns how many."""
        return 0


def static_choices(tree_choices) -> Optional[list[list[int]]]:
    """A static tree's ``tree_choices`` as plain lists (Hydra hands lists of lists as ListConfig),
    or None."""
    if tree_choices is None:
        return None
    return [list(map(int, c)) for c in tree_choices]
