"""The processed target distribution p_n (`processed_probs`: temperature, then top-k, then
top-p) at the nodes of a tree batch, without materialising a ``[B, T, V]`` softmax.

Batched mode (no row uses top-p without top-k, i.e. ``filter_cap < V``), for all nodes at once:
  * thresholds: one ``topk(K)`` over the ``[B * T, V]`` logits (K = the plan's filter cap),
    the top-k threshold from it, one pass of `row_stats` for the log-sum-exp of the top-k kept
    set, and top-p decided on the K survivors (tie classes kept whole, as `processed_probs`);
  * ``child_probs``: p at each node's parent of the node's token, from one ``[B, T]`` gather
    of logits and the per-node log-sum-exp (`row_stats`, internal nodes only);
  * ``row_probs(nodes)``: a full ``[B, V]`` row where one is needed (the bonus token).
Sort mode (some row uses top-p alone): thresholds need a full sort of a row; only the rows the
walk visits (``[B, V]`` per depth) are processed, by `probs._processed`.
"""
from __future__ import annotations

from functools import cached_property
from typing import Optional

import torch
from torch import Tensor

from .probs import RowParams, _one_hot_argmax, _processed
from .row_stats import row_stats
from .tree import DraftTree

NEG_INF = float("-inf")


class Target:
    def __init__(self, tree: DraftTree, logits: Tensor, params: RowParams):
        self.tree, self.logits, self.params = tree, logits, params  # logits [B, T, V]
        self.rows = tree.row_index  # [B]
        self.batched = params.filter_cap < logits.shape[-1]

    @cached_property
    def _filtered(self) -> tuple[Optional[Tensor], Tensor, Tensor]:
        """``(thr [B, T] or None, lse [B, T], argmax [B, T])`` in batched mode. With filters, every
        valid node's row is read (top-p needs the top-k mass of any node the bonus may come
        from); without, only internal nodes'."""
        p = self.params
        if not p.filter_cap:
            argmax, lse = row_stats(self.logits, p.inv_temperature, None, self.tree.num_children > 0)
            return None, lse, argmax
        svals, thr_k = _top_k(self.logits, p)  # [B, T, K], [B, T]
        argmax, lse_k = row_stats(self.logits, p.inv_temperature, thr_k, self.tree.valid)
        thr, lse = _top_p(svals, thr_k, lse_k, p.top_p)
        return thr, lse, argmax

    def child_probs(self) -> Tensor:  # [B, T] float32
        """p at node i's parent of node i's token (garbage-free only where node i is linked)."""
        thr, lse, argmax = self._filtered
        tree, p = self.tree, self.params
        par, tok = tree.parent_index, tree.tokens.clamp(0, self.logits.shape[-1] - 1)  # [B, T]
        s = self.logits[self.rows[:, None], par, tok].float() * p.inv_temperature[:, None]  # [B, T]
        probs = torch.exp(s - lse.gather(1, par))
        if thr is not None:
            probs = torch.where(s >= thr.gather(1, par), probs, 0.0)
        if p.any_greedy:
            probs = torch.where(p.greedy[:, None], (tok == argmax.gather(1, par)).float(), probs)
        return probs

    def row_probs(self, nodes: Tensor) -> Tensor:  # [B, V] float32
        """p at ``nodes [B]``: one node per row."""
        x = self.logits[self.rows, nodes]  # [B, V]
        if not self.batched:
            return _processed(x, self.params)
        p = self.params
        s = x.float() * p.inv_temperature[:, None]  # [B, V]
        thr = self._filtered[0]
        if thr is not None:
            s = s.masked_fill(s < thr[self.rows, nodes][:, None], NEG_INF)
        probs = torch.softmax(s, dim=-1)
        if p.any_greedy:
            probs = torch.where(p.greedy[:, None], _one_hot_argmax(x), probs)
        return probs


def _top_k(logits: Tensor, params: RowParams) -> tuple[Tensor, Tensor]:
    """``(svals [B, T, K], thr_k [B, T])``: the K = filter_cap largest scaled logits of every
    node, descending, and the top-k threshold (the k-th largest; -inf where top-k is off).
    ``topk`` runs on the raw logits: scaling by 1 / t > 0 keeps the order."""
    batch, nodes, vocab = logits.shape
    cap = params.filter_cap
    vals = logits.reshape(batch * nodes, vocab).topk(cap, dim=-1).values.view(batch, nodes, cap)
    svals = vals.float() * params.inv_temperature[:, None, None]  # [B, T, K]
    k = params.top_k.clamp(0, cap)  # [B]
    kth = svals.gather(2, (k - 1).clamp(min=0)[:, None, None].expand(batch, nodes, 1))[..., 0]
    return svals, torch.where(k[:, None] > 0, kth, NEG_INF)


def _top_p(svals: Tensor, thr_k: Tensor, lse_k: Tensor, top_p: Tensor) -> tuple[Tensor, Tensor]:
    """Top-p on the top-k survivors: keep the largest values while the mass strictly above them
    (in the top-k renormalised law) is < top_p. Returns the final threshold and log-sum-exp
    ``[B, T]``. Where top-p cuts deeper than top-k, every kept value is above the K-th largest,
    so the kept set's log-sum-exp comes from ``svals`` alone; else it is top-k's (``lse_k``,
    computed over the whole row, so ties beyond the K-th value are counted)."""
    inside = svals >= thr_k[..., None]  # [B, T, K]
    p_sorted = torch.where(inside, torch.exp(svals - lse_k[..., None]), 0.0)
    mass_above = torch.cumsum(p_sorted, dim=-1) - p_sorted  # exclusive
    keep = inside & (mass_above < top_p[:, None, None])  # a prefix, never empty
    last = (keep.sum(-1, keepdim=True) - 1).clamp(min=0)  # [B, T, 1]
    thr_p = torch.where(top_p[:, None] < 1, svals.gather(2, last)[..., 0], NEG_INF)
    thr = torch.maximum(thr_k, thr_p)  # [B, T]
    lse_p = torch.logsumexp(svals.masked_fill(svals < thr[..., None], NEG_INF), dim=-1)
    return thr, torch.where(thr > thr_k, lse_p, lse_k)
