"""DraftTree: a batch of draft token trees, padded to a common node count T (<= 64).

Node 0 of every tree is the root: the last token already sampled for that sequence (its K/V is not
yet cached). Nodes are topologically ordered (``parents[b, i] < i``), so a chain is the tree whose
parents are ``i - 1``. A node at depth d sits at position ``context_len - 1 + d`` where
``context_len`` counts every token of the sequence including the root.

Candidate kinds say how a node was chosen among its siblings; lossless verification needs it
(DESIGN.md "Verifiers: the rules"):
  * DETERMINISTIC: picked without randomness (top-k, static trees) -> accept with prob p(c);
  * SAMPLED: drawn i.i.d. from the draft distribution q at its parent -> accept with min(1, p/q);
  * SAMPLED_NO_REPLACEMENT: drawn from q at its parent without replacement among its siblings.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Optional, Sequence

import torch
from torch import Tensor

MAX_NODES = 64  # one uint64 ancestor bitmask per node


class CandidateKind(IntEnum):
    DETERMINISTIC = 0
    SAMPLED = 1
    SAMPLED_NO_REPLACEMENT = 2


@dataclass
class DraftTree:
    tokens: Tensor  # [B, T] int64; padding nodes hold 0
    parents: Tensor  # [B, T] int64; -1 for the root and for padding
    num_nodes: Tensor  # [B] int64, 1 <= num_nodes <= T
    kind: Optional[Tensor] = None  # [B, T] int8 CandidateKind per node (None: all DETERMINISTIC)
    draft_probs: Optional[Tensor] = None  # [B, T, V] q at node t, the law of t's sampled children

    def __post_init__(self) -> None:
        validate_tree(self.tokens, self.parents, self.num_nodes)
        if self.kind is None:
            self.kind = torch.zeros_like(self.tokens, dtype=torch.int8)
        self.depth, self.ancestor_mask = _depth_and_mask(self.parents, self.num_nodes)

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_nodes(self) -> int:
        return self.tokens.shape[1]

    @property
    def valid(self) -> Tensor:  # [B, T] bool
        return torch.arange(self.max_nodes, device=self.tokens.device) < self.num_nodes[:, None]

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    def positions(self, context_lens: Tensor) -> Tensor:  # [B, T] int64
        """Position ids of the nodes; ``context_lens`` [B] counts the root."""
        return context_lens[:, None].long() - 1 + self.depth

    @classmethod
    def from_lists(cls, tokens: Sequence[Sequence[int]], parents: Sequence[Sequence[int]],
                   device=None, **extra) -> "DraftTree":
        """Build a padded batch from per-sequence token and parent lists (root parent -1)."""
        if len(tokens) != len(parents):
            raise ValueError(f"{len(tokens)} token lists but {len(parents)} parent lists")
        width = max((len(t) for t in tokens), default=0)
        tok = torch.zeros(len(tokens), max(width, 1), dtype=torch.long)
        par = torch.full_like(tok, -1)
        for b, (t, p) in enumerate(zip(tokens, parents)):
            if len(t) != len(p):
                raise ValueError(f"sequence {b}: {len(t)} tokens but {len(p)} parents")
            tok[b, : len(t)] = torch.tensor(t, dtype=torch.long)
            par[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        num = torch.tensor([len(t) for t in tokens], dtype=torch.long)
        return cls(tok.to(device), par.to(device), num.to(device), **extra)

    @classmethod
    def chains(cls, tokens: Tensor, num_nodes: Optional[Tensor] = None, **extra) -> "DraftTree":
        """Chains from ``tokens [B, T]`` (root first); ``num_nodes [B]`` defaults to T."""
        batch, width = tokens.shape
        parents = torch.arange(-1, width - 1, device=tokens.device).expand(batch, width).clone()
        if num_nodes is None:
            num_nodes = torch.full((batch,), width, dtype=torch.long, device=tokens.device)
        parents[torch.arange(width, device=tokens.device) >= num_nodes[:, None]] = -1
        return cls(tokens.long(), parents, num_nodes.long(), **extra)

    @classmethod
    def roots(cls, tokens: Tensor) -> "DraftTree":
        """Trees of one node (autoregressive decoding): ``tokens [B]``."""
        return cls.chains(tokens.view(-1, 1))


def validate_tree(tokens: Tensor, parents: Tensor, num_nodes: Tensor) -> None:
    """Raise ValueError on shapes, sizes or parent orders that no tree can have."""
    if tokens.dim() != 2 or parents.shape != tokens.shape:
        raise ValueError(f"tokens and parents must both be [B, T]; got {tuple(tokens.shape)} "
                         f"and {tuple(parents.shape)}")
    batch, width = tokens.shape
    if width > MAX_NODES:
        raise ValueError(f"draft trees hold at most {MAX_NODES} nodes (one uint64 ancestor "
                         f"bitmask per node); got T = {width}. Lower the drafter's node budget.")
    if num_nodes.shape != (batch,):
        raise ValueError(f"num_nodes must be [B] = [{batch}]; got {tuple(num_nodes.shape)}")
    if batch and (int(num_nodes.min()) < 1 or int(num_nodes.max()) > width):
        raise ValueError(f"num_nodes must lie in [1, T={width}]; got {num_nodes.tolist()}")
    idx = torch.arange(width, device=tokens.device)
    valid = idx < num_nodes[:, None]
    inner = valid & (idx > 0)
    bad = inner & ((parents < 0) | (parents >= idx))
    if bool((parents[:, 0] != -1).any()):
        raise ValueError("node 0 is the root: parents[:, 0] must be -1")
    if bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"parents must be topologically ordered (0 <= parents[b, i] < i): "
                         f"sequence {b}, node {i} has parent {int(parents[b, i])}")


def _depth_and_mask(parents: Tensor, num_nodes: Tensor) -> tuple[Tensor, Tensor]:
    """``depth [B, T]`` (root 0, padding 0) and ``ancestor_mask [B, T]`` int64 (bit j of node i set
    iff j is i or an ancestor of i; padding 0). A loop over nodes, vectorised over the batch."""
    batch, width = parents.shape
    depth = torch.zeros_like(parents)
    mask = torch.zeros_like(parents)
    valid = torch.arange(width, device=parents.device) < num_nodes[:, None]
    rows = torch.arange(batch, device=parents.device)
    one = torch.ones((), dtype=torch.long, device=parents.device)
    for i in range(width):
        par = parents[:, i].clamp(min=0)
        has_parent = parents[:, i] >= 0
        depth[:, i] = torch.where(has_parent, depth[rows, par] + 1, 0)
        inherited = torch.where(has_parent, mask[rows, par], 0)
        mask[:, i] = torch.where(valid[:, i], inherited | (one << i), 0)
    return depth, mask
