"""Prompt lookup for a whole batch at once, in a few tensor operations (CPU or GPU, no host loop
over sequences): the continuations of the latest earlier occurrences of each sequence's suffix
n-grams, merged into a trie, best node first. `NgramDrafter` and the hybrid drafter use it; ngram.py
keeps the per-sequence numpy version that the tests compare against.

Shapes: B sequences, W context window (the last W tokens, right-aligned, -1 before the start),
M matches, k continuation tokens.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor


class TokenWindows:
    """Each sequence's tokens as a growing numpy array, extended by what is new each step (a
    Python list of thousands of tokens converted every step would cost more than the lookup), and
    the batch's last ``width`` tokens as one ``[B, W]`` tensor."""

    def __init__(self, width: int, device) -> None:
        self.width, self.device = width, torch.device(device)
        self.arrays: dict[int, np.ndarray] = {}  # seq_id -> tokens (capacity doubles)
        self.lengths: dict[int, int] = {}

    def array(self, seq) -> np.ndarray:
        """The sequence's tokens, ``[len(seq.tokens)]`` int64 (a view: read it before the next
        call)."""
        arr, n = self.arrays.get(seq.seq_id), self.lengths.get(seq.seq_id, 0)
        total = len(seq.tokens)
        if n > total:  # recomputed after preemption: the tokens are the same, only fewer
            n = 0
        if arr is None or len(arr) < total:
            grown = np.empty(max(64, 2 * total), dtype=np.int64)
            if arr is not None:
                grown[:n] = arr[:n]
            arr = self.arrays[seq.seq_id] = grown
        if n < total:
            arr[n:total] = seq.tokens[n:total]
        self.lengths[seq.seq_id] = total
        return arr[:total]

    def batch(self, seqs, device=None) -> Tensor:
        """``[B, W']`` int64 on ``device`` (default: the windows' device): the last W' tokens of
        each sequence, right-aligned, -1 before the start; W' is ``width``, or less when every
        sequence is shorter (a multiple of 128, so that shapes repeat)."""
        return torch.from_numpy(self.rows(seqs)).to(device or self.device, non_blocking=True)

    def rows(self, seqs, num_rows: Optional[int] = None, full: bool = False) -> np.ndarray:
        """`batch` on the host, ``[num_rows, W']`` (rows past the sequences: all -1); ``full``:
        W' = ``width`` always (one shape per batch size: a CUDA graph's input)."""
        arrays = [self.array(seq) for seq in seqs]
        width = self.width if full or not arrays else min(self.width, -(-max(len(a) for a in arrays) // 128) * 128)
        out = np.full((num_rows or len(seqs), width), -1, dtype=np.int64)
        for b, arr in enumerate(arrays):
            tail = arr[-width:]
            out[b, width - len(tail):] = tail
        return out

    def release(self, seq) -> None:
        self.arrays.pop(seq.seq_id, None)
        self.lengths.pop(seq.seq_id, None)


def continuations(ctx: Tensor, n_min: int, n_max: int, k: int, m: int) -> tuple[Tensor, Tensor]:
    """The ``m`` best matches of each row's suffix n-grams (longest n first, then most recent)
    and the ``k`` tokens after each: ``conts [B, M, k]`` (-1 past the context or for no match)
    and ``found [B, M]``. ``ctx [B, W]`` as `window` makes it."""
    b, w = ctx.shape
    prio, starts = [], []
    for n in range(n_max, n_min - 1, -1):
        if n >= w:
            continue
        pattern = ctx[:, w - n:]  # [B, n] the suffix
        wins = ctx[:, : w - 1].unfold(1, n, 1)  # [B, W - n, n]: window i = ctx[i : i + n]
        hit = (wins == pattern[:, None]).all(-1) & (pattern >= 0).all(-1, keepdim=True)  # [B, W - n]
        i = torch.arange(w - n, device=ctx.device)
        prio.append(torch.where(hit, n * w + i, -1))  # longer n first, then the most recent
        starts.append((i + n).expand(b, -1))  # where the continuation starts
    if not prio:
        return ctx.new_full((b, m, k), -1), ctx.new_zeros((b, m), dtype=torch.bool)
    prio, starts = torch.cat(prio, 1), torch.cat(starts, 1)  # [B, P]
    top, idx = prio.topk(min(m, prio.shape[1]), dim=1)  # [B, M']
    found = top >= 0
    pos = starts.gather(1, idx)[:, :, None] + torch.arange(k, device=ctx.device)  # [B, M', k]
    conts = ctx.gather(1, pos.clamp(max=w - 1).reshape(b, -1)).view(pos.shape)
    conts = conts.masked_fill((pos >= w) | ~found[:, :, None], -1)
    if conts.shape[1] < m:  # fewer candidate windows than matches asked for
        pad = m - conts.shape[1]
        conts = torch.cat([conts, conts.new_full((b, pad, k), -1)], 1)
        found = torch.cat([found, found.new_zeros((b, pad))], 1)
    return conts, found


def trie(roots: Tensor, conts: Tensor, max_nodes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Merge each row's continuations ``conts [B, M, k]`` (-1: none) into a trie under ``roots
    [B]``; keep the root and the ``max_nodes - 1`` nodes the most continuations pass through
    (ties: earlier continuation, shallower first). Returns tokens, parents, num_nodes and
    scores (log of the share of continuations through a node), ``[B, T]`` / ``[B]``, best node
    first (so every prefix is a subtree and the best of its size)."""
    b, m, k = conts.shape
    dev = conts.device
    valid = conts >= 0  # [B, M, k]
    valid = valid & valid.long().cumprod(-1).bool()  # a continuation stops at its first gap
    eq = (conts[:, :, None] == conts[:, None]) & valid[:, :, None] & valid[:, None]  # [B, M, M', k]
    same = eq.long().cumprod(-1).bool()  # continuations m, m' agree on tokens 0..j
    rep = same.float().argmax(2)  # [B, M, k]: the first continuation sharing m's prefix to j
    unique = valid & (rep == torch.arange(m, device=dev)[None, :, None])  # [B, M, k] trie nodes
    count = same.sum(1)  # [B, M', k]: continuations through node (m', j)
    total = valid[:, :, 0].sum(1).clamp(min=1)  # [B]
    flat = lambda x: x.reshape(b, m * k)  # noqa: E731  (m, j) -> m * k + j
    lex = torch.arange(m * k, device=dev)
    # rank: more continuations first, then (m, j) order; parents come first either way
    key = torch.where(flat(unique), flat(count) * (m * k + 1) - lex, -1)
    keep = min(max_nodes - 1, m * k)
    order = key.topk(keep, dim=1).indices  # [B, keep] best first
    kept = key.gather(1, order) >= 0  # [B, keep]
    node_of = torch.full((b, m * k), -1, dtype=torch.long, device=dev)  # (m, j) -> tree index
    node_of.scatter_(1, order, torch.where(kept, torch.arange(1, keep + 1, device=dev), -1))
    j = order % k
    parent_mj = rep.reshape(b, m * k).gather(1, (order - 1).clamp(min=0))  # rep of (m, j - 1)
    parent_flat = parent_mj * k + (j - 1).clamp(min=0)
    parents = torch.where(j == 0, 0, node_of.gather(1, parent_flat)).masked_fill(~kept, -1)
    tokens = flat(conts).gather(1, order).clamp(min=0).masked_fill(~kept, 0)
    share = flat(count).gather(1, order).float() / total[:, None].float()
    scores = torch.where(kept, share.clamp(min=1e-6).log(), float("-inf"))
    zero = torch.zeros(b, 1, device=dev)
    return (torch.cat([roots[:, None].long(), tokens], 1),
            torch.cat([torch.full((b, 1), -1, dtype=torch.long, device=dev), parents], 1),
            1 + kept.sum(1), torch.cat([zero, scores], 1))
