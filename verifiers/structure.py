"""Sibling structure of a DraftTree, computed once per verification: each node's children in
node order, which siblings repeat an earlier sibling's token, and the per-depth facts the host
loop needs (read in one device-to-host transfer)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .tree import CandidateKind, DraftTree


@dataclass
class Siblings:
    children: Tensor  # [B, T, R] node indices of each node's children in node order, -1 padded
    first_of_token: Tensor  # [B, T] bool: a non-root node whose token no earlier sibling has
    width_at_depth: list[int]  # [D + 1] most children of any node at depth d (0 at depth D)
    random_at_depth: list[bool]  # [D + 1] some child of a depth-d node is SAMPLED*
    max_depth: int


def siblings(tree: DraftTree, deterministic_rows: Tensor | None = None) -> Siblings:
    """``deterministic_rows [B]`` (e.g. greedy rows) count as DETERMINISTIC whatever their kind."""
    batch, width = tree.tokens.shape
    dev = tree.tokens.device
    idx = torch.arange(width, device=dev)
    inner = tree.valid & (idx > 0)  # [B, T]
    par, tok = tree.parents, tree.tokens
    vocab = int(tok.max()) + 1 if tok.numel() else 1
    rank, _ = group_rank(torch.where(inner, par, -1 - idx))  # [B, T] earlier siblings
    _, first = group_rank(torch.where(inner, par * vocab + tok, -1 - idx))
    first &= inner  # [B, T] no earlier sibling has this token
    count = tree.num_children  # [B, T]
    random = (tree.kind != CandidateKind.DETERMINISTIC) & inner  # [B, T]
    if deterministic_rows is not None:
        random &= ~deterministic_rows[:, None]
    host = _depth_summary(tree, count, random)
    depth = max(d for d in range(width) if host[2][d] > 0)
    widths = [int(w) for w in host[0][: depth + 1]]
    randoms = [bool(r) for r in host[1][: depth + 1]]
    children = _children_table(par, inner, rank, max(max(widths), 1))
    return Siblings(children, first, widths, randoms, depth)


def _depth_summary(tree: DraftTree, count: Tensor, random: Tensor) -> list[list[float]]:
    """Per depth d: most children of a node at depth d, whether a child of such a node is of a
    random kind, and how many nodes sit at depth d — one transfer."""
    width = tree.max_nodes
    depth = tree.depth  # [B, T]
    par_depth = (depth - 1).clamp(min=0)  # a child's parent's depth
    valid = tree.valid
    out = torch.zeros(3, width, device=depth.device)
    out[0].scatter_reduce_(0, depth.flatten(), torch.where(valid, count, 0).flatten().float(), "amax")
    out[1].scatter_reduce_(0, par_depth.flatten(), random.flatten().float(), "amax")
    out[2].scatter_add_(0, depth.flatten(), valid.flatten().float())
    return out.tolist()


def _children_table(par: Tensor, inner: Tensor, rank: Tensor, width: int) -> Tensor:  # [B, T, R]
    batch, nodes = par.shape
    spill = nodes * width  # padding nodes write -1 into one extra column
    slot = torch.where(inner, par.clamp(min=0) * width + rank, spill)  # [B, T]
    node = torch.arange(nodes, device=par.device).expand(batch, nodes)
    table = torch.full((batch, spill + 1), -1, dtype=torch.long, device=par.device)
    table.scatter_(1, slot, torch.where(inner, node, -1))
    return table[:, :spill].view(batch, nodes, width)


def group_rank(key: Tensor) -> tuple[Tensor, Tensor]:
    """For ``key [B, T]``: each node's rank among the earlier nodes of equal key (node order),
    and whether it is the first of its key. Two [B, T] sorts instead of a [B, T, T] compare."""
    batch, width = key.shape
    sorted_key, order = key.sort(dim=1, stable=True)  # ties keep node order
    starts = torch.ones_like(sorted_key, dtype=torch.bool)
    starts[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    pos = torch.arange(width, device=key.device).expand(batch, width)
    start_pos = torch.where(starts, pos, 0).cummax(dim=1).values
    rank = torch.empty_like(order).scatter_(1, order, pos - start_pos)
    first = torch.empty_like(starts).scatter_(1, order, starts)
    return rank, first
