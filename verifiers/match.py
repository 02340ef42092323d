"""Exact-match verification (``engine.exact=true``): the target draws every position's token
itself — the inverse-CDF draw (`sample_from_probs`) from `processed_probs` with the uniform of
that position — and a draft node is accepted when its token equals the draw at its parent.

The emitted tokens are then exactly those of autoregressive sampling fed the same per-position
uniforms (``uniforms[b, d]`` draws the token after depth d: the engine keys it by the request's
seed and that position), whatever the drafter proposed: the drafter decides only how many of them
one step emits. Lossless by construction. Against rejection sampling (`verify_tree`) it accepts as
often for top-k (DETERMINISTIC) trees — a node's children are accepted with total probability
p(children) under both — and less for drafts sampled from q (p(x) instead of min(1, p(x)/q(x))).
At temperature 0 it is the greedy walk.
"""
from __future__ import annotations

from torch import Tensor

from .greedy import deepest_good
from .probs import RowParams, processed_probs, sample_from_probs
from .result import VerifyResult, build_result
from .tree import DraftTree


def verify_match(tree: DraftTree, logits: Tensor, params: RowParams, uniforms: Tensor) -> VerifyResult:
    """``logits [B, T, V]``, ``params`` per row, ``uniforms [B, > max depth]`` (column d: the
    draw after a node of depth d) -> the accepted path and the bonus (the draw at its end)."""
    b, t, v = logits.shape
    probs = processed_probs(logits, params=params)  # [B, T, V]; greedy rows: the argmax's point mass
    u = uniforms.gather(1, tree.depth)  # [B, T] each node's position's uniform
    draws = sample_from_probs(probs.view(b * t, v), u.reshape(-1)).view(b, t)  # [B, T]
    match = tree.first_of_token & (tree.tokens == draws.gather(1, tree.parent_index))  # [B, T]
    leaf = deepest_good(tree, match)  # [B]
    return build_result(tree, tree.path_to(leaf), draws[tree.row_index, leaf])
