"""Triton kernels that write and move K/V in the paged cache. Semantics: `reference.store_kv_ref`,
`reference.compact_kv_ref`.

`store_kv`: one program per new token copies its ``[Hkv, D]`` K and V rows to their slot (vLLM's
``reshape_and_cache``; negative slots are padding and skipped).

`compact_kv`: after verification the accepted tree nodes slide down to consecutive positions, so
sources and destinations overlap and every read must happen before any write. One launch covers
all layers: program (layer, column chunk) owns that slice of every moved row, copies the sources
into a scratch buffer, waits at a CTA barrier, then writes the destinations - no other program
touches its slice, so the barrier orders all reads before all writes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .plan import next_pow2


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
                     stride_kn, stride_kh, stride_vn, stride_vh,
                     stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
                     HKV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_D: tl.constexpr, PAGE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    if slot < 0:  # padding token
        return
    page, off = slot // PAGE, slot % PAGE
    offs_h = tl.arange(0, BLOCK_H)  # [H]
    offs_d = tl.arange(0, BLOCK_D)  # [D]
    mask = (offs_h < HKV)[:, None] & (offs_d < HEAD_DIM)[None, :]  # [H, D]
    k = tl.load(k_ptr + t * stride_kn + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(v_ptr + t * stride_vn + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    kc = kc_ptr + page * stride_kcb + off * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :]
    vc = vc_ptr + page * stride_vcb + off * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :]
    tl.store(kc, k.to(kc_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(vc_ptr.dtype.element_ty), mask=mask)


def store_kv_triton(
    k: Tensor,  # [N, Hkv, D]
    v: Tensor,  # [N, Hkv, D]
    k_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: Tensor,
    slot_mapping: Tensor,  # [N] int64, negative = skip
) -> None:
    n, hkv, d = k.shape
    if n == 0:
        return
    slot_mapping = slot_mapping.contiguous()  # the kernel reads slot i at offset i (a strided view would misplace K/V)
    _store_kv_kernel[(n,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HKV=hkv, HEAD_DIM=d, BLOCK_H=next_pow2(hkv), BLOCK_D=next_pow2(d), PAGE=k_cache.shape[1],
        num_warps=4,
    )


@triton.jit
def _copy_rows(src_base, dst_base, src_ptr, dst_ptr, num_rows, row_elems, cols, col_ok,
               FROM_CACHE: tl.constexpr, BLOCK_R: tl.constexpr):
    """Rows r of the moved set: cache[src[r]] -> scratch[r] (FROM_CACHE) or scratch[r] -> cache[dst[r]]."""
    for r0 in range(0, num_rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)  # [R]
        src = tl.load(src_ptr + r, mask=r < num_rows, other=-1)  # [R] int64
        dst = tl.load(dst_ptr + r, mask=r < num_rows, other=-1)
        ok = (src >= 0) & (dst >= 0) & (src != dst)  # padding and in-place rows move nothing
        mask = ok[:, None] & col_ok[None, :]  # [R, C]
        scratch = r.to(tl.int64)[:, None] * row_elems + cols[None, :]
        if FROM_CACHE:
            x = tl.load(src_base + src[:, None] * row_elems + cols[None, :], mask=mask)
            tl.store(dst_base + scratch, x, mask=mask)
        else:
            x = tl.load(src_base + scratch, mask=mask)
            tl.store(dst_base + dst[:, None] * row_elems + cols[None, :], x, mask=mask)


@triton.jit
def _compact_kv_kernel(kc_ptr, vc_ptr, tmp_ptr, src_ptr, dst_ptr, num_rows, row_elems,
                       stride_kl, stride_vl, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    layer = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [C] columns of a slot's Hkv*D row
    col_ok = cols < row_elems
    k_base, v_base = kc_ptr + layer * stride_kl, vc_ptr + layer * stride_vl
    k_tmp = tmp_ptr + (2 * layer) * num_rows * row_elems  # [M, Hkv*D] scratch of this layer's K
    v_tmp = k_tmp + num_rows * row_elems
    _copy_rows(k_base, k_tmp, src_ptr, dst_ptr, num_rows, row_elems, cols, col_ok, True, BLOCK_R)
    _copy_rows(v_base, v_tmp, src_ptr, dst_ptr, num_rows, row_elems, cols, col_ok, True, BLOCK_R)
    tl.debug_barrier()  # every read of this slice before any write to it
    _copy_rows(k_tmp, k_base, src_ptr, dst_ptr, num_rows, row_elems, cols, col_ok, False, BLOCK_R)
    _copy_rows(v_tmp, v_base, src_ptr, dst_ptr, num_rows, row_elems, cols, col_ok, False, BLOCK_R)


def _as_layers(cache: Tensor, name: str) -> Tensor:
    """``[..., nb, bs, Hkv, D]`` -> ``[L, nb * bs * Hkv * D]`` view (never a copy: writes must land)."""
    try:
        return cache.view(-1, cache[(0,) * (cache.dim() - 4)].numel())
    except RuntimeError as e:
        raise ValueError(f"{name} {tuple(cache.shape)} with strides {cache.stride()} cannot be viewed "
                         "as [layers, slots * Hkv * D]; pass a contiguous cache") from e


def compact_kv_triton(
    k_cache: Tensor,  # [..., num_blocks, block_size, Hkv, D]
    v_cache: Tensor,
    src_slots: Tensor,  # [M] int64
    dst_slots: Tensor,  # [M] int64
) -> None:
    m = src_slots.shape[0]
    if m == 0:
        return
    kf, vf = _as_layers(k_cache, "k_cache"), _as_layers(v_cache, "v_cache")  # [L, slots * row]
    row = k_cache.shape[-2] * k_cache.shape[-1]  # Hkv * D elements per slot
    tmp = torch.empty(kf.shape[0], 2, m, row, dtype=k_cache.dtype, device=k_cache.device)
    block_c = min(256, next_pow2(row))
    grid = (kf.shape[0], triton.cdiv(row, block_c))
    _compact_kv_kernel[grid](kf, vf, tmp, src_slots, dst_slots, m, row, kf.stride(0), vf.stride(0),
                             BLOCK_R=16, BLOCK_C=block_c, num_warps=4)
