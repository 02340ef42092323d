"""Draft-tree growth for the EAGLE drafters, batched over sequences: one grower per tree kind,
each a small class with the same face

    depth, width, max_rows        tree depth, children asked of the root, rows a forward may run
    prepare(device)               device index tensors, built once (a CUDA graph cannot build them)
    grow(roots [B], root_lp, root_ids [B, width], keep, forward, children) -> tokens, parents

``forward`` runs the draft over tree rows (`draft.TreeForward`), ``children(out [..., h], k)``
gives the draft log-probs and target ids of the ``k`` best next tokens ``[..., k]``. Neither reads
anything back to the host: the growth is part of what a CUDA graph replays.

  * static.py: EAGLE-1, a fixed `TreeChoices` shape;
  * pooled.py: EAGLE-2 with every proposed child a candidate (``pool_all``, the default);
  * frontier.py: EAGLE-2 with only the frontiers as candidates (``pool_all: false``);
  * rows.py: the rows a forward runs and their ancestor masks.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .frontier import FrontierGrowth
from .pooled import PooledGrowth
from .rows import MAX_ROWS
from .static import StaticGrowth


def make_growth(name: str, total_tokens, depth: int, top_k: int,
                tree_choices: Optional[Sequence[Sequence[int]]], pool_all: bool):
    """The grower of drafter ``name``: a static tree from ``tree_choices``, else a dynamic one."""
    if tree_choices:
        return StaticGrowth(tree_choices)
    check_dynamic(name, total_tokens, depth, top_k)
    # candidates a tree of this shape proposes: the root, then top_k per level (frontier only)
    # or top_k children of each of the top_k frontier nodes below the first level (pooled)
    count = 1 + top_k + (depth - 1) * top_k * (top_k if pool_all else 1)
    if total_tokens != "auto" and total_tokens > count:
        raise ValueError(f"{name}: total_tokens={total_tokens} exceeds the {count} candidates that "
                         f"depth={depth}, top_k={top_k}, pool_all={pool_all} propose; lower "
                         f"total_tokens or raise depth / top_k")
    return PooledGrowth(depth, top_k) if pool_all else FrontierGrowth(depth, top_k)


def check_dynamic(name: str, total_tokens, depth: int, top_k: int) -> None:
    if total_tokens != "auto" and not (isinstance(total_tokens, int) and 2 <= total_tokens <= 64):
        raise ValueError(f"{name}: total_tokens (tree budget incl. the root) must be an int in "
                         f"[2, 64] or 'auto'; got {total_tokens!r}")
    if depth < 1 or top_k < 1:
        raise ValueError(f"{name}: depth and top_k must be >= 1; got depth={depth}, top_k={top_k}")
    if (depth - 1) * top_k > MAX_ROWS:
        raise ValueError(f"{name}: depth {depth} and top_k {top_k} run (depth - 1) * top_k = "
                         f"{(depth - 1) * top_k} tree nodes through the draft; at most {MAX_ROWS} fit "
                         f"an ancestor bitmask")
