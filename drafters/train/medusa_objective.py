"""Medusa heads (Cai et al. 2024): head k at position i learns the target's distribution of the
token at i + k + 2 (self-distillation, Medusa-2 sec. 2.3: soft labels from the frozen target),
losses weighted 0.8^k as in the reference (``medusa_decay_coefficient``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from specdec.drafters.medusa_net import MedusaHeads, save_medusa

from .batches import Batch
from .losses import soft_ce, target_logprobs, top1_agreement
from .unroll import shift


class MedusaObjective:
    kind = "medusa"

    def __init__(self, target, examples=None, num_heads: int = 4, num_layers: int = 1,
                 shared_lm_head: bool = True, decay: float = 0.8, base_model: str = "") -> None:
        cfg = target.config
        self.target, self.decay, self.base_model = target, decay, base_model
        self.module = self.heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, num_heads, num_layers, shared_lm_head)
        self.heads.init_from_target(target.lm_head.weight.float())
        self.layers: tuple[int, ...] = ()

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        s = batch.tokens.shape[1]
        logits = self.heads(batch.hidden, self.target.compute_logits)  # [B, S, heads, V]
        every = target_logprobs(self.target.lm_head.weight, batch.hidden)  # [B, S, V] once
        total, metrics = 0.0, {}
        for k in range(self.heads.num_heads):
            tgt = shift(every, k + 1, s)  # the target's distribution of token i + k + 2
            mask = shift(batch.loss_mask & batch.valid, k + 2, s)  # head k scores token i + k + 2
            ce = soft_ce(tgt, logits[:, :, k], mask)
            total = total + self.decay ** k * ce
            metrics.update({f"ce_{k}": float(ce.detach()), f"acc_{k}": top1_agreement(tgt, logits[:, :, k], mask)})
        return total, metrics

    def export(self, directory: Path, dtype=torch.bfloat16) -> list[Path]:
        return save_medusa(self.heads, directory, self.base_model, dtype=dtype)

    def drafter(self, path: str, tree_choices: Sequence[Sequence[int]] = (), **_):
        from specdec.drafters.medusa import MedusaDrafter

        depth = self.heads.num_heads  # a default tree that the heads can fill: top-3 per depth, chains
        choices = tree_choices or [[0] * d for d in range(1, depth + 1)] + [[r] for r in (1, 2)]
        return MedusaDrafter(path, [c for c in choices if len(c) <= depth])
