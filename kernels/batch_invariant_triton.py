"""Batch-invariant ops on a GPU (``engine.exact=true`` on CUDA): Triton kernels whose reduction
order is fixed by their code, never by the number of rows (the rules are in
kernels/batch_invariant.py; the CPU's ops are there).

torch's CUDA ops pick a kernel, a tile and a split of the reduction from the whole tensor's shape
(cuBLAS heuristics, split-K, the reduction kernels' launch configuration), so a row's last bits
depend on how many rows share its step. Each kernel here computes one output row the same way
whatever else is launched with it:

* `linear_bi_cuda`: ``x @ w.T`` in fixed tiles (``BM x BN``), each output element summing its
  ``K`` products in ``BK`` chunks in order (``tl.dot`` per chunk into a float32 accumulator); no
  split-K, no configuration chosen by shape (M is not specialised on either);
* `rms_norm_bi_cuda`: one program per row, the row's sum of squares in one block;
* `attention_bi_cuda`: one program per (row, KV head): the row's visible keys in logical order
  (`batch_invariant_attention.key_lists`: a tree node's ancestors where a decode at its position
  has the tokens before it), in blocks of ``KEY_BLOCK`` from position 0, an online softmax over
  the blocks in order. A query at logical position p thus reads the same keys in the same blocks
  as a one-token decode at p: its output is bitwise the decode's.

Tested under the Triton interpreter on the CPU (tests/kernels/test_batch_invariant_triton.py:
each row alone equals the row in a batch, bitwise, and the ops match their references) and on
the GPU by tests/engine/test_exact.py's CUDA cases.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .batch_invariant_attention import KEY_BLOCK

BM, BN, BK = 16, 64, 64  # the GEMM's tile: fixed for every shape (a decode wastes rows, not reads)


@triton.jit(do_not_specialize=["M"])
def _linear_kernel(x, w, b, out, M, N, K, sxm, swn, som,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K in order, one chunk at a time
        kk = k0 + rk
        a = tl.load(x + rm[:, None] * sxm + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        bt = tl.load(w + rn[None, :] * swn + kk[:, None], mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0)
        acc += tl.dot(a, bt)  # [BLOCK_M, BLOCK_K] @ [BLOCK_K, BLOCK_N]
    if HAS_BIAS:
        acc += tl.load(b + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out + rm[:, None] * som + rn[None, :], acc.to(out.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def linear_bi_cuda(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x [M, K] @ weight [N, K]^T (+ bias)`` -> ``[M, N]`` in x's dtype; row i's result does not
    depend on M."""
    x, weight = x.contiguous(), weight.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    out = x.new_empty(m, n)
    if m == 0:
        return out
    grid = (triton.cdiv(m, BM), triton.cdiv(n, BN))
    _linear_kernel[grid](x, weight, bias if bias is not None else weight, out, m, n, k, x.stride(0),
                         weight.stride(0), out.stride(0), HAS_BIAS=bias is not None,
                         BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
    return out


@triton.jit(do_not_specialize=["M"])
def _rms_norm_kernel(x, w, out, M, H, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    h = tl.load(x + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, 0) / H + eps)
    y = (h * rstd).to(out.dtype.element_ty).to(tl.float32)  # as RMSNorm: normed in float32, cast, then scaled
    wt = tl.load(w + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + row * H + cols, (wt * y).to(out.dtype.element_ty), mask=mask)


def rms_norm_bi_cuda(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim of ``x [..., H]``, each row alone (one program per row)."""
    h = x.shape[-1]
    flat = x.contiguous().view(-1, h)
    out = torch.empty_like(flat)
    if flat.shape[0]:
        _rms_norm_kernel[(flat.shape[0],)](flat, weight.contiguous(), out, flat.shape[0], h, eps,
                                           BLOCK=triton.next_power_of_2(h))
    return out.view(x.shape)


@triton.jit(do_not_specialize=["N"])
def _attention_kernel(q, kc, vc, slots, lengths, out, N, scale, sq_n, sq_h, skv_s, skv_h, ss_n, so_n, so_h,
                      G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, KB: tl.constexpr):
    n, h = tl.program_id(0), tl.program_id(1)
    g, d = tl.arange(0, GP), tl.arange(0, D)
    heads = h * G + g  # the query heads of KV head h (padded to GP rows for tl.dot)
    qv = tl.load(q + n * sq_n + heads[:, None] * sq_h + d[None, :], mask=(g < G)[:, None], other=0.0)  # [GP, D]
    length = tl.load(lengths + n)
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    for j in range(0, length, KB):  # key blocks from logical position 0, in order
        offs = j + tl.arange(0, KB)
        valid = offs < length
        s = tl.load(slots + n * ss_n + offs, mask=valid, other=0)  # [KB] flat cache slots
        k = tl.load(kc + s[:, None] * skv_s + h * skv_h + d[None, :], mask=valid[:, None], other=0.0)  # [KB, D]
        sc = tl.dot(qv, tl.trans(k)) * scale  # [GP, KB] float32
        sc = tl.where(valid[None, :], sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vc + s[:, None] * skv_s + h * skv_h + d[None, :], mask=valid[:, None], other=0.0)  # [KB, D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(out + n * so_n + heads[:, None] * so_h + d[None, :], o.to(out.dtype.element_ty), mask=(g < G)[:, None])


def attention_bi_cuda(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, lengths: Tensor,
                      sm_scale: Optional[float] = None) -> Tensor:
    """``q [N, Hq, D]``, caches ``[num_blocks, block_size, Hkv, D]``, each row's visible keys
    ``slots [N, L]`` (flat cache slots in logical order; `key_lists`) and their count ``lengths
    [N]`` -> ``[N, Hq, D]``."""
    n, hq, d = q.shape
    hkv = k_cache.shape[2]
    if d & (d - 1) or d < 16:
        raise ValueError(f"exact attention on CUDA needs a head dim that is a power of two >= 16; got {d}")
    q = q.contiguous()
    kf, vf = k_cache.flatten(0, 1), v_cache.flatten(0, 1)  # [slots, Hkv, D] (views)
    slots, lengths = slots.contiguous(), lengths.contiguous()
    out = torch.empty_like(q)
    if n == 0:
        return out
    g = hq // hkv
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    _attention_kernel[(n, hkv)](q, kf, vf, slots, lengths, out, n, scale, q.stride(0), q.stride(1),
                                kf.stride(0), kf.stride(1), slots.stride(0), out.stride(0), out.stride(1),
                                G=g, GP=max(16, triton.next_power_of_2(g)), D=d, KB=KEY_BLOCK)
    return out
