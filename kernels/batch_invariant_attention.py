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
ROW_CHUNK = 64  # query rows per attention pass (bounds its memory)

Rows = Union[slice, Tensor]  # a contiguous run of rows, or [n] int64 row indices


@dataclass
class RowChunk:
    """At most ``ROW_CHUNK`` rows of a group and the keys each gathers for itself."""
    rows: Rows
    index: Tensor  # [n * nb * KB] int64 the rows' own keys, blocks of KB (padding: 0): flat cache
    # slots in a group without a shared part, else indices into the group's tail (see KeyGroup)
    padding: Tensor  # [1, n, nb, 1, KB] bool: own key positions past the row's length


@dataclass
class KeyGroup:
    """Rows attended together. ``slots`` None: one-token decodes, each gathering all its keys
    from the cache. Else the rows of one sequence: ``slots`` are its positions ``0 .. P + c - 1``
    (prefix and new tokens), gathered once per layer; the first ``blocks`` whole key blocks are
    shared by every row, the rest (the tail) is where each row's own keys come from."""
    slots: Optional[Tensor]  # [P + c] int64 flat cache slots, or None
    blocks: int  # S shared key blocks
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
    position, lengths, seq = visible_positions(indptr, prefix_lens, tree_mask, use_tree_mask)
    tables = block_tables.long()
    valid = torch.arange(position.shape[1], device=position.device)[None] < lengths[:, None]
    slots = torch.where(valid, flat_slots(tables[seq], position, block_size), 0)  # [N, L]
    shared = (prefix_lens.long() // KEY_BLOCK * (counts > 1) * share).tolist()  # [B] whole blocks shared
    bounds, ends = indptr.tolist(), (prefix_lens.long() + counts).tolist()
    alone = [r for b, s in enumerate(shared) if not s for r in range(bounds[b], bounds[b + 1])]
    groups = [key_group(alone, None, 0, slots, lengths)] if alone else []
    for b, s in enumerate(shared):
        if s:
            mine = flat_slots(tables[b:b + 1], torch.arange(ends[b], device=slots.device)[None], block_size)[0]
            tail = (position - s * KEY_BLOCK).clamp(min=0)  # [N, L] index into the tail
            groups.append(key_group(list(range(bounds[b], bounds[b + 1])), mine, s, tail, lengths))
    return KeyLists(slots, lengths, groups)


def flat_slots(tables: Tensor, position: Tensor, block_size: int) -> Tensor:
    """``tables [R, max_blocks]``, ``position [R, L]`` -> flat cache slots ``[R, L]``."""
    return tables.gather(1, position // block_size) * block_size + position % block_size


def visible_positions(indptr: Tensor, prefix_lens: Tensor, tree_mask: Optional[Tensor],
                      use_tree_mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``position [N, L]`` (logical position of each row's l-th visible key; padding 0),
    ``lengths [N]`` and ``seq [N]`` (each row's sequence)."""
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
    return torch.where(col < lengths[:, None], position, 0), lengths, seq


def key_group(rows: list[int], slots: Optional[Tensor], blocks: int, index: Tensor, lengths: Tensor) -> KeyGroup:
    """``rows`` (ascending) sharing their first ``blocks`` key blocks, in chunks of ``ROW_CHUNK``;
    ``index [N, L]``: where each row's l-th key comes from (see `RowChunk.index`)."""
    skip, chunks = blocks * KEY_BLOCK, []
    for c in range(0, len(rows), ROW_CHUNK):
        part = rows[c:c + ROW_CHUNK]
        idx = torch.tensor(part, device=index.device)
        own = lengths[idx] - skip  # [n] keys after the shared blocks (>= 1: the row itself)
        width = -(-int(own.max()) // KEY_BLOCK) * KEY_BLOCK
        mine = F.pad(index[idx, skip:], (0, max(0, skip + width - index.shape[1])))[:, :width]
        padding = torch.arange(width, device=index.device)[None] >= own[:, None]  # [n, nb * KB]
        contiguous = part[-1] - part[0] == len(part) - 1
        chunks.append(RowChunk(slice(part[0], part[-1] + 1) if contiguous else idx, mine.flatten(),
                               padding.view(1, len(part), -1, 1, KEY_BLOCK)))
    return KeyGroup(slots, blocks, chunks)


def attention_bi(q: Tensor, k_cache: Tensor, v_cache: Tensor, keys: KeyLists,
                 sm_scale: Optional[float] = None) -> Tensor:
    """``q [N, Hq, D]``, caches ``[num_blocks, block_size, Hkv, D]`` -> ``[N, Hq, D]``: the
    softmax attention of each row over ``keys``, in float32, group by group, ``ROW_CHUNK`` rows
    at a time (the memory stays bounded; rows do not interact)."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[2])
    kf, vf = k_cache.flatten(0, 1), v_cache.flatten(0, 1)  # [slots, Hkv, D]
    hkv, d = kf.shape[1], kf.shape[2]
    out = torch.empty_like(q)
    for group in keys.groups:
        shared = None
        if group.slots is not None:
            skip = group.blocks * KEY_BLOCK
            ks, vs = gather_heads(kf, group.slots), gather_heads(vf, group.slots)  # [Hkv, P + c, D]
            shared = (ks[:, :skip].reshape(hkv, group.blocks, KEY_BLOCK, d).transpose(2, 3).contiguous(),
                      vs[:, :skip].reshape(hkv, group.blocks, KEY_BLOCK, d))  # [Hkv, S, D, KB], [Hkv, S, KB, D]
            tail_k, tail_v = ks[:, skip:].contiguous(), vs[:, skip:].contiguous()  # [Hkv, P + c - S * KB, D]
        for chunk in group.chunks:
            if shared is None:
                k, v = gather_heads(kf, chunk.index), gather_heads(vf, chunk.index)
            else:
                k, v = tail_k.index_select(1, chunk.index), tail_v.index_select(1, chunk.index)
            out[chunk.rows] = attend(q[chunk.rows], k, v, chunk.padding, shared, scale)
    return out


def gather_heads(cache: Tensor, slots: Tensor) -> Tensor:
    """``cache [slots, Hkv, D]``, ``slots [m]`` -> float32 ``[Hkv, m, D]``."""
    g = cache.index_select(0, slots).transpose(0, 1)  # [Hkv, m, D]
    return torch.empty(g.shape, dtype=torch.float32, device=g.device).copy_(g)  # one pass: cast + transpose


def attend(q: Tensor, k: Tensor, v: Tensor, padding: Tensor, shared: Optional[tuple[Tensor, Tensor]],
           scale: float) -> Tensor:  # q [n, Hq, D] -> [n, Hq, D]
    """``n`` rows over their own key blocks (keys and values ``[Hkv, n * nb * KB, D]``, head
    major) after the ``shared`` ones (keys ``[Hkv, S, D, KB]``, values ``[Hkv, S, KB, D]``; S
    blocks first). A block's keys enter the scores' GEMM as ``[D, KB]``: a transposed view of
    the own ``[KB, D]`` blocks (gathered per row: no copy to transpose them), a contiguous copy
    of the shared ones (made once per group); the same operand values, the same GEMM."""
    n, hq, d = q.shape
    hkv = k.shape[0]
    g, nb = hq // hkv, padding.shape[2]
    qf = q.float().view(n, hkv, g, d).transpose(0, 1).contiguous()  # [Hkv, n, G, D]
    qb = qf[:, :, None].expand(hkv, n, nb, g, d).reshape(hkv * n * nb, g, d)
    kb = k.view(hkv * n * nb, KEY_BLOCK, d).transpose(1, 2)  # [., D, KB]: each block read transposed
    s = (torch.bmm(qb, kb) * scale).view(hkv, n, nb, g, KEY_BLOCK)  # [Hkv, n, nb, G, KB]
    s = s.masked_fill(padding, float("-inf"))
    top = s.amax(dim=(2, 4), keepdim=True)  # [Hkv, n, 1, G, 1]
    if shared is not None:
        s0 = shared_scores(qf, shared[0]) * scale  # [Hkv, n, S, G, KB]
        top = torch.maximum(top, s0.amax(dim=(2, 4), keepdim=True))
    p = torch.exp(s - top)  # [Hkv, n, nb, G, KB]
    total = p.sum(-1)  # [Hkv, n, nb, G]
    acc = torch.bmm(p.view(-1, g, KEY_BLOCK), v.view(-1, KEY_BLOCK, d)).view(hkv, n, nb, g, d)
    if shared is not None:
        p0 = torch.exp(s0 - top)  # [Hkv, n, S, G, KB]
        total = torch.cat([p0.sum(-1), total], 2)
        acc = torch.cat([shared_values(p0, shared[1]), acc], 2)
    total = total.cumsum(2)[:, :, -1]  # [Hkv, n, G] the blocks summed in order
    acc = acc.cumsum(2)[:, :, -1]  # [Hkv, n, G, D]
    return (acc / total[..., None]).transpose(0, 1).reshape(n, hq, d).to(q.dtype)


def shared_scores(qf: Tensor, k: Tensor, by_row: Optional[bool] = None) -> Tensor:
    """``qf [Hkv, n, G, D]``, ``k [Hkv, S, D, KB]`` -> ``[Hkv, n, S, G, KB]``: the GEMM of
    every (head, row, block), in batches over (head, block) per row or over rows per (head,
    block), whichever takes fewer calls (``by_row`` forces one; the numbers are the same)."""
    hkv, n, g, d = qf.shape
    nbs = k.shape[1]
    if by_row if by_row is not None else n <= hkv * nbs:
        kb = k.view(hkv * nbs, d, KEY_BLOCK)
        q = qf.transpose(0, 1)[:, :, None].expand(n, hkv, nbs, g, d).reshape(n, hkv * nbs, g, d)
        out = qf.new_empty(n, hkv * nbs, g, KEY_BLOCK)
        for r in range(n):
            torch.bmm(q[r], kb, out=out[r])
        return out.view(n, hkv, nbs, g, KEY_BLOCK).transpose(0, 1)
    out = qf.new_empty(hkv, nbs, n, g, KEY_BLOCK)
    for h in range(hkv):
        for b in range(nbs):
            torch.bmm(qf[h], k[h, b].expand(n, d, KEY_BLOCK), out=out[h, b])
    return out.transpose(1, 2)


def shared_values(p: Tensor, v: Tensor, by_row: Optional[bool] = None) -> Tensor:
    """``p [Hkv, n, S, G, KB]``, ``v [Hkv, S, KB, D]`` -> ``[Hkv, n, S, G, D]`` (as `shared_scores`)."""
    hkv, n, nbs, g, _ = p.shape
    d = v.shape[-1]
    if by_row if by_row is not None else n <= hkv * nbs:
        vb = v.reshape(hkv * nbs, KEY_BLOCK, d)
        pr = p.transpose(0, 1).reshape(n, hkv * nbs, g, KEY_BLOCK)
        out = p.new_empty(n, hkv * nbs, g, d)
        for r in range(n):
            torch.bmm(pr[r], vb, out=out[r])
        return out.view(n, hkv, nbs, g, d).transpose(0, 1)
    out = p.new_empty(hkv, nbs, n, g, d)
    ph = p.transpose(1, 2).contiguous()  # [Hkv, S, n, G, KB]
    for h in range(hkv):
        for b in range(nbs):
            torch.bmm(ph[h, b], v[h, b].expand(n, KEY_BLOCK, d), out=out[h, b])
    return out.transpose(1, 2)
