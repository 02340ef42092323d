"""drafter=eagle3: EAGLE-3 (Li et al. 2025): ``fc`` fuses the target's low, middle and high layer
features (requested through ``TargetContext.capture_layers``), the midlayer attends over
concat(embedding, hidden), and a draft vocabulary is mapped to target ids with ``d2t``. Same
dynamic tree (or a static one from ``tree_choices``) as drafter=eagle.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import torch
from torch import Tensor

from specdec.engine.protocol import StepResult, TargetContext
from specdec.kernels import wide_topk

from .. import formats
from ..base import static_choices
from .base import EagleDrafterBase
from .format import feature_layers, load_eagle3
from .net import Eagle3Net


class Eagle3Drafter(EagleDrafterBase):
    name = "eagle3"
    shipped_as = "eagle3"

    def __init__(self, path: str, total_tokens: int | str = 60, depth: int = 6, top_k: int = 10,
                 tree_choices: Optional[Sequence[Sequence[int]]] = None, pool_all: bool = True,
                 feature_layers: Optional[Sequence[int]] = None) -> None:
        super().__init__(path, total_tokens, depth, top_k, static_choices(tree_choices), pool_all)
        self.feature_override = None if feature_layers is None else [int(i) for i in feature_layers]

    def load(self, target: TargetContext) -> None:
        super().load(target)
        net = load_eagle3(self.path, target.model.config, target.dtype, target.device)
        self.attach(net, _config_layer_ids(self.path))

    def attach(self, net: Eagle3Net, config_layer_ids: Optional[Sequence[int]] = None) -> None:
        """Use ``net``; asks the engine to capture the three feature layers."""
        layers = feature_layers(config_layer_ids, self.feature_override,
                                self.target.model.config.num_hidden_layers, f"drafter={self.name}")
        self.layers = layers
        self.target.capture_layers = tuple(sorted(set(self.target.capture_layers) | set(layers)))
        super().attach(net)

    def target_features(self, step: StepResult, rows: slice | Tensor) -> Tensor:
        low, mid, high = (step.captured[i][rows] for i in self.layers)  # [n, h] each (cat copies)
        return self.net.fuse(torch.cat([low, mid, high], -1))  # [n, h]

    def top_children(self, out: Tensor, k: int) -> tuple[Tensor, Tensor]:
        lp = self.net.logits(out).log_softmax(-1)  # [..., Vd]
        top_lp, top = wide_topk(lp, k)
        return top_lp, self.net.to_target(top)


def _config_layer_ids(path: str) -> Optional[list[int]]:
    """``eagle_config.eagle_aux_hidden_state_layer_ids`` of the checkpoint, when it names them."""
    directory = formats.resolve_dir(path, f"EAGLE-3 checkpoint {path}")
    config = json.loads((directory / "config.json").read_text())
    ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    return None if ids is None else [int(i) for i in ids]
