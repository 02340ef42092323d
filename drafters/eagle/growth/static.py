"""Static trees (EAGLE-1, and Medusa's tree shapes): a `TreeChoices` shape in which a node of rank
r takes its parent's r-th most probable child. `StaticPlan` says, per depth, which nodes to fill
and which to run through the draft (the nodes that have children); `StaticGrowth` fills the tree
level by level.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specdec.verifiers import TreeChoices

from .rows import MAX_ROWS, Rows


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


class StaticLevel:
    """A static tree's depth as device index tensors (built once: a graph cannot build them)."""

    def __init__(self, plan: StaticPlan, depth: int, device) -> None:
        tc = plan.choices
        level = plan.levels[depth - 1]
        as_t = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
        self.nodes = as_t(level)  # [n] the nodes at this depth
        self.parent_index = as_t([1 + plan.row_of(tc.parents[n]) for n in level])  # [n] into `best`
        self.rank = as_t([tc.ranks[n] for n in level])  # [n]
        new = [n for n in plan.rows if tc.depths[n] == depth]
        run = bool(new) and depth != tc.max_depth
        self.rows = as_t(new) if run else None  # [r] nodes run through the draft at this depth
        self.parent_row = as_t([plan.row_of(tc.parents[n]) for n in new]) if run else None  # [r]


class StaticGrowth:
    """Fills a static tree: every node of depth d takes its rank among its parent's best
    children, and the nodes of depth d with children run through the draft for depth d + 1."""

    def __init__(self, choices) -> None:
        self.plan = StaticPlan.build(choices)
        self.depth = self.plan.choices.max_depth
        self.width = self.plan.width  # children the root is asked for
        self.max_rows = len(self.plan.rows)

    def prepare(self, device) -> None:
        self.levels = [StaticLevel(self.plan, d, device) for d in range(1, self.depth + 1)]
        self.parents = torch.tensor(self.plan.choices.parents, device=device)  # [T]
        for lv in self.levels:
            lv.node_parent = self.parents[lv.nodes]  # [n]

    def grow(self, roots: Tensor, root_lp: Tensor, root_ids: Tensor, keep: int, forward,
             children) -> tuple[Tensor, Tensor, Tensor]:
        """``roots [B]``, ``root_lp, root_ids [B, width]`` the root's best children (``keep``
        unused: every node is kept). Returns tokens, parents and joint draft log-probs ``[B, T]``
        (`TreeChoices` order: by depth)."""
        b, num_nodes = roots.shape[0], self.plan.choices.num_nodes
        tokens = torch.zeros(b, num_nodes, dtype=torch.long, device=roots.device)
        scores = torch.zeros(b, num_nodes, dtype=root_lp.dtype, device=roots.device)
        tokens[:, 0] = roots
        best = root_ids[:, None]  # [B, 1 + rows so far, width]: index 0 = root, 1 + r = row r
        best_lp = root_lp[:, None]  # [B, 1 + rows so far, width] their draft log-probs
        rows = Rows.empty(b, roots.device)
        out = None
        for d, lv in enumerate(self.levels, start=1):
            tokens[:, lv.nodes] = best[:, lv.parent_index, lv.rank]
            scores[:, lv.nodes] = scores[:, lv.node_parent] + best_lp[:, lv.parent_index, lv.rank]
            if lv.rows is None:
                continue
            rows.add(tokens[:, lv.rows], lv.parent_row.expand(b, -1), d)
            out = forward.rows(rows, out)  # [B, R, h]
            lp, ids = children(out[:, -lv.rows.shape[0]:], self.width)
            best, best_lp = torch.cat([best, ids], 1), torch.cat([best_lp, lp], 1)
        return tokens, self.parents.expand(b, -1).clone(), scores
