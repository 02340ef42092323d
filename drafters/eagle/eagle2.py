"""drafter=eagle: EAGLE-1 (static tree from ``tree_choices``) and EAGLE-2 (dynamic tree:
``total_tokens``, ``depth``, ``top_k``, reranked by cumulative draft log-probability) over one
draft decoder layer fed the target's final features (Li et al. 2024, "EAGLE" and "EAGLE-2").

The target's embedding and lm_head are reused; the draft keeps its own paged KV cache (see
features.py for the alignment of features, tokens and positions). Every node is a top-k pick,
so candidates are DETERMINISTIC and sampling stays lossless without drawing any randomness.
``draft_vocab`` restricts the drafted tokens to a frequency-ranked subset of the vocabulary
(FR-Spec; drafters/draft_vocab.py), still lossless.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from specdec.engine.protocol import StepResult, TargetContext
from specdec.kernels import wide_topk

from .. import draft_vocab as vocab
from .. import formats
from ..base import static_choices
from ..rows import copy_rows
from .base import EagleDrafterBase
from .format import load_eagle
from .net import EagleNet


class EagleDrafter(EagleDrafterBase):
    name = "eagle"

    def __init__(self, path: str, total_tokens: int | str = 60, depth: int = 6, top_k: int = 10,
                 tree_choices: Optional[Sequence[Sequence[int]]] = None, pool_all: bool = True,
                 draft_vocab: Optional[str] = None) -> None:
        super().__init__(path, total_tokens, depth, top_k, static_choices(tree_choices), pool_all)
        if self.static:
            self.name = "eagle1"
        vocab.check_spec(draft_vocab, f"drafter={self.name}")  # fail before the target loads
        self.draft_vocab = draft_vocab
        self.vocab_ids: Optional[Tensor] = None  # [Vd] target ids the draft may propose (None: all)
        self.vocab_head: Optional[Tensor] = None  # [Vd, h] their lm_head rows

    def load(self, target: TargetContext) -> None:
        super().load(target)
        if self.draft_vocab is not None:
            what = f"drafter={self.name}"
            head_dir = lambda: formats.resolve_dir(self.path, f"EAGLE checkpoint {self.path}")  # noqa: E731
            path = vocab.resolve(self.draft_vocab, head_dir, what)
            self.use_vocab(vocab.load(path, target.model.config.vocab_size, what))
        self.attach(load_eagle(self.path, target.model.config, target.dtype, target.device))

    def use_vocab(self, ids: Tensor) -> None:
        """Draft from the target ids ``ids [Vd]`` only; before `attach`."""
        if ids.numel() < max(self.growth.width, 1):
            raise ValueError(f"drafter={self.name}: a draft vocabulary of {ids.numel()} ids cannot "
                             f"fill top_k={self.growth.width} children")
        self.vocab_ids = ids.to(self.target.device)
        self.vocab_head = self.target.model.lm_head_rows(self.vocab_ids)

    def attach(self, net: EagleNet) -> None:
        if net.config.hidden_size != self.target.model.config.hidden_size:
            raise ValueError(f"EAGLE draft width {net.config.hidden_size} differs from the target's "
                             f"{self.target.model.config.hidden_size}")
        super().attach(net)

    def target_features(self, step: StepResult, rows: slice | Tensor) -> Tensor:
        return copy_rows(step.hidden, rows)  # [n, h] the target's final normed hidden states

    def top_children(self, out: Tensor, k: int) -> tuple[Tensor, Tensor]:
        # [..., V] (or [..., Vd]) via the target's lm_head; in float32 without a float32 copy of
        # the logits; over a draft vocabulary the log-probs are renormalised over it, as FR-Spec
        logits = self.target.model.compute_logits(out, upcast=False, head=self.vocab_head)
        top_lp, top = wide_topk(logits.log_softmax(-1, dtype=torch.float32), k)  # [..., k] x2
        return top_lp, (top if self.vocab_ids is None else self.vocab_ids[top])
