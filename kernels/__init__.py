"""Attention and KV-cache kernels over the paged cache.

One entry point per operation; each picks the Triton kernel for CUDA tensors and the plain-torch
reference (`specdec.kernels.reference`) otherwise. Contracts (shapes, masking rule) are documented
in `reference.py`.
"""
from __future__ import annotations

from .reference import compact_kv_ref, store_kv_ref, tree_attention_ref

__all__ = ["tree_attention", "store_kv", "compact_kv", "tree_attention_ref", "store_kv_ref", "compact_kv_ref"]


def tree_attention(q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr,
                   tree_mask=None, use_tree_mask=None, sm_scale=None):
    if q.is_cuda:
        from .tree_attention import tree_attention_triton
        return tree_attention_triton(q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr,
                                     tree_mask, use_tree_mask, sm_scale)
    return tree_attention_ref(q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr,
                              tree_mask, use_tree_mask, sm_scale)


def store_kv(k, v, k_cache, v_cache, slot_mapping):
    if k.is_cuda:
        from .kv_cache import store_kv_triton
        return store_kv_triton(k, v, k_cache, v_cache, slot_mapping)
    return store_kv_ref(k, v, k_cache, v_cache, slot_mapping)


def compact_kv(k_cache, v_cache, src_slots, dst_slots):
    if k_cache.is_cuda:
        from .kv_cache import compact_kv_triton
        return compact_kv_triton(k_cache, v_cache, src_slots, dst_slots)
    return compact_kv_ref(k_cache, v_cache, src_slots, dst_slots)
