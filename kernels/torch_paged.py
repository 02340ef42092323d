"""A fast CPU path for `tree_attention`: the same function as `reference.tree_attention_ref`,
built from one plan per step and batched torch SDPA calls instead of a Python loop per sequence
and layer. Tested against the reference (tests/kernels/test_torch_paged.py).

The plan (built once per step, shared by every layer) splits the batch in two:
  * short rows (decode steps and draft trees, <= 64 new tokens): padded to [B, Q, L] and run as
    one SDPA call with an explicit boolean mask (prefix visible, new tokens causal or by bitmask);
  * long rows (prefill chunks): one SDPA call each, over that sequence's gathered K/V.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

SHORT = 64  # new tokens per sequence up to which rows are batched together


@dataclass
class PaddedGroup:
    q_rows: Tensor  # [G, Q] row of each query in the flat batch (padding: 0)
    q_valid: Tensor  # [G, Q] bool
    kv_slots: Tensor  # [G, L] flat cache slot of each key position (padding: 0)
    mask: Tensor  # [G, 1, Q, L] bool: may query q see key position l


@dataclass
class LongRow:
    start: int  # first row in the flat batch
    count: int  # new tokens (rows)
    kv_slots: Tensor  # [prefix + count] flat slots
    mask: Optional[Tensor]  # [count, prefix + count] bool, None: plain causal over the new part


@dataclass
class TorchPagedPlan:
    short: Optional[PaddedGroup]
    long: list[LongRow]


def plan_torch_paged(qo_indptr: Tensor, prefix_lens: Tensor, block_tables: Tensor, block_size: int,
                     tree_mask: Optional[Tensor] = None, use_tree_mask: Optional[Tensor] = None) -> TorchPagedPlan:
    indptr, prefix = qo_indptr.tolist(), prefix_lens.tolist()
    counts = [indptr[b + 1] - indptr[b] for b in range(len(prefix))]
    uses = [tree_mask is not None and (use_tree_mask is None or bool(use_tree_mask[b]))
            for b in range(len(prefix))]
    short = [b for b, n in enumerate(counts) if 0 < n <= SHORT]
    long = [b for b, n in enumerate(counts) if n > SHORT]
    group = _padded(short, indptr, prefix, counts, uses, block_tables, block_size, tree_mask) if short else None
    rows = [_long(b, indptr, prefix, counts, uses, block_tables, block_size, tree_mask) for b in long]
    return TorchPagedPlan(group, rows)


def _slots(table: Tensor, positions: Tensor, block_size: int) -> Tensor:
    return table[positions // block_size].long() * block_size + positions % block_size


def _padded(seqs, indptr, prefix, counts, uses, block_tables, block_size, tree_mask) -> PaddedGroup:
    dev = block_tables.device
    sel = torch.tensor(seqs, device=dev)
    start = torch.tensor([indptr[b] for b in seqs], device=dev)[:, None]  # [G, 1]
    pre = torch.tensor([prefix[b] for b in seqs], device=dev)[:, None]
    n = torch.tensor([counts[b] for b in seqs], device=dev)[:, None]
    use = torch.tensor([uses[b] for b in seqs], device=dev)[:, None, None]
    q_len, kv_len = int(n.max()), int((pre + n).max())
    i = torch.arange(q_len, device=dev)[None]  # [1, Q]
    j = torch.arange(kv_len, device=dev)[None]  # [1, L]
    q_valid = i < n
    q_rows = torch.where(q_valid, start + i, 0)
    kv_valid = j < pre + n
    positions = torch.where(kv_valid, j, 0)
    tables = block_tables[sel].long()  # [G, max_blocks]
    kv_slots = tables.gather(1, positions // block_size) * block_size + positions % block_size
    t = (j - pre)[:, None, :]  # [G, 1, L] index among the new tokens (negative: prefix)
    causal = t <= i[:, :, None]
    if tree_mask is not None:
        bits = tree_mask[q_rows][:, :, None]  # [G, Q, 1]
        tree = ((bits >> t.clamp(0, 63)) & 1).bool()
        causal = torch.where(use, tree, causal)
    visible = (t < 0) | ((t < n[:, :, None]) & causal)
    visible &= q_valid[:, :, None] & kv_valid[:, None, :]
    visible[:, :, 0] |= ~q_valid  # padded queries see one key: no all-masked (NaN) rows
    return PaddedGroup(q_rows, q_valid, kv_slots, visible[:, None])


def _long(b, indptr, prefix, counts, uses, block_tables, block_size, tree_mask) -> LongRow:
    dev = block_tables.device
    kv_len = prefix[b] + counts[b]
    slots = _slots(block_tables[b], torch.arange(kv_len, device=dev), block_size)
    mask = None
    if uses[b] or prefix[b]:
        i = torch.arange(counts[b], device=dev)[:, None]
        t = torch.arange(kv_len, device=dev)[None] - prefix[b]
        vis = t <= i
        if uses[b]:
            bits = tree_mask[indptr[b]: indptr[b + 1]][:, None]
            vis = ((bits >> t.clamp(0, 63)) & 1).bool()
        mask = (t < 0) | vis
    return LongRow(indptr[b], counts[b], slots, mask)


def tree_attention_torch(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: TorchPagedPlan,
                         sm_scale: Optional[float] = None, out: Optional[Tensor] = None) -> Tensor:
    """``q [N, Hq, D]``, caches ``[num_blocks, block_size, Hkv, D]`` -> ``[N, Hq, D]``."""
    k_flat, v_flat = k_cache.flatten(0, 1), v_cache.flatten(0, 1)  # [slots, Hkv, D]
    out = torch.empty_like(q) if out is None else out
    g = plan.short
    if g is not None:
        qp = q[g.q_rows].transpose(1, 2)  # [G, Hq, Q, D]
        k = k_flat[g.kv_slots].transpose(1, 2)  # [G, Hkv, L, D]
        v = v_flat[g.kv_slots].transpose(1, 2)
        o = F.scaled_dot_product_attention(qp, k.to(q.dtype), v.to(q.dtype), attn_mask=g.mask,
                                           scale=sm_scale, enable_gqa=True)  # [G, Hq, Q, D]
        out[g.q_rows[g.q_valid]] = o.transpose(1, 2)[g.q_valid]
    for row in plan.long:
        qs = q[row.start: row.start + row.count].transpose(0, 1)[None]  # [1, Hq, n, D]
        k = k_flat[row.kv_slots].transpose(0, 1)[None].to(q.dtype)  # [1, Hkv, L, D]
        v = v_flat[row.kv_slots].transpose(0, 1)[None].to(q.dtype)
        o = F.scaled_dot_product_attention(qs, k, v, attn_mask=row.mask, is_causal=row.mask is None,
                                           scale=sm_scale, enable_gqa=True)
        out[row.start: row.start + row.count] = o[0].transpose(0, 1)
    return out
