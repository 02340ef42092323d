"""The drafter protocol: the only view of a drafter that the engine has, and what the engine gives
a drafter. Drafters live in `specdec.drafters` and import this; the engine imports no drafter.

Hydra's ``_target_`` picks the drafter class; the engine calls, every step (ARCHITECTURE.md, "The
step"),

    tree = drafter.propose(seqs, budgets)   # DraftTree: row b for seqs[b] (rows past len(seqs)
                                            # are a CUDA graph's padding, ignored)
    ...target forward, verify, commit...
    drafter.update(step)                    # e.g. EAGLE keeps the target features of accepted nodes

and ``drafter.release(seq)`` when a sequence finishes or is preempted; ``drafter.warm_up()`` at
start, to capture its CUDA graphs (`TargetContext.graph_runner`). ``kv_demand`` tells the
scheduler how many positions the drafter's own paged tables need, so that blocks for them are
reserved before the step runs (a drafter never allocates mid-step). The engine also calls it once
before ``load``, for a sequence of max_model_len tokens, to size the KV pool: it must depend on the
drafter's settings only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, runtime_checkable

import torch

from specdec.verifiers import DraftTree

from .block_manager import BlockManager
from .graphs import GraphRunner
from .sequence import Sequence


@dataclass
class TargetContext:
    """What a drafter may use of the target and the engine when it loads."""
    model: Any  # a `specdec.models` causal LM (its public interface: specdec/models/__init__.py)
    tokenizer: Any  # may be None for models built in tests
    vocab_size: int
    device: torch.device
    dtype: torch.dtype
    blocks: BlockManager
    max_model_len: int
    capture_layers: tuple[int, ...] = ()  # filled by drafters that want target layer features
    graph_batch: int = 0  # > 0: the drafter may replay CUDA graphs for batches up to this size
    graph_mode: Optional[str] = None  # the engine's: capture | emulate | None (engine.cuda_graphs)
    # the node budgets the engine's speculation policy may ask for (set after `load`, before
    # `warm_up`, which captures their graphs); empty: the drafter's whole budget only
    budget_levels: tuple[int, ...] = ()

    def graph_runner(self) -> GraphRunner:
        """A drafter's own graph runner, in the engine's mode (eager when graphs are off)."""
        return GraphRunner(self.device, self.graph_mode if self.graph_batch > 0 else None)


@dataclass
class StepResult:
    """What the engine tells ``update`` after a step (all rows in the step's order)."""
    seqs: list[Sequence]  # every sequence that ran, in the step's order
    is_prefill: list[bool]  # [B]
    num_new: list[int]  # [B] tokens fed to the target for each sequence
    prefix_lens: list[int]  # [B] num_cached before the step
    row_offsets: list[int]  # [B + 1] rows of `hidden` that belong to each sequence
    hidden: torch.Tensor  # [N, H] target hidden states after the final norm
    captured: dict[int, torch.Tensor]  # layer -> [N, H] (the layers asked for in capture_layers)
    sample_index: list[int]  # [B] row of `result` for each sequence, -1 if it did not sample
    result: Any  # specdec.verifiers.VerifyResult over the sampling rows
    tree: Optional[DraftTree]  # the tree verified (sampling rows), node i of row r at hidden row
    #                           row_offsets[b] + i for decode sequences
    accepted: list[list[int]]  # [Bs] accepted node indices per sampling row, root first (read
    #                           to the host with the step's one read)


@runtime_checkable
class Drafter(Protocol):
    name: str
    max_nodes: int  # tree budget T per sequence, root included (1 = autoregressive)

    def load(self, target: TargetContext) -> None: ...

    def kv_demand(self, seq: Sequence, lookahead: int) -> dict[str, int]: ...

    def propose(self, seqs: list[Sequence], budgets: list[int]) -> DraftTree: ...

    def update(self, step: StepResult) -> None: ...

    def release(self, seq: Sequence) -> None: ...

    def warm_up(self) -> int: ...


def last_tokens(seqs: list[Sequence], device: torch.device | str = "cpu") -> torch.Tensor:
    """The root of every tree: each sequence's last token, ``[B]``."""
    return torch.tensor([s.tokens[-1] for s in seqs], dtype=torch.long, device=device)
