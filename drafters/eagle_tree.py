"""Draft-tree growth for EAGLE-style drafters, as pure functions over batched tensors.

Dynamic trees (EAGLE-2, Li et al. 2024, sec. 4): each level, every frontier node proposes its
``top_k`` most probable children; the ``top_k`` children of highest joint draft log-probability
become the next frontier. With ``pool_all`` every proposed child (``K * top_k`` per level) stays a
candidate for the final rerank, as in the reference implementation (``topK_genrate``: its
``scores_list`` keeps all of them); without it only the frontier does (`tree_growth.expand`).
`tree_growth.select` then keeps the best ``total_tokens`` candidates.

Static trees (EAGLE-1, Medusa): a `TreeChoices` shape; a node of rank r takes its parent's r-th most
probable child. `StaticPlan` says, per depth, which nodes to fill and which to run through the
draft (the nodes that have children).

"Rows" are the nodes a draft network runs on: they are numbered in creation order, each row's
parent row is earlier (or -1 for the root, whose feature comes from the catch-up), and
``masks [B, R]`` are their ancestor bitmasks among the rows (bit j: row j; at most 63 rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specdec.verifiers import TreeChoices

from .tree_growth import Candidates

MAX_ROWS = 63  # bits 0..62 of an int64 ancestor mask (bit 63 is the sign)


def expand_topk(cands: Candidates, frontier: Tensor, top_lp: Tensor, top_ids: Tensor, top_k: int,
                pool_all: bool = True) -> tuple[Candidates, Tensor, Tensor]:
    """One EAGLE-2 level from each frontier node's best children ``top_lp, top_ids [B, K, k]``
    (log-probs and target token ids, k >= top_k). Returns the grown pool, the new frontier
    ``[B, top_k]`` (pool indices) and each new frontier node's parent position in the old
    frontier ``[B, top_k]``."""
    b, k = frontier.shape
    child_lp, child_tok = top_lp[:, :, :top_k], top_ids[:, :, :top_k]  # [B, K, top_k]
    joint = (cands.scores.gather(1, frontier)[:, :, None] + child_lp).reshape(b, k * top_k)
    best = joint.topk(top_k, dim=-1).indices  # [B, top_k] flat child index
    slot = best // top_k  # [B, top_k]
    if pool_all:
        chosen = torch.arange(k * top_k, device=joint.device).expand(b, -1)  # every child
    else:
        chosen = best.sort(dim=-1).values
    parent = frontier.gather(1, chosen // top_k)  # [B, C] pool index of each kept child's parent
    tokens = child_tok.reshape(b, -1).gather(1, chosen)
    scores = joint.gather(1, chosen)
    depth = cands.depth.gather(1, parent) + 1
    first = cands.count
    grown = Candidates(torch.cat([cands.tokens, tokens], 1), torch.cat([cands.parents, parent], 1),
                       torch.cat([cands.scores, scores], 1), torch.cat([cands.depth, depth], 1))
    position = best if pool_all else torch.searchsorted(chosen, best)  # [B, top_k] within `chosen`
    return grown, first + position, slot


def pool_level(score: Tensor, top_lp: Tensor, top_ids: Tensor) -> tuple[Tensor, Tensor]:
    """The children a level pools (``pool_all``): frontier joint log-probs ``score [B, K]`` and each
    frontier node's best children ``top_lp, top_ids [B, K, k]`` -> the children's joint log-probs
    and tokens ``[B, K * k]`` (frontier-major, as `expand_topk` pools them)."""
    b = score.shape[0]
    return (score[:, :, None] + top_lp).reshape(b, -1), top_ids.reshape(b, -1)


def next_frontier(joint: Tensor, tokens: Tensor, masks: Tensor, own: Tensor, width: int):
    """The ``width`` best pooled children become the next frontier, and draft rows: from a level's
    ``joint, tokens [B, K * k]`` (`pool_level`, k = ``width``) and the frontier rows' ancestor masks
    ``masks [B, K]`` (0 for the root), with the new rows' own bits ``own [width]``. Returns their
    flat child indices ``best`` (their positions in the level's pool), joint log-probs, tokens,
    frontier slots (``best // width``: the parent row among the old frontier) and ancestor masks,
    each ``[B, width]``. `expand_topk` + `append_rows` in a handful of kernels."""
    score, best = joint.topk(width, dim=-1)  # [B, width]
    slot = best // width
    return best, score, tokens.gather(1, best), slot, masks.gather(1, slot) | own


def pooled_candidates(roots: Tensor, joints: list[Tensor], tokens: list[Tensor], bests: list[Tensor],
                      width: int) -> Candidates:
    """The candidate pool of a dynamic tree grown by `pool_level` / `next_frontier`, in
    `expand_topk`'s creation order: the root, then every level's pooled children. Level 0's
    parent is the root; a child of level l >= 1 has parent ``first[l - 1] + best[l - 1][j // width]``
    (its frontier node's position in the previous level's pool). Depths are left as zeros: `select`
    does not read them."""
    b, dev = roots.shape[0], roots.device
    sizes = [t.shape[1] for t in tokens]
    firsts = [1 + sum(sizes[:i]) for i in range(len(sizes))]  # host ints: a graph copies no host data
    parents = [torch.arange(-1, sizes[0], device=dev).clamp(max=0).expand(b, -1)]  # root -1, level 0: 0
    if len(tokens) > 1:
        inner = torch.stack([best + first for best, first in zip(bests, firsts)], 1)  # [B, D - 1, width]
        parents.append(inner[:, :, :, None].expand(-1, -1, -1, width).reshape(b, -1))
    zero = torch.zeros(b, 1, dtype=joints[0].dtype, device=dev)
    all_tokens = torch.cat([roots.view(b, 1).long()] + tokens, 1)
    return Candidates(all_tokens, torch.cat(parents, 1), torch.cat([zero] + joints, 1),
                      torch.zeros_like(all_tokens))


def append_rows(masks: Tensor, parent_row: Tensor) -> Tensor:
    """Ancestor masks of new rows (``parent_row [B, n]``, -1 = child of the root) appended after
    the ``masks [B, R]`` rows: ``[B, R + n]``."""
    b, r = masks.shape
    n = parent_row.shape[1]
    if r + n > MAX_ROWS:
        raise ValueError(f"a draft forward over {r + n} tree nodes exceeds {MAX_ROWS}: lower depth or top_k")
    own = torch.ones((), dtype=torch.long, device=masks.device) << torch.arange(r, r + n, device=masks.device)
    inherited = torch.where(parent_row >= 0, masks.gather(1, parent_row.clamp(min=0)) if r else 0, 0)
    return torch.cat([masks, own.expand(b, n) | inherited], 1)


@dataclass
class StaticPlan:
    """A static tree's growth plan (node order of `TreeChoices`: root first, by depth)."""
    choices: TreeChoices
    levels: list[list[int]]  # [depth - 1] -> node indices at that depth (1-based depths)
    rows: list[int]  # nodes with children, excluding the root, in node order (the draft's rows)
    width: int  # most children of any node (= 1 + the largest rank)

    @classmethod
    def build(cls, choices) -> "StaticPlan":
        tc = choices if isinstance(choices, TreeChoices) else TreeChoices(choices)
        levels = [[n for n in range(1, tc.num_nodes) if tc.depths[n] == d] for d in range(1, tc.max_depth + 1)]
        has_child = set(tc.parents[1:])
        rows = [n for n in range(1, tc.num_nodes) if n in has_child]
        if len(rows) > MAX_ROWS:
            raise ValueError(f"the tree has {len(rows)} inner nodes; the draft runs at most {MAX_ROWS}")
        return cls(tc, levels, rows, max(tc.ranks[1:]) + 1)

    def row_of(self, node: int) -> int:
        """The draft row of a node with children (-1 for the root)."""
        return -1 if node == 0 else self.rows.index(node)

    def rows_through(self, depth: int) -> list[int]:
        """Rows (nodes with children) of depth <= ``depth``: a prefix of ``rows``."""
        return [n for n in self.rows if self.choices.depths[n] <= depth]
