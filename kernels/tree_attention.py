"""Triton tree attention over the paged KV cache: decode, chains, draft trees and causal prefill.

Semantics: `reference.tree_attention_ref`. One launch serves a ragged batch; every program owns
(sequence b, query tile, KV head, KV split):

* GQA packing (as FlashInfer's and vLLM's decode kernels): the ``group`` query heads that share a
  KV head are rows of one M tile, row ``m`` = (token ``m // group``, head ``m % group``), so a
  KV block is read once per KV head, not once per query head.
* Paged KV: position ``p`` of sequence b is slot ``p % page`` of block ``block_tables[b, p // page]``;
  a tile of BLOCK_N positions gathers its rows through the table (any page size, any order).
* Masking in two phases: positions below the prefix are fully visible (no mask work); the tail
  tiles that reach the new tokens apply the causal rule or the uint64 ancestor bitmask.
* Split-KV (flash-decoding): program ``split`` covers one chunk of the KV range and writes an
  fp32 partial output and its log-sum-exp; `_merge_splits` combines them. Trees split too: the
  bitmask only touches positions >= prefix_len, whichever chunk holds them. With
  ``plan.fused_merge`` the merge runs inside the attention kernel instead (one launch): every
  split bumps a per-tile counter after writing its partial, and the split that arrives last
  merges (the "last block" reduction of CUDA's threadFenceReduction sample; CUTLASS's semaphore
  uses the same barrier + release/acquire). Both merges live in `split_merge.py`.
* Block ids are prefetched one KV tile ahead as loop-carried values. Triton's software pipeliner
  divides its stages by the depth of load->load chains in the loop (AssignLatencies: latency =
  (num_stages - 1) / (indirection + 1)), so a block-table load feeding the K/V address in the same
  iteration halved the pipelining depth; at num_stages=2 the K/V copies were issued one tile ahead
  but waited on at once (TTGIR: one wait with num=0 per iteration), i.e. no overlap.
Online softmax in base 2 (FlashAttention-2, Dao 2023), fp32 accumulation; the scale is applied in
the exp2 argument (one FMA per score, as Triton's fused-attention tutorial).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .checks import check_sm_scale
from .plan import TreeAttentionPlan, next_pow2, plan_tree_attention
from .split_merge import _merge_decode_tile, _merge_splits

LOG2E = 1.4426950408889634
NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity" for the running max: keeps exp2(m_old - m_new) NaN-free


@triton.jit
def _tile_pages(bt_row, start, hi, BLOCK_N: tl.constexpr, PAGE: tl.constexpr):
    """Block ids of positions start .. start+BLOCK_N-1 (int64; a scalar when the tile lies inside
    one page, else ``[BLOCK_N]``); positions >= hi read no table entry (block 0 stands in)."""
    if PAGE % BLOCK_N == 0:
        page = tl.load(bt_row + start // PAGE, mask=start < hi, other=0)
    else:
        pos = start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        page = tl.load(bt_row + pos // PAGE, mask=pos < hi, other=0)  # [BLOCK_N]
    return page.to(tl.int64)


@triton.jit
def _kv_offsets(page, start, kvh, stride_blk, stride_slot, stride_head,
                BLOCK_N: tl.constexpr, PAGE: tl.constexpr):
    """Element offsets ``[BLOCK_N]`` of positions start .. start+BLOCK_N-1 in a paged cache."""
    pos = start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    return page * stride_blk + (pos % PAGE) * stride_slot + kvh * stride_head


@triton.jit
def _attend(acc, l_i, m_i, q, k_ptr, v_ptr, page, start, hi, kvh, prefix, tok, bits, is_tree,
            scale_log2, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
            PAGE: tl.constexpr, MASKED: tl.constexpr, HAS_TREE: tl.constexpr, PREC: tl.constexpr):
    """One KV tile (block ids ``page``) into the running (acc [M, D], l_i [M], m_i [M], log2 units)."""
    offs_d = tl.arange(0, BLOCK_D)  # [D]
    pos = start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    k_off = _kv_offsets(page, start, kvh, stride_kb, stride_ks, stride_kh, BLOCK_N, PAGE)
    v_off = _kv_offsets(page, start, kvh, stride_vb, stride_vs, stride_vh, BLOCK_N, PAGE)
    kv_mask = (pos < hi)[:, None] & (offs_d < HEAD_DIM)[None, :]  # [BLOCK_N, D]
    if MASKED or BLOCK_D != HEAD_DIM:
        k = tl.load(k_ptr + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    else:
        k = tl.load(k_ptr + k_off[:, None] + offs_d[None, :])  # [BLOCK_N, D]
        v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :])  # [BLOCK_N, D]
    s = tl.dot(q, tl.trans(k), input_precision=PREC)  # [M, BLOCK_N] raw scores
    if MASKED:
        j = pos - prefix  # [BLOCK_N] index among the new tokens (negative: prefix)
        seen = j[None, :] <= tok[:, None]  # causal rule
        if HAS_TREE:
            jj = tl.minimum(tl.maximum(j, 0), 63).to(tl.int64)
            bit = ((bits[:, None] >> jj[None, :]) & 1) != 0  # [M, BLOCK_N]
            seen = tl.where(is_tree, bit, seen)
        seen = ((j < 0)[None, :] | seen) & (pos < hi)[None, :]
        s = tl.where(seen, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * scale_log2)  # [M]; scale_log2 > 0 keeps the argmax
    alpha = tl.exp2(m_i - m_new)  # [M]
    p = tl.exp2(s * scale_log2 - m_new[:, None])  # [M, BLOCK_N], one FMA + exp2 per score
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _tree_attn_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, po_ptr, plse_ptr, cnt_ptr,
    bt_ptr, prefix_ptr, indptr_ptr, mask_ptr, use_ptr,
    scale_log2, num_tokens, num_q_heads, q_tiles, num_splits,
    stride_qn, stride_qh, stride_on, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    GROUP: tl.constexpr, TOK_PER_TILE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr,
    HAS_TREE: tl.constexpr, HAS_USE: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
    FUSED_MERGE: tl.constexpr, MERGE_ROWS: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0) // q_tiles
    t0 = (tl.program_id(0) % q_tiles) * TOK_PER_TILE  # first new token of this tile
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    q_start = tl.load(indptr_ptr + b)
    n = tl.load(indptr_ptr + b + 1) - q_start
    if t0 >= n:  # tile past this sequence's tokens (grids come from upper bounds)
        return
    prefix = tl.load(prefix_ptr + b)
    offs_m = tl.arange(0, BLOCK_M)  # [M] row = (token, head in group)
    tok = t0 + offs_m // GROUP  # [M] new-token index within the sequence
    row_ok = (offs_m < TOK_PER_TILE * GROUP) & (tok < n)  # [M]
    head = kvh * GROUP + offs_m % GROUP  # [M] query head
    offs_d = tl.arange(0, BLOCK_D)  # [D]
    d_ok = offs_d < HEAD_DIM
    row = (q_start + tok).to(tl.int64)  # [M] row in q / out
    q = tl.load(q_ptr + row[:, None] * stride_qn + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [M, D]

    if HAS_TREE:
        if HAS_USE:
            is_tree = tl.load(use_ptr + b) != 0
        else:
            is_tree = n > 0  # every sequence, as a runtime bool
        bits = tl.load(mask_ptr + row, mask=row_ok, other=0)  # [M] ancestor bitmasks
    else:
        is_tree = n < 0  # no sequence
        bits = tl.zeros([BLOCK_M], dtype=tl.int64)
    # Visible KV range: all of it for trees; up to the tile's last token for the causal rule.
    hi = tl.where(is_tree, prefix + n, prefix + tl.minimum(n, t0 + TOK_PER_TILE))
    # This split's chunk, a whole number of BLOCK_N tiles.
    chunk = tl.cdiv(tl.cdiv(hi, num_splits), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(hi, lo + chunk)
    full_end = lo + tl.maximum(tl.minimum(hi, prefix) - lo, 0) // BLOCK_N * BLOCK_N

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    page = _tile_pages(bt_row, lo, hi, BLOCK_N, PAGE)  # block ids of the first tile
    for start in range(lo, full_end, BLOCK_N):  # prefix tiles: fully visible
        page_next = _tile_pages(bt_row, start + BLOCK_N, hi, BLOCK_N, PAGE)  # one tile ahead
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_ptr, v_ptr, page, start, hi, kvh, prefix,
                                tok, bits, is_tree, scale_log2, stride_kb, stride_ks, stride_kh,
                                stride_vb, stride_vs, stride_vh, BLOCK_N, HEAD_DIM, BLOCK_D, PAGE,
                                False, HAS_TREE, PREC)
        page = page_next
    for start in range(full_end, hi, BLOCK_N):  # tail tiles: prefix end, new tokens, masks
        page_next = _tile_pages(bt_row, start + BLOCK_N, hi, BLOCK_N, PAGE)
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_ptr, v_ptr, page, start, hi, kvh, prefix,
                                tok, bits, is_tree, scale_log2, stride_kb, stride_ks, stride_kh,
                                stride_vb, stride_vs, stride_vh, BLOCK_N, HEAD_DIM, BLOCK_D, PAGE,
                                True, HAS_TREE, PREC)
        page = page_next

    safe_l = tl.where(l_i > 0, l_i, 1.0)
    out = acc / safe_l[:, None]  # [M, D]
    io_mask = row_ok[:, None] & d_ok[None, :]
    if SPLIT:
        lse = tl.where(l_i > 0, m_i + tl.log2(safe_l), float("-inf"))  # [M], log2 units
        part = (split * num_tokens + row) * num_q_heads + head  # [M] index into [S, N, Hq]
        tl.store(plse_ptr + part, lse, mask=row_ok)
        tl.store(po_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=io_mask)
        if FUSED_MERGE:  # decode: the last split of this (sequence, kv head) merges them all
            tl.debug_barrier()  # every thread's partial is stored before the release below
            tile = tl.program_id(0) * tl.num_programs(1) + kvh
            arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == num_splits - 1:
                tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")  # ready for the next launch
                for t in range(0, tl.minimum(n - t0, TOK_PER_TILE)):  # one token when decoding
                    _merge_decode_tile(po_ptr, plse_ptr, o_ptr, (q_start + t0 + t).to(tl.int64),
                                       kvh, num_tokens, num_q_heads, num_splits, stride_on,
                                       stride_oh, GROUP, MERGE_ROWS, HEAD_DIM, BLOCK_D, BLOCK_S)
    else:
        o_off = row[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=io_mask)


def tree_attention_triton(
    q: Tensor,  # [N, Hq, D]
    k_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: Tensor,  # [B, max_blocks] int32
    prefix_lens: Tensor,  # [B] int32
    qo_indptr: Tensor,  # [B + 1] int32
    tree_mask: Optional[Tensor] = None,  # [N] int64
    use_tree_mask: Optional[Tensor] = None,  # [B] bool
    sm_scale: Optional[float] = None,
    plan: Optional[TreeAttentionPlan] = None,
    out: Optional[Tensor] = None,  # [N, Hq, D]: written in place when given
) -> Tensor:  # [N, Hq, D]
    """Launch only: inputs are assumed checked (see `specdec.kernels.tree_attention`)."""
    n_tok, hq, d = q.shape
    hkv, page = k_cache.shape[2], k_cache.shape[1]
    if plan is None:
        plan = plan_tree_attention(qo_indptr, prefix_lens, hq, hkv, head_dim=d)
    if plan.batch_size != prefix_lens.shape[0] or plan.group != hq // hkv:
        raise ValueError(f"plan built for batch {plan.batch_size}, GQA group {plan.group}; this call "
                         f"has batch {prefix_lens.shape[0]}, group {hq // hkv}: build a new plan")
    out = torch.empty_like(q) if out is None else out
    if n_tok == 0 or plan.batch_size == 0:
        return out
    check_sm_scale(sm_scale)
    scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)) * LOG2E
    split = plan.num_splits > 1
    fused = split and plan.fused_merge
    po, plse = plan.workspace(n_tok, hq, d, q.device) if split else (out, out)
    cnt = plan.counters(hkv, q.device) if fused else prefix_lens  # placeholder pointer when unused
    mask = tree_mask if tree_mask is not None else prefix_lens  # placeholder pointer when unused
    use = use_tree_mask if use_tree_mask is not None else prefix_lens
    block_d = max(16, next_pow2(d))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    _tree_attn_kernel[plan.grid(hkv)](
        q, k_cache, v_cache, out, po, plse, cnt, block_tables, prefix_lens, qo_indptr, mask, use,
        scale, n_tok, hq, plan.q_tiles, plan.num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=plan.group, TOK_PER_TILE=plan.tok_per_tile, BLOCK_M=plan.block_m,
        BLOCK_N=plan.block_n, HEAD_DIM=d, BLOCK_D=block_d, PAGE=page,
        HAS_TREE=tree_mask is not None, HAS_USE=use_tree_mask is not None, SPLIT=split, PREC=prec,
        FUSED_MERGE=fused, MERGE_ROWS=next_pow2(plan.group), BLOCK_S=max(2, next_pow2(plan.num_splits)),
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    if split and not fused:
        _merge_splits[(n_tok, hq)](
            po, plse, out, qo_indptr, plan.batch_size, n_tok, hq, plan.num_splits,
            out.stride(0), out.stride(1),
            HEAD_DIM=d, BLOCK_D=block_d, BLOCK_S=max(2, next_pow2(plan.num_splits)), num_warps=4,
        )
    return out
