"""Split-KV merges of `tree_attention` (flash-decoding, Dao et al. 2023): partial outputs
``o_s [S, N, Hq, D]`` (fp32, each normalised by its own softmax sum) and their log-sum-exps
``lse_s [S, N, Hq]`` (log2 units) combine as ``out = sum_s 2^(lse_s - lse) o_s`` with
``lse = log2 sum_s 2^lse_s``. `_merge_splits` is a kernel of its own (one program per row and
head); `_merge_decode_tile` runs inside the attention kernel, in the split that arrives last.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _merge_decode_tile(po_ptr, plse_ptr, o_ptr, row, kvh, num_tokens, num_q_heads, num_splits,
                       stride_on, stride_oh, GROUP: tl.constexpr, MERGE_ROWS: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """out[row, h] = sum_s 2^(lse_s - lse) o_s for the GROUP heads of one token, all splits loaded
    at once ([S, G, D]: one L2 round trip instead of one per split)."""
    offs_s = tl.arange(0, BLOCK_S)  # [S]
    g = tl.arange(0, MERGE_ROWS)  # [G]
    offs_d = tl.arange(0, BLOCK_D)  # [D]
    head = kvh * GROUP + g  # [G]
    part = (offs_s[:, None] * num_tokens + row) * num_q_heads + head[None, :]  # [S, G]
    ok = (offs_s < num_splits)[:, None] & (g < GROUP)[None, :]  # [S, G]
    d_ok = offs_d < HEAD_DIM
    # .cg: read L2, where the other programs' partials are (L1 is not coherent across SMs).
    lse = tl.load(plse_ptr + part, mask=ok, other=float("-inf"), cache_modifier=".cg")  # [S, G]
    o = tl.load(po_ptr + part[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                mask=ok[:, :, None] & d_ok[None, None, :], other=0.0, cache_modifier=".cg")  # [S, G, D]
    m = tl.max(lse, 0)  # [G]
    w = tl.where(lse > float("-inf"), tl.exp2(lse - m[None, :]), 0.0)  # [S, G]
    out = tl.sum(o * w[:, :, None], 0) / tl.sum(w, 0)[:, None]  # [G, D]
    o_off = row * stride_on + head[:, None] * stride_oh + offs_d[None, :]  # [G, D]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=(g < GROUP)[:, None] & d_ok[None, :])


@triton.jit
def _merge_splits(po_ptr, plse_ptr, o_ptr, indptr_ptr, batch, num_tokens, num_q_heads, num_splits,
                  stride_on, stride_oh,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """out[t, h] = sum_s 2^(lse_s - lse) * o_s with lse = log2 sum_s 2^lse_s (one program per t, h)."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    if t >= tl.load(indptr_ptr + batch):  # padding rows past the last sequence
        return
    offs_s = tl.arange(0, BLOCK_S).to(tl.int64)  # [S]
    offs_d = tl.arange(0, BLOCK_D)  # [D]
    part = (offs_s * num_tokens + t) * num_q_heads + h  # [S]
    s_ok = offs_s < num_splits
    lse = tl.load(plse_ptr + part, mask=s_ok, other=float("-inf"))  # [S]
    m = tl.max(lse, 0)
    w = tl.where(lse > float("-inf"), tl.exp2(lse - m), 0.0)  # [S]
    o = tl.load(po_ptr + part[:, None] * HEAD_DIM + offs_d[None, :],
                mask=s_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)  # [S, D]
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)  # [D]
    tl.store(o_ptr + t * stride_on + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)
