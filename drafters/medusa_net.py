"""Medusa heads (Cai et al. 2024, "Medusa"; FasterDecoding/Medusa) and their checkpoint format.

Head k (0-based) reads the target's last hidden state (after the final norm) at position i and
scores the token at position i + k + 2 (the target's own lm_head scores i + 1). A head is
``medusa_num_layers`` ResBlocks (``x + SiLU(Linear(x))``) then a vocabulary projection.

Official file ``medusa_lm_head.pt`` (or ``.safetensors``) holds the state dict of the head list:
``{k}.{j}.linear.weight/bias`` for j < medusa_num_layers and ``{k}.{medusa_num_layers}.weight``
(hidden -> vocab, no bias); ``config.json`` has ``medusa_num_heads``, ``medusa_num_layers`` and
``base_model_name_or_path``. Our extension ``"medusa_shared_lm_head": true`` drops the per-head
projections (they are the target's lm_head), which keeps heads for a 49k-token vocabulary small
enough to ship.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import formats

STEMS = ("medusa_lm_head",)


class ResBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:  # [N, h]
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.ModuleList):
    """A ModuleList, so that state-dict keys are the official ``{k}.{j}.*``."""

    def __init__(self, hidden: int, vocab: int, num_heads: int, num_layers: int, shared_lm_head: bool) -> None:
        heads = []
        for _ in range(num_heads):
            blocks: list[nn.Module] = [ResBlock(hidden) for _ in range(num_layers)]
            if not shared_lm_head:
                blocks.append(nn.Linear(hidden, vocab, bias=False))
            heads.append(nn.Sequential(*blocks))
        super().__init__(heads)
        self.hidden, self.vocab, self.num_layers = hidden, vocab, num_layers
        self.shared_lm_head = shared_lm_head

    @property
    def num_heads(self) -> int:
        return len(self)

    def forward(self, hidden: Tensor, lm_head: Callable[[Tensor], Tensor]) -> Tensor:
        """hidden ``[..., h]`` -> logits ``[..., heads, V]`` float32; ``lm_head`` is the target's
        (used by shared heads)."""
        outs = [lm_head(head(hidden)) if self.shared_lm_head else head(hidden) for head in self]
        return torch.stack(outs, -2).float()  # [..., heads, V]

    def init_from_target(self, lm_head_weight: Tensor) -> None:
        """Medusa's initialisation: ResBlocks start as the identity (zero linear), per-head
        projections as copies of the target's lm_head."""
        with torch.no_grad():
            for head in self:
                for block in list(head)[: self.num_layers]:
                    block.linear.weight.zero_()
                    block.linear.bias.zero_()
                if not self.shared_lm_head:
                    head[self.num_layers].weight.copy_(lm_head_weight)


def load_medusa(path: str, hidden: int, vocab: int, dtype=torch.float32, device="cpu") -> MedusaHeads:
    what = f"Medusa checkpoint {path}"
    directory = formats.resolve_dir(path, what)
    config = formats.read_config(directory, what)
    missing = [k for k in ("medusa_num_heads", "medusa_num_layers") if k not in config]
    if missing:
        raise formats.CheckpointError(f"{what}: config.json lacks {missing}")
    for key, want in (("hidden_size", hidden), ("vocab_size", vocab)):
        if config.get(key) not in (None, want):
            raise formats.CheckpointError(f"{what}: config {key}={config[key]} but the target has {want}")
    with torch.device("meta"):
        heads = MedusaHeads(hidden, vocab, int(config["medusa_num_heads"]), int(config["medusa_num_layers"]),
                            bool(config.get("medusa_shared_lm_head", False)))
    state = formats.read_weights(formats.find_weights(directory, STEMS, what), what)
    return formats.load_module(heads, state, what, dtype, device)


def save_medusa(heads: MedusaHeads, directory: Path, base_model: str, dtype=torch.bfloat16,
                **extra_config) -> list[Path]:
    config = {"medusa_num_heads": heads.num_heads, "medusa_num_layers": heads.num_layers,
              "base_model_name_or_path": base_model, "hidden_size": heads.hidden,
              "vocab_size": heads.vocab, "medusa_shared_lm_head": heads.shared_lm_head, **extra_config}
    formats.remove_weights(directory, STEMS)
    formats.write_config(config, directory)
    state = {k: v.to(dtype) for k, v in heads.state_dict().items()}
    return formats.write_weights(state, directory, "medusa_lm_head")
