"""Greedy verification (temperature 0), loop-free: a child is accepted when it equals the
target's argmax at its parent and no earlier sibling has its token (ARCHITECTURE.md "Verifiers: the
rules"; only one token per parent can match, so the first matching child is the first copy of
that token). The accepted path is then the deepest node whose every ancestor (root excluded)
was accepted, found with the trees' ancestor bitmasks in O(1) kernels over ``[B, T]`` after one
argmax over the internal nodes' rows of ``[B, T, V]`` (`row_stats`). No host sync."""
from __future__ import annotations

import torch
from torch import Tensor

from .result import VerifyResult, build_result
from .row_stats import row_stats
from .tree import DraftTree


def deepest_good(tree: DraftTree, ok: Tensor) -> Tensor:  # [B] int64
    """The deepest node all of whose non-root ancestors (itself included) are ``ok [B, T]``;
    ``ok`` holds at most one child per parent and only linked nodes, so that node is unique
    (the root when none). Padding nodes have an empty ancestor mask and depth 0: they tie with
    the root, and argmax's first index picks the root."""
    ok_bits = (ok.long() << tree.node_index).sum(1) | 1  # [B]; distinct bits (sum = or), root set
    good = (tree.ancestor_mask & ~ok_bits[:, None]) == 0  # [B, T]
    return torch.where(good, tree.depth, -1).argmax(dim=1)


def verify_greedy(tree: DraftTree, logits: Tensor) -> VerifyResult:
    """``logits [B, T, V]`` of the target at every node -> the target's own greedy output."""
    target, _ = row_stats(logits, None, None, tree.num_children > 0, want_lse=False)  # [B, T]
    match = tree.first_of_token & (tree.tokens == target.gather(1, tree.parent_index))  # [B, T]
    leaf = deepest_good(tree, match)  # [B]
    bonus = logits[tree.row_index, leaf].argmax(dim=-1)  # [B]; a leaf's row was skipped above
    return build_result(tree, tree.path_to(leaf), bonus)
