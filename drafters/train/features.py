"""The target's hidden states for whole sequences, in one ragged prefill over a scratch paged
cache (the same forward the engine runs, so training features equal serving features)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from specdec.engine import ragged
from specdec.models.attention import empty_cache


@torch.inference_mode()
def target_features(model, seqs: Sequence[Sequence[int]], layers: Sequence[int] = (),
                    block_size: int = 16) -> tuple[list[Tensor], list[Tensor]]:
    """Per sequence: final normed hidden ``[n, h]`` and the captured layers concatenated in the
    order given ``[n, len(layers) * h]`` (empty ``[n, 0]`` without layers)."""
    cfg, dev = model.config, model.device
    lens = [len(s) for s in seqs]
    tables, first = [], 0
    for n in lens:
        count = -(-n // block_size)
        tables.append(list(range(first, first + count)))
        first += count
    k, v = empty_cache(cfg.num_hidden_layers, max(first, 1), block_size, cfg.num_key_value_heads,
                       cfg.head_dim, model.dtype, dev)
    slots = [x for t, n in zip(tables, lens) for x in ragged.slots(t, 0, n, block_size)]
    meta = ragged.attn_metadata(tables, [0] * len(seqs), lens, slots, dev)
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=dev)
    pos = torch.tensor([p for n in lens for p in range(n)], device=dev)
    out = model(ids, pos, meta, k, v, capture_layers=tuple(sorted(set(layers))))
    aux = (torch.cat([out.captured[i] for i in layers], -1) if layers
           else out.hidden.new_zeros(out.hidden.shape[0], 0))
    return list(out.hidden.split(lens)), list(aux.split(lens))
