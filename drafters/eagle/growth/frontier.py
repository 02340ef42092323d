"""Dynamic trees that pool only their frontiers (``pool_all: false``; EAGLE-2, Li et al. 2024,
sec. 4): each level, every frontier node proposes its ``top_k`` most probable children, the
``top_k`` children of highest joint draft log-probability become the next frontier and the only
new candidates; `tree_growth.select` then keeps the best ``total_tokens`` of them. The rows grow
at exact sizes (`Rows`) and each level runs them all.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...tree_growth import Candidates, select
from .rows import Rows


def expand_topk(cands: Candidates, frontier: Tensor, top_lp: Tensor, top_ids: Tensor,
                top_k: int) -> tuple[Candidates, Tensor, Tensor]:
    """One level from each frontier node's best children ``top_lp, top_ids [B, K, top_k]``
    (log-probs and target token ids; ``frontier [B, K]`` pool indices). The ``top_k`` best
    children join the pool in flat child order. Returns the grown pool, the new frontier
    ``[B, top_k]`` (pool indices, best first) and each new frontier node's parent position in the
    old frontier ``[B, top_k]``."""
    b, k = frontier.shape
    joint = (cands.scores.gather(1, frontier)[:, :, None] + top_lp).reshape(b, k * top_k)  # [B, K * top_k]
    best = joint.topk(top_k, dim=-1).indices  # [B, top_k] flat child index
    chosen = best.sort(dim=-1).values  # [B, top_k] the same children in pool order
    grown = cands.extend(top_ids.reshape(b, -1).gather(1, chosen), frontier.gather(1, chosen // top_k),
                         joint.gather(1, chosen))
    return grown, cands.count + torch.searchsorted(chosen, best), best // top_k


class FrontierGrowth:
    """Grows a dynamic tree level by level through ``expand`` (`expand_topk`: the frontier alone
    joins the pool); the frontier's rows run through the draft for the next level."""
    expand = staticmethod(expand_topk)

    def __init__(self, depth: int, top_k: int) -> None:
        self.depth, self.top_k = depth, top_k
        self.width = top_k  # children the root is asked for
        self.max_rows = (depth - 1) * top_k  # every level but the last adds top_k rows

    def prepare(self, device) -> None:
        pass

    def grow(self, roots: Tensor, root_lp: Tensor, root_ids: Tensor, keep: int, forward,
             children) -> tuple[Tensor, Tensor, Tensor]:
        """``roots [B]``, ``root_lp, root_ids [B, top_k]`` the root's best children. Returns the
        ``keep`` best candidates' tokens, parents and joint log-probs ``[B, keep]``, best first."""
        b, dev = roots.shape[0], roots.device
        cands = Candidates.start(roots)
        frontier = torch.zeros(b, 1, dtype=torch.long, device=dev)  # [B, K] pool indices
        top_lp, top_ids = root_lp[:, None], root_ids[:, None]  # [B, K, top_k]
        rows = Rows.empty(b, dev)
        out = None
        for level in range(self.depth):
            cands, frontier, slot = self.expand(cands, frontier, top_lp, top_ids, self.top_k)
            if level + 1 == self.depth:
                break
            parent_row = slot + (level - 1) * self.top_k if level else torch.full_like(slot, -1)
            rows.add(cands.tokens.gather(1, frontier), parent_row, level + 1)
            out = forward.rows(rows, out)  # [B, R, h]
            top_lp, top_ids = children(out[:, -self.top_k:], self.top_k)  # [B, top_k, top_k]
        tokens, parents, _, scores = select(cands, keep, check=False)
        return tokens, parents, scores
