"""Typical acceptance (Medusa, Cai et al., 2024, section 3.3.1; FasterDecoding/Medusa
``evaluate_posterior`` and ``get_typical_one_token``). LOSSY BY DESIGN: the output does not
follow the target's distribution; check_lossless fails it, as it should.

With p_n the target distribution at node n (`processed_probs`: temperature, then top-k and
top-p, which Medusa does not have; with both off this is Medusa's rule) and
``threshold(n) = min(posterior_threshold, posterior_alpha * exp(-H(p_n)))`` (H with Medusa's
log(p + 1e-5)):
  * a child i of n passes when ``p_n(token_i) > threshold(n)``;
  * the accepted node is the deepest one whose whole path passes; ties in depth go to the path
    of highest likelihood (sum of log p over the path), as Medusa picks among its candidates;
  * the bonus token is drawn from p at the accepted node with tokens below its threshold removed.
Rows with temperature 0 use the greedy rule, as Medusa does.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .greedy import verify_greedy
from .probs import RowParams, _processed, sample_from_probs
from .result import VerifyResult, build_result
from .tree import DraftTree, _mask_bits

CHUNK_ELEMENTS = 1 << 25  # bound on [B, nodes, V] float32 held at once (128 MiB)


def verify_typical(tree: DraftTree, logits: Tensor, params: RowParams, uniforms: Tensor,
                   posterior_threshold: float = 0.09, posterior_alpha: float = 0.3) -> VerifyResult:
    """``logits [B, T, V]``; ``uniforms[:, 0]`` draws the bonus token."""
    greedy = verify_greedy(tree, logits) if params.any_greedy else None
    if params.all_greedy:
        return greedy
    child_p, thr = _node_stats(tree, logits, params, posterior_threshold, posterior_alpha)
    par = tree.parents.clamp(min=0)
    inner = tree.valid & (torch.arange(tree.max_nodes, device=par.device) > 0)
    ok = inner & (child_p > thr.gather(1, par))  # [B, T]
    leaf = _best_leaf(tree, ok, child_p)  # [B]
    rows = torch.arange(tree.batch_size, device=leaf.device)
    p_leaf = _processed(logits[rows, leaf], params)  # [B, V]
    bonus = sample_from_probs(torch.where(p_leaf >= thr[rows, leaf, None], p_leaf, 0.0), uniforms[:, 0])
    result = build_result(tree, tree.path_to(leaf), bonus)
    return result if greedy is None else _pick_rows(params.greedy, greedy, result)


def _node_stats(tree: DraftTree, logits: Tensor, params: RowParams, eps: float,
                alpha: float) -> tuple[Tensor, Tensor]:
    """``child_p [B, T]``: p at node i's parent of node i's token; ``thr [B, T]``: each node's
    typical threshold. Chunked over nodes to bound memory."""
    batch, width, vocab = logits.shape
    par = tree.parents.clamp(min=0)  # [B, T]
    child_p = torch.zeros(batch, width, device=logits.device)
    thr = torch.zeros(batch, width, device=logits.device)
    step = max(1, CHUNK_ELEMENTS // max(1, batch * vocab))
    for t0 in range(0, width, step):
        t1 = min(width, t0 + step)
        p = _processed(logits[:, t0:t1].reshape(-1, vocab), params.repeat(t1 - t0))
        p = p.view(batch, t1 - t0, vocab)  # [B, c, V]
        entropy = -(p * torch.log(p + 1e-5)).sum(-1)  # [B, c]
        thr[:, t0:t1] = torch.minimum(torch.full_like(entropy, eps), alpha * torch.exp(-entropy))
        at_child = p.gather(2, tree.tokens[:, None, :].expand(batch, t1 - t0, width))  # [B, c, T]
        in_chunk = (par >= t0) & (par < t1)
        picked = at_child.gather(1, (par - t0).clamp(0, t1 - t0 - 1)[:, None, :])[:, 0]  # [B, T]
        child_p = torch.where(in_chunk, picked, child_p)
    return child_p, thr


def _best_leaf(tree: DraftTree, ok: Tensor, child_p: Tensor) -> Tensor:  # [B]
    """Deepest node whose path passes; ties by path log-likelihood."""
    shifts = torch.arange(tree.max_nodes, device=ok.device)
    ok_bits = (ok.long() << shifts).sum(1) | 1  # [B]
    good = tree.valid & ((tree.ancestor_mask & ~ok_bits[:, None]) == 0)  # [B, T]
    batch, width = ok.shape
    on_path = _mask_bits(tree.ancestor_mask.reshape(-1), width).view(batch, width, width)  # [B, i, j]
    logp = torch.where(ok, torch.log(child_p.clamp(min=1e-30)), 0.0)  # [B, T]
    loglik = (on_path.float() * logp[:, None, :]).sum(-1)  # [B, T]
    depth = torch.where(good, tree.depth, -1)
    deepest = good & (depth == depth.max(1, keepdim=True).values)
    return torch.where(deepest, loglik, float("-inf")).argmax(1)


def _pick_rows(use_first: Tensor, first: VerifyResult, second: VerifyResult) -> VerifyResult:
    """Row-wise choice between two results of one tree batch."""
    pick = lambda a, b: torch.where(use_first.view(-1, *[1] * (a.dim() - 1)), a, b)  # noqa: E731
    return VerifyResult(*(pick(getattr(first, f), getattr(second, f)) for f in
                          ("accepted_nodes", "num_accepted", "bonus_token", "accepted_tokens",
                           "depth_attempted", "depth_accepted")))
