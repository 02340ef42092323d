"""A small draft model distilled from the target (Leviathan et al. 2023's draft, trained as in
DistillSpec, Zhou et al. 2024: forward KL to the target's distribution on the target's own
outputs). It shares the target's tokenizer, frozen embedding and lm_head, so only its decoder
layers are trained and shipped (drafter=small_draft loads them beside the target's)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from specdec.drafters.small_draft import save_small_draft
from specdec.models.llama import LlamaForCausalLM

from .batches import Batch
from .dense import dense_forward
from .losses import soft_ce, target_logprobs, top1_agreement
from .unroll import shift


class DraftObjective:
    """The draft starts as the target's first ``num_layers`` layers plus its final norm (sane
    logits from step 0; later layers, tried too, expect a residual stream they never see here)."""
    kind = "draft"

    def __init__(self, target, examples=None, num_layers: int = 2, intermediate_size: int | None = None) -> None:
        cfg = dataclasses.replace(target.config, num_hidden_layers=num_layers,
                                  intermediate_size=intermediate_size or target.config.intermediate_size)
        self.target = target
        self.model = LlamaForCausalLM(cfg).float()
        src = target.model.layers
        picks = [min(i, len(src) - 1) for i in range(num_layers)]
        with torch.no_grad():  # start as the target cut after its first layers (an early exit)
            for dst, i in zip(self.model.model.layers, picks):
                for name, p in dst.named_parameters():
                    q = dict(src[i].named_parameters()).get(name)
                    if q is not None and q.shape == p.shape:
                        p.copy_(q.float())
            self.model.model.norm.weight.copy_(target.model.norm.weight.float())
        # trained: the decoder layers and final norm; the embedding and lm_head stay the target's
        self.module = nn.ModuleDict({"layers": self.model.model.layers, "norm": self.model.model.norm})
        self.model.model.embed_tokens = target.model.embed_tokens
        self.model.lm_head = target.lm_head
        self.layers: tuple[int, ...] = ()

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        s = batch.tokens.shape[1]
        pos = torch.arange(s, device=batch.tokens.device).expand_as(batch.tokens)
        hidden = dense_forward(self.model, batch.tokens, pos)  # [B, S, h]
        logits = self.target.compute_logits(hidden)  # position i scores token i + 1
        tgt = target_logprobs(self.target.lm_head.weight, batch.hidden)
        mask = shift(batch.loss_mask & batch.valid, 1, s)
        ce = soft_ce(tgt, logits, mask)
        return ce, {"ce": float(ce.detach()), "acc": top1_agreement(tgt, logits, mask)}

    def export(self, directory: Path, dtype=torch.bfloat16) -> list[Path]:
        return save_small_draft(self.model, directory, dtype=dtype)

    def drafter(self, path: str, num_tokens: int = 4, top_k: int = 1, max_nodes: int | None = None, **_):
        from specdec.drafters.small_draft import SmallDraftDrafter

        return SmallDraftDrafter(path, num_tokens=num_tokens, top_k=top_k, max_nodes=max_nodes)
