"""Per-node statistics of the target's logits in one pass over ``[B, T, V]``: the argmax (greedy)
and the log-sum-exp of the kept, temperature-scaled logits (sampling), for every node at once.

With them, p at node n of token c is ``exp(logits[n, c] / t - lse[n])`` when c is kept
(``logits[n, c] / t >= thr[n]``), else 0: the tree's candidates need a few gathers, not a
``[B, T, V]`` softmax. This pass is the verifier's one large read (1 GB at B = 32, T = 64,
V = 128,256 in fp32); torch would need 5 passes and two temporaries of that size for a
log-sum-exp (amax, subtract, exp, sum), so CUDA uses a small Triton kernel
(`row_stats_triton.py`) that streams each row once with an online max/sum (Milakov & Gimelshein,
2018, "Online normalizer calculation for softmax"). `row_stats_ref` is its reference.

Rows whose ``need`` flag is False (leaves: their distribution is never asked for by the tree
tests) are skipped and get argmax 0, lse 0, so the pass reads only internal nodes.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor


def row_stats(logits: Tensor, scale: Optional[Tensor], thr: Optional[Tensor] = None, need: Optional[Tensor] = None,
              want_lse: bool = True, impl: str = "auto") -> tuple[Tensor, Optional[Tensor]]:
    """``logits [B, T, V]`` (last dim contiguous for the kernel), ``scale [B]`` float32 (1 /
    temperature; may be None without ``want_lse``), ``thr [B, T]`` float32 (smallest kept scaled logit, None: keep all), ``need
    [B, T]`` bool (None: every row). Returns ``argmax [B, T]`` int64 (first index on ties, as
    torch.argmax) and ``lse [B, T]`` float32 of ``logits * scale`` over the kept entries (None
    unless ``want_lse``); rows not needed hold 0.

    ``impl``: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "torch", or "auto" (Triton on
    CUDA when it imports, else torch; the SPECDEC_VERIFIER_STATS environment variable may force
    "torch")."""
    if impl == "auto":
        impl = "triton" if logits.is_cuda and _triton_ok() else "torch"
    if impl == "triton":
        from .row_stats_triton import row_stats_triton
        return row_stats_triton(logits, scale, thr, need, want_lse)
    return row_stats_ref(logits, scale, thr, need, want_lse)


def row_stats_ref(logits: Tensor, scale: Optional[Tensor], thr: Optional[Tensor] = None, need: Optional[Tensor] = None,
                  want_lse: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """Plain torch: the same outputs as the kernel (up to float summation order)."""
    argmax = logits.argmax(dim=-1)  # [B, T]
    lse = None
    if want_lse:
        scaled = logits.float() * scale[:, None, None]  # [B, T, V]
        if thr is not None:
            scaled = scaled.masked_fill(scaled < thr[:, :, None], float("-inf"))
        lse = torch.logsumexp(scaled, dim=-1)  # [B, T]
    if need is not None:
        argmax = torch.where(need, argmax, 0)
        lse = None if lse is None else torch.where(need, lse, 0.0)
    return argmax, lse


_TRITON: Optional[bool] = None


def _triton_ok() -> bool:
    global _TRITON
    if os.environ.get("SPECDEC_VERIFIER_STATS", "auto") == "torch":
        return False
    if _TRITON is None:
        try:
            import triton  # noqa: F401
            _TRITON = True
        except ImportError:
            _TRITON = False
    return _TRITON
