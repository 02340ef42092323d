"""Greedy verification (temperature 0), loop-free: a child is accepted when it equals the
target's argmax at its parent and, among its siblings, is the first that does (DESIGN.md
"Verifiers: the rules"). The accepted path is then the deepest node whose every ancestor (root
excluded) is such a first match, found with the trees' ancestor bitmasks in O(1) kernels over
``[B, T]`` after one argmax over ``[B, T, V]``."""
from __future__ import annotations

import torch
from torch import Tensor

from .result import VerifyResult, build_result
from .tree import DraftTree


def greedy_targets(logits: Tensor) -> Tensor:  # [B, T] int64
    """The target's greedy next token after every node."""
    return logits.argmax(dim=-1)


def first_match(tree: DraftTree, match: Tensor) -> Tensor:  # [B, T] bool
    """``match [B, T]`` restricted to the first matching child of each parent (node order)."""
    batch, width = match.shape
    idx = torch.arange(width, device=match.device).expand(batch, width)
    par = tree.parents.clamp(min=0)
    first = torch.full_like(idx, width).scatter_reduce(1, par, torch.where(match, idx, width), "amin")
    return match & (first.gather(1, par) == idx)


def deepest_good(tree: DraftTree, ok: Tensor) -> Tensor:  # [B] int64
    """The deepest node all of whose non-root ancestors (itself included) are ``ok [B, T]``;
    ``ok`` holds at most one child per parent, so that node is unique (the root when none)."""
    width = tree.max_nodes
    shifts = torch.arange(width, device=ok.device)
    ok_bits = ((ok & tree.valid).long() << shifts).sum(1) | 1  # [B]; distinct bits, root set
    good = tree.valid & ((tree.ancestor_mask & ~ok_bits[:, None]) == 0)  # [B, T]
    return torch.where(good, tree.depth, -1).argmax(dim=1)


def verify_greedy(tree: DraftTree, logits: Tensor) -> VerifyResult:
    """``logits [B, T, V]`` of the target at every node -> the target's own greedy output."""
    target = greedy_targets(logits)  # [B, T]
    inner = tree.valid.clone()
    inner[:, 0] = False
    match = inner & (tree.tokens == target.gather(1, tree.parents.clamp(min=0)))
    leaf = deepest_good(tree, first_match(tree, match))  # [B]
    rows = torch.arange(tree.batch_size, device=leaf.device)
    return build_result(tree, tree.path_to(leaf), target[rows, leaf])
