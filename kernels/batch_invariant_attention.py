"""Batch-invariant attention (``engine.exact=true``; the rules are in kernels/batch_invariant.py).

A query at position p attends over its visible keys in *logical* order, cut into blocks of
``KEY_BLOCK`` positions fixed from position 0. Every product is a batch of same-shape GEMMs, one
per (row, KV head, key block) — the scores ``[G, D] @ [D, KB]`` and the weighted values
``[G, KB] @ [KB, D]`` — so the library runs one kernel on one shape whatever the batch; the
softmax's max is exact in any order, each block's sum runs over its ``KB`` positions, and the
blocks are summed in order by `cumsum` (a sequential scan). Keys past a row's length score -inf,
weigh exactly 0 and add exactly 0, and so do whole blocks of padding, wherever they sit in a row's
sequence of blocks: adding 0 changes no sum. A row's numbers are thus those of a one-token decode
at its position, however its step is made.

The rows of one sequence share its committed prefix (a draft tree's nodes, a prefill chunk's
tokens). `key_lists` puts such a sequence's rows in a group of their own whose first ``S`` blocks
(the prefix's whole blocks) are *shared*: gathered once per layer and used by every row through
stride-0 batches of the same GEMMs; each row gathers only its own blocks after them (the
prefix's partial block and the new tokens it sees). The other rows (one-token decodes) form one
group without a shared part. Either way each (row, head, block) product is the same GEMM on the
same numbers, so the grouping changes no bit (tests/kernels/test_batch_invariant.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

KEY_BLOCK = 64  # key positions per attention block
ROW_CHUNK = 32  # query rows per attention pass (bounds its memory)

Rows = Union[slice, Tensor]  # a contiguous run of rows, or [n] int64 row indices


@dataclass
class RowChunk:
    """At most ``ROW_CHUNK`` rows of a group and the keys each gathers for itself."""
    rows: Rows
    slots: Tensor  # [n * nb * KB] int64 flat cache slots of the rows' own blocks (padding: 0)
    padding: Tensor  # [n, 1, nb, 1, KB] bool: own key positions past the row's length


@dataclass
class KeyGroup:
    """Rows whose first ``shared.numel() // KB`` key blocks are the same slots."""
    shared: Tensor  # [S * KB] int64 flat cache slots of the shared blocks (S may be 0)
    chunks: list[RowChunk]


@dataclass
class KeyLists:
    """Each query row's visible keys in logical order, and how the rows are grouped."""
    slots: Tensor  # [N, L] int64 flat cache slot of the row's l-th visible key (padding: 0)
    lengths: Tensor  # [N] int64 visible keys of each row (its position + 1)
    groups: list[KeyGroup]


def key_lists(qo_indptr: Tensor, prefix_lens: Tensor, block_tables: Tensor, block_size: int,
              tree_mask: Optional[Tensor] = None, use_tree_mask: Optional[Tensor] = None,
              share: bool = True) -> KeyLists:
    """The visible keys of every new row (masking rule of `reference.tree_attention_ref`): the
    sequence's prefix, then the new tokens it may see (itself included) in increasing index —
    for a draft tree, its ancestors root first, i.e. in the order of their logical positions.
    ``share``: the rows of a sequence with several new tokens share its prefix's whole key blocks
    (``share=False``: every row gathers all its keys; the same numbers, slower)."""
    indptr = qo_indptr.long()
    counts = indptr[1:] - indptr[:-1]  # [B]
    slots, lengths = visible_slots(indptr, prefix_lens, block_tables, block_size, tree_mask, use_tree_mask)
    shared = prefix_lens.long() // KEY_BLOCK * (counts > 1) * share  # [B] whole blocks shared
    return KeyLists(slots, lengths, group_rows(indptr.tolist(), shared.tolist(), slots, lengths))


def visible_slots(indptr: Tensor, prefix_lens: Tensor, block_tables: Tensor, block_size: int,
                  tree_mask: Optional[Tensor], use_tree_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """``slots [N, L]`` and ``lengths [N]`` of `KeyLists`."""
    dev = indptr.device
    counts = indptr[1:] - indptr[:-1]  # [B]
    n = int(indptr[-1])
    seq = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)  # [N]
    i = torch.arange(n, device=dev) - indptr[seq]  # [N] index among its sequence's new tokens
    width = int(counts.max()) if n else 0
    j = torch.arange(width, device=dev)[None]  # [1, W]
    visible = (j <= i[:, None]) & (j < counts[seq][:, None])  # causal
    if tree_mask is not None:
        use = torch.ones_like(seq, dtype=torch.bool) if use_tree_mask is None else use_tree_mask.bool()[seq]
        bits = ((tree_mask[:n, None] >> j.clamp(max=63)) & 1).bool() & (j < counts[seq][:, None])
        visible = torch.where(use[:, None], bits, visible)
    # the visible new-token indices first, ascending (invisible ones pushed past them)
    order = torch.where(visible, j, width + j).sort(dim=1).values  # [N, W]
    seen = visible.sum(1)  # [N]
    prefix = prefix_lens.long()[seq]  # [N]
    lengths = prefix + seen
    total = int(lengths.max()) if n else 0
    col = torch.arange(total, device=dev)[None]  # [1, L]
    new = (col - prefix[:, None]).clamp(0, max(width - 1, 0))
    position = torch.where(col < prefix[:, None], col,
                           prefix[:, None] + (order.gather(1, new) if width else new))
    valid = col < lengths[:, None]
    position = torch.where(valid, position, 0)
    table = block_tables.long()[seq]  # [N, max_blocks]
    slots = table.gather(1, position // block_size) * block_size + position % block_size
    return torch.where(valid, slots, 0), lengths


def group_rows(indptr: list[int], shared: list[int], slots: Tensor, lengths: Tensor) -> list[KeyGroup]:
    """One group of the rows of every sequence with ``shared[b] == 0`` (no shared part), then one
    group per sequence b with ``shared[b]`` shared blocks."""
    alone = [r for b, s in enumerate(shared) if not s for r in range(indptr[b], indptr[b + 1])]
    groups = [key_group(alone, 0, slots, lengths)] if alone else []
    for b, s in enumerate(shared):
        if s:
            groups.append(key_group(list(range(indptr[b], indptr[b + 1])), s, slots, lengths))
    return groups


def key_group(rows: list[int], blocks: int, slots: Tensor, lengths: Tensor) -> KeyGroup:
    """``rows`` (ascending) sharing their first ``blocks`` key blocks, in chunks of ``ROW_CHUNK``."""
    skip, chunks = blocks * KEY_BLOCK, []
    for c in range(0, len(rows), ROW_CHUNK):
        part = rows[c:c + ROW_CHUNK]
        idx = torch.tensor(part, device=slots.device)
        own = lengths[idx] - skip  # [n] keys after the shared blocks (>= 1: the row itself)
        nb = -(-int(own.max()) // KEY_BLOCK)
        mine = F.pad(slots[idx, skip:], (0, max(0, skip + nb * KEY_BLOCK - slots.shape[1])))[:, :nb * KEY_BLOCK]
        padding = torch.arange(nb * KEY_BLOCK, device=slots.device)[None] >= own[:, None]  # [n, nb * KB]
        contiguous = part[-1] - part[0] == len(part) - 1
        chunks.append(RowChunk(slice(part[0], part[-1] + 1) if contiguous else idx, mine.flatten(),
                               padding.view(len(part), 1, nb, 1, KEY_BLOCK)))
    return KeyGroup(slots[rows[0], :skip], chunks)


def attention_bi(q: Tensor, k_cache: Tensor, v_cache: Tensor, keys: KeyLists,
                 sm_scale: Optional[float] = None) -> Tensor:
    """``q [N, Hq, D]``, caches ``[num_blocks, block_size, Hkv, D]`` -> ``[N, Hq, D]``: the
    softmax attention of each row over ``keys``, in float32, group by group, ``ROW_CHUNK`` rows
    at a time (the memory stays bounded; rows do not interact)."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[2])
    kf, vf = k_cache.flatten(0, 1), v_cache.flatten(0, 1)  # [slots, Hkv, D]
    out = torch.empty_like(q)
    for group in keys.groups:
        shared = None
        if group.shared.numel():
            shared = gather_blocks(kf, group.shared, 1, True)[0], gather_blocks(vf, group.shared, 1, False)[0]
        for chunk in group.chunks:
            out[chunk.rows] = attend(q[chunk.rows], kf, vf, chunk, shared, scale)
    return out


def gather_blocks(cache: Tensor, slots: Tensor, n: int, keys: bool) -> Tensor:
    """``cache [slots, Hkv, D]``, ``slots [n * nb * KB]`` -> float32 ``[n, Hkv, nb, D, KB]``
    (``keys``: transposed for the scores) or ``[n, Hkv, nb, KB, D]`` (values)."""
    _, hkv, d = cache.shape
    g = cache.index_select(0, slots).view(n, -1, KEY_BLOCK, hkv, d)  # [n, nb, KB, Hkv, D]
    g = g.permute(0, 3, 1, 4, 2) if keys else g.permute(0, 3, 1, 2, 4)
    return torch.empty(g.shape, dtype=torch.float32, device=g.device).copy_(g)  # one pass: cast + permute


def attend(q: Tensor, kf: Tensor, vf: Tensor, chunk: RowChunk, shared: Optional[tuple[Tensor, Tensor]],
           scale: float) -> Tensor:  # q [n, Hq, D] -> [n, Hq, D]
    """The rows of ``chunk``: scores and weighted values of their own blocks (gathered per row)
    and of the group's ``shared`` blocks (``[Hkv, S, D, KB]`` keys, ``[Hkv, S, KB, D]`` values),
    blocks summed in logical order: shared ones first."""
    n, hq, d = q.shape
    hkv = kf.shape[1]
    g, nb = hq // hkv, chunk.padding.shape[2]
    qf = q.float().view(n, hkv, g, d)  # [n, Hkv, G, D]
    qb = qf[:, :, None].expand(n, hkv, nb, g, d).reshape(n * hkv * nb, g, d)
    k = gather_blocks(kf, chunk.slots, n, True).view(n * hkv * nb, d, KEY_BLOCK)
    s = (torch.bmm(qb, k) * scale).view(n, hkv, nb, g, KEY_BLOCK)  # [n, Hkv, nb, G, KB]
    s = s.masked_fill(chunk.padding, float("-inf"))
    top = s.amax(dim=(2, 4), keepdim=True)  # [n, Hkv, 1, G, 1]
    if shared is not None:
        s0 = shared_scores(qf, shared[0]) * scale  # [n, Hkv, S, G, KB]
        top = torch.maximum(top, s0.amax(dim=(2, 4), keepdim=True))
    p = torch.exp(s - top)  # [n, Hkv, nb, G, KB]
    v = gather_blocks(vf, chunk.slots, n, False).view(n * hkv * nb, KEY_BLOCK, d)
    total = p.sum(-1)  # [n, Hkv, nb, G]
    acc = torch.bmm(p.view(n * hkv * nb, g, KEY_BLOCK), v).view(n, hkv, nb, g, d)
    if shared is not None:
        p0 = torch.exp(s0 - top)  # [n, Hkv, S, G, KB]
        total = torch.cat([p0.sum(-1), total], 2)
        acc = torch.cat([shared_values(p0, shared[1]), acc], 2)
    total = total.cumsum(2)[:, :, -1]  # [n, Hkv, G]
    acc = acc.cumsum(2)[:, :, -1]  # [n, Hkv, G, D]
    return (acc / total[..., None]).reshape(n, hq, d).to(q.dtype)


def shared_scores(qf: Tensor, k: Tensor, by_row: Optional[bool] = None) -> Tensor:
    """``qf [n, Hkv, G, D]``, ``k [Hkv, S, D, KB]`` -> ``[n, Hkv, S, G, KB]``: the GEMM of
    every (row, head, block), in batches over (head, block) per row or over rows per (head,
    block), whichever takes fewer calls (``by_row`` forces one; the numbers are the same)."""
    n, hkv, g, d = qf.shape
    nbs = k.shape[1]
    if by_row if by_row is not None else n <= hkv * nbs:
        kb = k.reshape(hkv * nbs, d, KEY_BLOCK)
        q = qf[:, :, None].expand(n, hkv, nbs, g, d).reshape(n, hkv * nbs, g, d)
        return torch.stack([torch.bmm(q[r], kb) for r in range(n)]).view(n, hkv, nbs, g, KEY_BLOCK)
    out = qf.new_empty(n, hkv, nbs, g, KEY_BLOCK)
    qh = qf.transpose(0, 1).contiguous()  # [Hkv, n, G, D]
    for h in range(hkv):
        for b in range(nbs):
            out[:, h, b] = torch.bmm(qh[h], k[h, b].expand(n, d, KEY_BLOCK))
    return out


def shared_values(p: Tensor, v: Tensor, by_row: Optional[bool] = None) -> Tensor:
    """``p [n, Hkv, S, G, KB]``, ``v [Hkv, S, KB, D]`` -> ``[n, Hkv, S, G, D]`` (as `shared_scores`)."""
    n, hkv, nbs, g, _ = p.shape
    d = v.shape[-1]
    if by_row if by_row is not None else n <= hkv * nbs:
        vb = v.reshape(hkv * nbs, KEY_BLOCK, d)
        return torch.stack([torch.bmm(p[r].reshape(hkv * nbs, g, KEY_BLOCK), vb) for r in range(n)]).view(
            n, hkv, nbs, g, d)
    out = p.new_empty(n, hkv, nbs, g, d)
    ph = p.permute(1, 2, 0, 3, 4).contiguous()  # [Hkv, S, n, G, KB]
    for h in range(hkv):
        for b in range(nbs):
            out[:, h, b] = torch.bmm(ph[h, b], v[h, b].expand(n, KEY_BLOCK, d))
    return out
