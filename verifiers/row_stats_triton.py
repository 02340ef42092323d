"""Triton kernel for `row_stats`: one program per node row streams ``V`` logits once, keeping a
per-lane running argmax and an online (max, sum of exp) of the kept scaled logits (Milakov &
Gimelshein, 2018), combined across lanes at the end. Memory-bound: the read of the needed rows is
the whole cost. Tested against `row_stats_ref` on CPU under TRITON_INTERPRET=1 and on CUDA."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 4096  # logits per loop step: 16 fp32 per thread at 8 warps (four 16-byte loads)
NUM_WARPS = 8


@triton.jit
def _row_stats_kernel(x_ptr, stride_b, stride_t, nodes, vocab, scale_ptr, thr_ptr, need_ptr,
                      argmax_ptr, lse_ptr, HAS_THR: tl.constexpr, HAS_NEED: tl.constexpr,
                      WANT_LSE: tl.constexpr, BLOCK: tl.constexpr, NUM_STEPS: tl.constexpr):
    row = tl.program_id(0)  # = b * nodes + t
    b = row // nodes
    t = row % nodes
    needed = True
    if HAS_NEED:
        needed = tl.load(need_ptr + row) != 0
    if needed:
        base = x_ptr + b.to(tl.int64) * stride_b + t.to(tl.int64) * stride_t
        scale = 1.0
        thr = float("-inf")
        if WANT_LSE:
            scale = tl.load(scale_ptr + b)
        if HAS_THR:
            thr = tl.load(thr_ptr + row)
        offs = tl.arange(0, BLOCK)
        best = tl.full([BLOCK], float("-inf"), tl.float32)  # per-lane max of the raw logits
        best_idx = tl.zeros([BLOCK], tl.int32)  # its first index (lanes see indices ascending)
        m = tl.full([BLOCK], float("-inf"), tl.float32)  # per-lane running max of kept scaled
        s = tl.zeros([BLOCK], tl.float32)  # per-lane sum of exp(kept - m)
        for step in range(NUM_STEPS):  # = cdiv(vocab, BLOCK), a constant per vocabulary
            idx = step * BLOCK + offs
            inb = idx < vocab
            x = tl.load(base + idx, mask=inb, other=float("-inf")).to(tl.float32)
            better = x > best
            best = tl.where(better, x, best)
            best_idx = tl.where(better, idx, best_idx)
            if WANT_LSE:
                y = x * scale
                y = tl.where(inb & (y >= thr), y, float("-inf"))
                m_new = tl.maximum(m, y)
                alpha = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_new))
                e = tl.where(y == float("-inf"), 0.0, tl.exp(y - m_new))
                s = s * alpha + e
                m = m_new
        top = tl.max(best, axis=0)
        arg = tl.min(tl.where(best == top, best_idx, vocab), axis=0)  # first index of the max
        tl.store(argmax_ptr + row, arg.to(tl.int64))
        if WANT_LSE:
            mx = tl.max(m, axis=0)
            tot = tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp(m - mx)), axis=0)
            tl.store(lse_ptr + row, mx + tl.log(tot))
    else:
        tl.store(argmax_ptr + row, tl.zeros([], tl.int64))
        if WANT_LSE:
            tl.store(lse_ptr + row, tl.zeros([], tl.float32))


def row_stats_triton(logits: Tensor, scale: Optional[Tensor], thr: Optional[Tensor] = None, need: Optional[Tensor] = None,
                     want_lse: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """Same contract as `row_stats.row_stats_ref`."""
    batch, nodes, vocab = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    dev = logits.device
    argmax = torch.empty((batch, nodes), dtype=torch.int64, device=dev)  # [B, T]
    lse = torch.empty((batch, nodes), dtype=torch.float32, device=dev) if want_lse else None  # [B, T]
    if batch * nodes == 0:
        return argmax, lse
    # unused pointers get a dummy tensor: the kernel never reads them
    scale = scale.float().contiguous() if want_lse else argmax  # [B]
    thr_arg = thr.float().contiguous() if thr is not None else scale  # [B, T]
    need_arg = need.contiguous().view(torch.uint8) if need is not None else scale  # [B, T]
    block = min(BLOCK, max(16, triton.next_power_of_2(vocab)))
    _row_stats_kernel[(batch * nodes,)](
        logits, logits.stride(0), logits.stride(1), nodes, vocab, scale, thr_arg, need_arg, argmax,
        lse if lse is not None else scale, HAS_THR=thr is not None, HAS_NEED=need is not None,
        WANT_LSE=want_lse, BLOCK=block, NUM_STEPS=triton.cdiv(vocab, block),
        num_warps=NUM_WARPS if block >= 1024 else 4)
    return argmax, lse
