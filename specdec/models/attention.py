"""Paged attention as a model layer sees it: per-step metadata and one call per layer.

The engine's ModelRunner builds one `AttnMetadata` per step for the whole ragged batch (all
sequences' new tokens concatenated, N rows, no padding); every layer then stores its new K/V into
the paged cache and attends over cache + new tokens through `specdec.kernels` (the Triton kernel on
CUDA, the plain-torch reference on CPU; masking rules in `kernels/reference.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from specdec.kernels import TreeAttentionPlan, plan_tree_attention, store_kv, tree_attention
from specdec.kernels.batch_invariant import KeyLists, attention_bi, key_lists
from specdec.kernels.torch_paged import TorchPagedPlan, plan_torch_paged, tree_attention_torch


@dataclass
class AttnMetadata:
    qo_indptr: Tensor  # [B + 1] int32: new tokens of seq b are rows qo_indptr[b]:qo_indptr[b+1]
    prefix_lens: Tensor  # [B] int32: tokens of seq b already in the cache before this step
    block_tables: Tensor  # [B, max_blocks] int32
    slot_mapping: Tensor  # [N] int64: flat cache slot of each new token (negative = don't store)
    tree_mask: Optional[Tensor] = None  # [N] int64 ancestor bitmasks (see kernels/reference.py)
    use_tree_mask: Optional[Tensor] = None  # [B] bool: which sequences use tree_mask (others causal)
    max_q_len: Optional[int] = None  # host upper bound of new tokens per sequence
    max_kv_len: Optional[int] = None  # host upper bound of prefix_len + new tokens
    plans: dict = field(default_factory=dict, repr=False)  # (Hq, Hkv) -> plan, built on first use

    def plan_for(self, num_q_heads: int, num_kv_heads: int, head_dim: int) -> Optional[TreeAttentionPlan]:
        """The kernel's launch plan, shared by every layer of one forward. Only CUDA uses one, and
        only when the host hints are set (otherwise the kernel reads lengths from the device).
        The metadata is per step: do not change its tensors after the first layer ran."""
        if not self.qo_indptr.is_cuda or self.max_q_len is None or self.max_kv_len is None:
            return None
        key = (num_q_heads, num_kv_heads, head_dim)
        if key not in self.plans:
            self.plans[key] = plan_tree_attention(self.qo_indptr, self.prefix_lens, num_q_heads,
                                                  num_kv_heads, self.max_q_len, self.max_kv_len,
                                                  head_dim=head_dim)
        return self.plans[key]

    def exact_keys(self, block_size: int) -> KeyLists:
        """Each row's visible keys in logical order (batch-invariant attention), for every layer."""
        return self._host_plan(key_lists, block_size)

    def cpu_plan(self, block_size: int) -> TorchPagedPlan:
        """The CPU fast path's plan (kernels/torch_paged.py), shared by every layer."""
        return self._host_plan(plan_torch_paged, block_size)

    def _host_plan(self, build, block_size: int):
        """``build(qo_indptr, prefix_lens, block_tables, block_size, tree_mask, use_tree_mask)``,
        once per step and block size."""
        key = (build.__name__, block_size)
        if key not in self.plans:
            self.plans[key] = build(self.qo_indptr, self.prefix_lens, self.block_tables, block_size,
                                    self.tree_mask, self.use_tree_mask)
        return self.plans[key]


def paged_attention(
    q: Tensor,  # [N, Hq, D] (rope applied)
    k: Tensor,  # [N, Hkv, D] (rope applied)
    v: Tensor,  # [N, Hkv, D]
    k_cache: Tensor,  # [num_blocks, block_size, Hkv, D] this layer's cache
    v_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    meta: AttnMetadata,
    sm_scale: Optional[float] = None,
    exact: bool = False,
) -> Tensor:  # [N, Hq, D]
    """Store this step's K/V at ``meta.slot_mapping``, then attend (prefix + allowed new tokens).
    ``exact``: batch-invariant attention (kernels/batch_invariant.py on the CPU,
    kernels/batch_invariant_triton.py on a GPU)."""
    store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    if exact:
        keys = meta.exact_keys(k_cache.shape[1])
        if q.is_cuda:  # one Triton program per (row, KV head), keys in logical order
            from specdec.kernels.batch_invariant_triton import attention_bi_cuda

            return attention_bi_cuda(q, k_cache, v_cache, keys.slots, keys.lengths, sm_scale)
        return attention_bi(q, k_cache, v_cache, keys, sm_scale)
    if not q.is_cuda:  # batched SDPA over a per-step plan; equals the reference (tested)
        return tree_attention_torch(q, k_cache, v_cache, meta.cpu_plan(k_cache.shape[1]), sm_scale)
    plan = meta.plan_for(q.shape[1], k.shape[1], q.shape[2])
    return tree_attention(q, k_cache, v_cache, meta.block_tables, meta.prefix_lens,
                          meta.qo_indptr, meta.tree_mask, meta.use_tree_mask, sm_scale,
                          max_q_len=meta.max_q_len, max_kv_len=meta.max_kv_len, plan=plan)


def empty_cache(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                dtype: torch.dtype = torch.float32, device="cpu") -> tuple[Tensor, Tensor]:
    """Zeroed ``k_cache, v_cache [L, num_blocks, block_size, Hkv, D]`` (tests, drafters, tools)."""
    shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
    return (torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device))
