"""What a drafter learns: the `Objective` protocol the trainer drives, and the registry of the
four drafter kinds (EAGLE-1/2, EAGLE-3, Medusa heads, a small distilled draft model)."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import Tensor, nn

from .batches import Batch


class Objective(Protocol):
    kind: str  # eagle | eagle3 | medusa | draft
    module: nn.Module  # the trained parameters (the target stays frozen)
    layers: tuple[int, ...]  # target layers the batches must carry (EAGLE-3)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]: ...

    def export(self, directory: Path) -> list[Path]: ...

    def drafter(self, path: str, **options): ...


def make_objective(kind: str, target, examples, **options) -> Objective:
    """``kind`` with its options (configs/train/method/<kind>.yaml)."""
    from .draft_objective import DraftObjective
    from .eagle_objective import Eagle3Objective, EagleObjective
    from .medusa_objective import MedusaObjective

    kinds = {"eagle": EagleObjective, "eagle3": Eagle3Objective, "medusa": MedusaObjective,
             "draft": DraftObjective}
    if kind not in kinds:
        raise ValueError(f"unknown drafter kind {kind!r} to train; choose one of {sorted(kinds)}")
    return kinds[kind](target, examples=examples, **options)
