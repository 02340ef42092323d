"""Padded training batches from self-distillation examples, in a seeded order that depends only
on the step (so a resumed run sees the batches an uninterrupted one would have). Under
data-parallel training each rank builds only its slice of the step's global batch
(``part=(rank, world)``: rows ``rank * B / world`` up to ``(rank + 1) * B / world``), so the
ranks together see what one process would."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .features import target_features
from .shards import Example


@dataclass
class Batch:
    tokens: Tensor  # [B, S] int64, right padded with 0
    valid: Tensor  # [B, S] bool: real tokens
    loss_mask: Tensor  # [B, S] bool: answer tokens (what a drafter learns to predict)
    hidden: Tensor  # [B, S, h] the target's final normed hidden states (float32)
    aux: Tensor  # [B, S, A] the captured target layers concatenated (A = 0 when none)


class BatchSource:
    def __init__(self, examples: Sequence[Example], batch_size: int, max_len: int, seed: int,
                 target, layers: Sequence[int] = (), device="cpu", stored_layers: Sequence[int] = (),
                 part: tuple[int, int] = (0, 1)) -> None:
        """``stored_layers``: the target layers the examples' stored ``aux`` holds (features are
        recomputed with the target when they are not the ``layers`` asked for). ``part``: (rank,
        world size); ``batch_size`` is the global batch, a multiple of the world size."""
        if not examples:
            raise ValueError("no training examples")
        rank, world = part
        if batch_size % world or not 0 <= rank < world:
            raise ValueError(f"a global batch of {batch_size} does not split into {world} equal parts "
                             f"(rank {rank}): train.batch_size must be a multiple of the world size")
        self.part = (rank, world)
        self.examples, self.batch_size, self.max_len = list(examples), batch_size, max_len
        self.seed, self.target, self.layers, self.device = seed, target, tuple(layers), device
        self.use_stored = examples[0].hidden is not None and (not self.layers or tuple(stored_layers) == self.layers)

    def indices(self, step: int) -> list[int]:
        """Examples of batch ``step``: epochs are seeded permutations, walked in order."""
        n, first = len(self.examples), step * self.batch_size
        return [self._perm(pos // n)[pos % n] for pos in range(first, first + self.batch_size)]

    def _perm(self, epoch: int) -> list[int]:
        if getattr(self, "_epoch", None) != epoch:
            perm = list(range(len(self.examples)))
            random.Random(self.seed * 100_003 + epoch).shuffle(perm)
            self._epoch, self._order = epoch, perm
        return self._order

    def local_indices(self, step: int) -> list[int]:
        """This rank's slice of ``indices(step)`` (all of it on one process)."""
        rank, world = self.part
        per = self.batch_size // world
        return self.indices(step)[rank * per: (rank + 1) * per]

    def batch(self, step: int) -> Batch:
        exs = [self.examples[i] for i in self.local_indices(step)]
        toks = [e.tokens[: self.max_len] for e in exs]
        b, s = len(toks), max(len(t) for t in toks)
        tokens = torch.zeros(b, s, dtype=torch.long)
        loss_mask = torch.zeros(b, s, dtype=torch.bool)
        for r, (e, t) in enumerate(zip(exs, toks)):
            tokens[r, : len(t)] = torch.tensor(t)
            loss_mask[r, e.prompt_len: len(t)] = True
        valid = torch.arange(s)[None] < torch.tensor([len(t) for t in toks])[:, None]
        hidden, aux = self._features(exs, toks, s)
        dev = self.device
        return Batch(tokens.to(dev), valid.to(dev), loss_mask.to(dev), hidden, aux)

    def _features(self, exs, toks, s) -> tuple[Tensor, Tensor]:
        if self.use_stored:
            hidden = [e.hidden[: len(t)] for e, t in zip(exs, toks)]
            aux = [e.aux[: len(t)] for e, t in zip(exs, toks)]
        else:
            hidden, aux = target_features(self.target, toks, self.layers)
        return _pad(hidden, s, self.device), _pad(aux, s, self.device)


def _pad(rows: list[Tensor], s: int, device) -> Tensor:  # [n_b, D] each -> [B, S, D] float32
    out = torch.zeros(len(rows), s, rows[0].shape[-1], dtype=torch.float32, device=device)
    for r, x in enumerate(rows):
        out[r, : x.shape[0]] = x.to(device, torch.float32)
    return out
