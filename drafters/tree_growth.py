"""Dynamic draft trees grown by top-k expansion and reranked by cumulative draft log-probability
(EAGLE-2, Li et al. 2024, "dynamic draft trees": expand the top_k most probable frontier nodes per
level, then keep the ``budget`` nodes of highest joint draft probability). Pure tensor functions,
batched over sequences; the drafter supplies the log-probabilities of each frontier.

Node bookkeeping: candidates are numbered in creation order (0 = root), so a candidate's parent
always has a smaller number. `select` returns the kept nodes best first: a child never outscores
its parent, so that order is topological too, and every prefix of it is the best subtree of its
size (a speculation policy cuts a tree to a budget by keeping a prefix).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Candidates:
    tokens: Tensor  # [B, M] creation order, 0 = root
    parents: Tensor  # [B, M] candidate index of the parent, -1 for the root
    scores: Tensor  # [B, M] cumulative draft log-probability (root 0)
    depth: Tensor  # [B, M]

    @classmethod
    def start(cls, roots: Tensor) -> "Candidates":  # roots [B]
        b = roots.shape[0]
        zeros = torch.zeros(b, 1, dtype=torch.long, device=roots.device)
        return cls(roots.view(b, 1).long(), zeros - 1, zeros.float(), zeros)

    @property
    def count(self) -> int:
        return self.tokens.shape[1]

    def extend(self, tokens: Tensor, parents: Tensor, scores: Tensor) -> "Candidates":
        """The pool with new candidates ``tokens, parents, scores [B, n]`` (parents: their pool
        indices) appended after the others, one level below their parents."""
        depth = self.depth.gather(1, parents) + 1
        return Candidates(torch.cat([self.tokens, tokens], 1), torch.cat([self.parents, parents], 1),
                          torch.cat([self.scores, scores], 1), torch.cat([self.depth, depth], 1))


def expand(cands: Candidates, frontier: Tensor, logprobs: Tensor, top_k: int) -> tuple[Candidates, Tensor]:
    """Add the ``top_k`` best children over the whole frontier (each frontier node proposes its own
    top_k; the best top_k of those K * top_k survive). ``frontier`` [B, K] candidate indices,
    ``logprobs`` [B, K, V]. Returns the grown candidates and the new frontier [B, top_k]."""
    b, k, _ = logprobs.shape
    child_lp, child_tok = logprobs.topk(top_k, dim=-1)  # [B, K, top_k]
    parent_score = cands.scores.gather(1, frontier)  # [B, K]
    joint = (parent_score[:, :, None] + child_lp).view(b, k * top_k)
    best, flat = joint.topk(top_k, dim=-1)  # [B, top_k]
    parent = frontier.gather(1, flat // top_k)  # [B, top_k]
    tokens = child_tok.view(b, k * top_k).gather(1, flat)
    first = cands.count
    new_frontier = torch.arange(first, first + top_k, device=tokens.device).expand(b, top_k)
    return cands.extend(tokens, parent, best), new_frontier


def select(cands: Candidates, budget: int, check: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Keep the root and the ``budget - 1`` best other candidates by joint log-probability, best
    first. A child never outscores its parent (log q <= 0) and ties favour the older node, so
    every prefix of the kept list contains its nodes' ancestors, parents before children.
    Returns tokens, parents [B, n] with parents renumbered into the kept list (n = min(budget,
    M)), the kept candidate indices and their scores [B, n]. ``check=False`` skips the ancestor
    check (a host read; CUDA graphs)."""
    b, m = cands.tokens.shape
    n = min(budget, m)
    order = torch.arange(m, device=cands.tokens.device)
    key = cands.scores.masked_fill(order == 0, float("inf"))  # the root always stays
    ranked = key.sort(dim=-1, descending=True, stable=True).indices  # ties: older first
    kept = ranked[:, :n]  # [B, n] best first
    new_index = torch.full((b, m), -1, dtype=torch.long, device=kept.device)
    new_index.scatter_(1, kept, torch.arange(n, device=kept.device).expand(b, n))
    old_parent = cands.parents.gather(1, kept)  # [B, n]
    parents = torch.where(old_parent >= 0, new_index.gather(1, old_parent.clamp(min=0)), -1)
    if check and bool((parents[:, 1:] < 0).any()):
        raise AssertionError("dynamic tree selection dropped an ancestor of a kept node")
    return cands.tokens.gather(1, kept), parents, kept, cands.scores.gather(1, kept)
