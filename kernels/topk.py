"""Top-k over a wide last dimension (a vocabulary) without a wide sort.

``torch.topk`` over rows of ~50k entries picks CUDA's multi-block radix select: a dozen small
kernels per call, ~45 us for ten rows of SmolLM2's 49152 logits on an H100 and ~1 ms for 160
rows (EAGLE at batch 16). An EAGLE draft calls it once per tree level. Here:

  1. the maximum of each of ``V / group`` groups of ``group`` entries (one reduction kernel);
  2. the ``k`` groups of largest maximum (a top-k over ``V / group`` entries: one block per row);
  3. the top-k over those groups' ``k * group`` entries.

Exact: if an entry ``x`` among the k largest sat in a group left out, each of the k groups kept
has a maximum >= that group's >= x, so the kept entries already hold k values >= x; by induction
over the k largest values, the kept entries' top-k values equal the row's.

Reference: ``torch.topk(x, k, dim=-1)`` (sorted). Values are identical; among exactly equal
values the returned indices may differ (torch.topk does not order ties either).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GROUP = 32  # 49152 / 32 = 1536 group maxima: under torch's multi-block top-k thresholds


def wide_topk(x: Tensor, k: int, group: int = GROUP) -> tuple[Tensor, Tensor]:
    """``x [..., V]`` -> the ``k`` largest values and their indices ``([..., k], [..., k])``,
    largest first, as ``torch.topk(x, k, dim=-1)``."""
    vocab = x.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"wide_topk: k must be in [1, {vocab}] (the last dimension); got {k}")
    groups = -(-vocab // group)
    if vocab < 1024 or k * 4 > groups:  # narrow rows (or k close to V): one pass is cheap
        return x.topk(k, dim=-1)
    lead = x.shape[:-1]
    rows = x.reshape(-1, vocab)  # [M, V]
    pad = groups * group - vocab
    if pad:  # -inf never outranks a real entry (there are >= k real ones)
        rows = F.pad(rows, (0, pad), value=float("-inf"))
    # group j holds entries j, j + G, j + 2G, ... (G = groups): a reduction over a strided axis,
    # which CUDA reduces coalesced (contiguous groups of 32 took ~54 us for 160 rows)
    best_groups = rows.view(-1, group, groups).amax(1).topk(k, dim=-1).indices  # [M, k]
    idx = (best_groups[:, :, None] + torch.arange(0, groups * group, groups, device=x.device)).view(-1, k * group)
    vals, where = rows.gather(1, idx).topk(k, dim=-1)  # [M, k] among the k * group kept entries
    return vals.view(*lead, k), idx.gather(1, where).view(*lead, k)
