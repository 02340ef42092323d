"""drafter=eagle: EAGLE-1 (static tree from ``tree_choices``) and EAGLE-2 (dynamic tree:
``total_tokens``, ``depth``, ``top_k``, reranked by cumulative draft log-probability) over one
draft decoder layer fed the target's final features (Li et al. 2024, "EAGLE" and "EAGLE-2").

The target's embedding and lm_head are reused; the draft keeps its own paged KV cache (see
eagle_base.py for the alignment of features, tokens and positions). Every node is a top-k pick,
so candidates are DETERMINISTIC and sampling stays lossless without drawing any randomness.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from specdec.kernels import wide_topk

from .base import StepResult, TargetContext
from .eagle_base import EagleDrafterBase, static_choices
from .eagle_format import load_eagle
from .eagle_net import EagleNet


class EagleDrafter(EagleDrafterBase):
    name = "eagle"

    def __init__(self, path: str, total_tokens: int | str = 60, depth: int = 6, top_k: int = 10,
                 tree_choices: Optional[Sequence[Sequence[int]]] = None, pool_all: bool = True) -> None:
        super().__init__(path, total_tokens, depth, top_k, static_choices(tree_choices), pool_all)
        if self.static:
            self.name = "eagle1"

    def load(self, target: TargetContext) -> None:
        super().load(target)
        self.attach(load_eagle(self.path, target.model.config, target.dtype, target.device))

    def attach(self, net: EagleNet) -> None:
        if net.config.hidden_size != self.target.model.config.hidden_size:
            raise ValueError(f"EAGLE draft width {net.config.hidden_size} differs from the target's "
                             f"{self.target.model.config.hidden_size}")
        super().attach(net)

    def target_features(self, step: StepResult, rows: Tensor) -> Tensor:
        return step.hidden[rows]  # [n, h] the target's final normed hidden states

    def top_children(self, out: Tensor, k: int) -> tuple[Tensor, Tensor]:
        # [..., V] via the target's lm_head; in float32 without a float32 copy of the logits
        lp = self.target.model.compute_logits(out, upcast=False).log_softmax(-1, dtype=torch.float32)
        return wide_topk(lp, k)  # [..., k] x2: one vocabulary top-k per tree level
