"""The entry points of specdec.kernels: each checks its inputs, then runs the Triton kernel for
CUDA tensors and the plain-torch reference (`reference.py`) otherwise. Import them from
`specdec.kernels`."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .checks import (check_attention_inputs, check_compact_inputs, check_sm_scale,
                     check_store_inputs, validate_attention_lengths, validate_slots)
from .plan import TreeAttentionPlan, plan_tree_attention
from .reference import (add_rms_norm_ref, compact_kv_ref, rope_ref, silu_mul_ref, store_kv_ref,
                        tree_attention_ref)

try:
    from .kv_cache import compact_kv_triton, store_kv_triton
    from .layer_ops import add_rms_norm_triton, rope_triton, silu_mul_triton
    from .tree_attention import tree_attention_triton
except ImportError:  # no triton on this platform: the references serve CPU tensors
    compact_kv_triton = store_kv_triton = tree_attention_triton = None
    add_rms_norm_triton = rope_triton = silu_mul_triton = None


def tree_attention(
    q: Tensor,  # [N, Hq, D]
    k_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: Tensor,  # [B, max_blocks] int32
    prefix_lens: Tensor,  # [B] int32
    qo_indptr: Tensor,  # [B + 1] int32
    tree_mask: Optional[Tensor] = None,  # [N] int64 ancestor bitmasks (None: causal everywhere)
    use_tree_mask: Optional[Tensor] = None,  # [B] bool (None: tree_mask applies to all)
    sm_scale: Optional[float] = None,
    *,
    max_q_len: Optional[int] = None,  # host upper bound of new tokens per sequence
    max_kv_len: Optional[int] = None,  # host upper bound of prefix_len + new tokens
    plan: Optional[TreeAttentionPlan] = None,  # from plan_tree_attention, reused across layers
    validate: Optional[bool] = None,  # sync-ing checks; None: only when no plan/hints are given
    out: Optional[Tensor] = None,  # [N, Hq, D] written in place when given
) -> Tensor:  # [N, Hq, D]; rows past qo_indptr[-1] are left unwritten
    if plan is not None:
        max_q_len = plan.max_q_len if max_q_len is None else max_q_len
        max_kv_len = plan.max_kv_len if max_kv_len is None else max_kv_len
    check_attention_inputs(q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr, tree_mask,
                           use_tree_mask, max_q_len, max_kv_len)
    check_sm_scale(sm_scale)
    if validate or (validate is None and (max_q_len is None or max_kv_len is None)):
        validate_attention_lengths(q, k_cache, block_tables, prefix_lens, qo_indptr, tree_mask,
                                   use_tree_mask, max_q_len, max_kv_len)
    if q.is_cuda:
        if plan is None:
            plan = plan_tree_attention(qo_indptr, prefix_lens, q.shape[1], k_cache.shape[2],
                                       max_q_len, max_kv_len, head_dim=q.shape[2])
        return tree_attention_triton(q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr,
                                     tree_mask, use_tree_mask, sm_scale, plan=plan, out=out)
    res = tree_attention_ref(q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr,
                             tree_mask, use_tree_mask, sm_scale)
    return res if out is None else out.copy_(res)


def store_kv(
    k: Tensor,  # [N, Hkv, D]
    v: Tensor,  # [N, Hkv, D]
    k_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: Tensor,
    slot_mapping: Tensor,  # [N] int64 flat slots; negative = skip (padding)
    *,
    validate: bool = False,  # check slots against the cache size (a sync)
) -> None:
    check_store_inputs(k, v, k_cache, v_cache, slot_mapping)
    if validate:
        validate_slots(slot_mapping, k_cache.shape[0] * k_cache.shape[1], "slot_mapping", unique=True)
    if k.is_cuda:
        return store_kv_triton(k, v, k_cache, v_cache, slot_mapping)
    return store_kv_ref(k, v, k_cache, v_cache, slot_mapping)


def compact_kv(
    k_cache: Tensor,  # [..., num_blocks, block_size, Hkv, D], e.g. [L, ...]: all layers at once
    v_cache: Tensor,
    src_slots: Tensor,  # [M] int64; negative = skip the pair
    dst_slots: Tensor,  # [M] int64; negative = skip the pair
    *,
    validate: bool = False,  # check slot ranges and unique destinations (a sync)
) -> None:
    check_compact_inputs(k_cache, v_cache, src_slots, dst_slots)
    if validate:
        slots = k_cache.shape[-4] * k_cache.shape[-3]
        validate_slots(src_slots, slots, "src_slots")
        validate_slots(dst_slots, slots, "dst_slots", unique=True)
    if k_cache.is_cuda:
        return compact_kv_triton(k_cache, v_cache, src_slots, dst_slots)
    return compact_kv_ref(k_cache, v_cache, src_slots, dst_slots)


# ---- fused layer ops (kernels/layer_ops.py); shapes are the model's, so checks stay light ----

def add_rms_norm(x: Tensor, weight: Tensor, eps: float, residual: Optional[Tensor] = None
                 ) -> tuple[Tensor, Tensor]:
    """``x [N, H]`` (+ ``residual [N, H]``) -> ``(rms_norm(residual + x) * weight, residual + x)``."""
    if x.dim() != 2 or x.stride(-1) != 1 or weight.shape != (x.shape[1],):
        raise ValueError(f"add_rms_norm needs x [N, H] with contiguous rows and weight [H]; got "
                         f"{tuple(x.shape)} (strides {x.stride()}) and {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.stride(-1) != 1):
        raise ValueError(f"residual must be [N, H] = {tuple(x.shape)} with contiguous rows; got "
                         f"{tuple(residual.shape)}")
    if x.is_cuda:
        return add_rms_norm_triton(x, weight, eps, residual)
    return add_rms_norm_ref(x, weight, eps, residual)


def rope_(x: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> Tensor:
    """In place: rotary embedding of the first ``num_heads`` heads of ``x [N, >= num_heads * D]``
    by ``cos, sin [N, D]``; returns ``x``."""
    n, d = cos.shape
    if (x.dim() != 2 or x.shape[0] != n or x.shape[1] < num_heads * d or x.stride(-1) != 1
            or sin.shape != cos.shape or d % 2):
        raise ValueError(f"rope_ needs x [N, >= {num_heads} * D] with contiguous rows and cos, sin "
                         f"[N, D] (D even); got x {tuple(x.shape)}, cos {tuple(cos.shape)}, "
                         f"sin {tuple(sin.shape)}")
    if x.is_cuda:
        rope_triton(x, cos, sin, num_heads)
    else:
        rope_ref(x, cos, sin, num_heads)
    return x


def silu_mul(x: Tensor) -> Tensor:
    """``x [N, 2I]`` = (gate | up) -> ``silu(gate) * up [N, I]``."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(-1) != 1:
        raise ValueError(f"silu_mul needs x [N, 2I] with contiguous rows; got {tuple(x.shape)}")
    if x.is_cuda:
        return silu_mul_triton(x)
    return silu_mul_ref(x)
