"""The naive reference of EAGLE-2's default tree growth (``pool_all``): the pool and the rows grow
level by level at exact sizes (`FrontierGrowth`: `Rows`, every row re-run each level), with every
proposed child joining the pool (`expand_pooled`). test_eagle_growth.py checks that the package's
fixed-row `PooledGrowth` proposes the same trees."""
from __future__ import annotations

from torch import Tensor

from specdec.drafters.eagle.growth.frontier import FrontierGrowth
from specdec.drafters.eagle.growth.pooled import PooledGrowth
from specdec.drafters.tree_growth import Candidates


def expand_pooled(cands: Candidates, frontier: Tensor, top_lp: Tensor, top_ids: Tensor,
                  top_k: int) -> tuple[Candidates, Tensor, Tensor]:
    """One level from each frontier node's best children ``top_lp, top_ids [B, K, top_k]``: all
    ``K * top_k`` children join the pool (frontier-major), the ``top_k`` best become the frontier.
    Returns the grown pool, the new frontier ``[B, top_k]`` (pool indices) and each new frontier
    node's parent position in the old frontier ``[B, top_k]``."""
    b, k = frontier.shape
    joint = (cands.scores.gather(1, frontier)[:, :, None] + top_lp).reshape(b, k * top_k)  # [B, K * top_k]
    best = joint.topk(top_k, dim=-1).indices  # [B, top_k] flat child index = position among the new
    grown = cands.extend(top_ids.reshape(b, -1), frontier.repeat_interleave(top_k, dim=1), joint)
    return grown, cands.count + best, best // top_k


class PooledReference(FrontierGrowth):
    expand = staticmethod(expand_pooled)


def with_reference_growth(drafter):
    """``drafter`` (not loaded yet) growing its ``pool_all`` trees the reference way."""
    assert isinstance(drafter.growth, PooledGrowth), "the reference replaces pool_all growth"
    drafter.growth = PooledReference(drafter.growth.depth, drafter.growth.top_k)
    return drafter
