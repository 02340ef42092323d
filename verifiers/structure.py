"""Sibling structure of a DraftTree for the rank-by-rank (general) verifier: each node's children
in node order, padded to the tree's ``max_children`` (a host fact, so no device read)."""
from __future__ import annotations

import torch
from torch import Tensor

from .tree import DraftTree


def children_table(tree: DraftTree) -> Tensor:  # [B, T, R] int64
    """``table[b, n, r]``: the r-th child of node n (node order), -1 padded; R = max(max_children, 1).
    A node's rank among its siblings is its count of earlier siblings."""
    batch, nodes = tree.tokens.shape
    width = max(tree.max_children, 1)
    rank = tree.earlier_siblings.sum(-1)  # [B, T] int64
    spill = nodes * width  # padding (and ranks beyond a too-small bound) write into one extra column
    slot = torch.where(tree.inner & (rank < width), tree.parent_index * width + rank, spill)  # [B, T]
    node = torch.arange(nodes, device=rank.device).expand(batch, nodes)
    table = torch.full((batch, spill + 1), -1, dtype=torch.long, device=rank.device)
    table.scatter_(1, slot, torch.where(slot < spill, node, -1))
    return table[:, :spill].view(batch, nodes, width)
