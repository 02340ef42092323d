"""Input checks for the kernels' wrappers: each error says what was wrong and how to fix it.

Two tiers. `check_*` functions read only shapes, dtypes and host ints: cheap, run on every call.
`validate_*` functions read device tensors (a sync), so they run only when the caller asks
(``validate=True``: tests, first calls, the convenience path that syncs anyway) - never on every
layer of the hot path.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .plan import MAX_TREE_NODES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _check_index(t: Tensor, name: str, ndim: int, dtype: torch.dtype, device) -> None:
    _require(t.dim() == ndim, f"{name} must have {ndim} dim(s); got shape {tuple(t.shape)}")
    _require(t.dtype == dtype, f"{name} must be {dtype} (convert with .to({dtype})); got {t.dtype}")
    _require(t.device == device, f"{name} is on {t.device} but q is on {device}; move it there")


def check_head_dim(d: int) -> None:
    _require(MIN_HEAD_DIM <= d <= MAX_HEAD_DIM and d % 8 == 0,
             f"head_dim={d} unsupported: need a multiple of 8 in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")


def check_cache_pair(k_cache: Tensor, v_cache: Tensor, lead: int = 0) -> None:
    """``[*lead dims, num_blocks, block_size, Hkv, D]``, same shape/dtype/device, rows contiguous."""
    want = 4 + lead
    _require(k_cache.dim() == want, f"k_cache must have {want} dims [{'L, ' * lead}num_blocks, "
             f"block_size, num_kv_heads, head_dim]; got shape {tuple(k_cache.shape)}")
    _require(k_cache.shape == v_cache.shape, f"k_cache {tuple(k_cache.shape)} and v_cache "
             f"{tuple(v_cache.shape)} must have the same shape")
    _require(k_cache.dtype == v_cache.dtype and k_cache.device == v_cache.device,
             f"k_cache ({k_cache.dtype}, {k_cache.device}) and v_cache ({v_cache.dtype}, "
             f"{v_cache.device}) must share dtype and device")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        _require(c.stride(-1) == 1, f"{name}'s last dim must be contiguous (stride 1)")
    check_head_dim(k_cache.shape[-1])


def _attention_inputs_ok(q, kc, vc, bt, pl, ip, tm, use, max_q_len, max_kv_len) -> bool:
    """The whole cheap check as one boolean: a few µs per layer, no string formatting."""
    dev, dt, ks = q.device, q.dtype, kc.shape
    i32 = torch.int32
    b = pl.shape[0] if pl.dim() == 1 else -1
    ok = (q.dim() == 3 and len(ks) == 4 and vc.shape == ks and dt in FLOAT_DTYPES
          and kc.dtype == dt and vc.dtype == dt and kc.device == dev and vc.device == dev
          and q.stride(-1) == 1 and kc.stride(-1) == 1 and vc.stride(-1) == 1
          and q.shape[2] == ks[3] and MIN_HEAD_DIM <= ks[3] <= MAX_HEAD_DIM and ks[3] % 8 == 0
          and q.shape[1] % ks[2] == 0
          and pl.dtype == i32 and ip.dtype == i32 and bt.dtype == i32 and ip.dim() == 1
          and bt.dim() == 2 and ip.shape[0] == b + 1 and bt.shape[0] == b
          and pl.device == dev and ip.device == dev and bt.device == dev)
    if ok and tm is not None:
        ok = tm.dtype == torch.int64 and tm.dim() == 1 and tm.shape[0] == q.shape[0] and tm.device == dev
        if ok and use is None and max_q_len is not None:
            ok = max_q_len <= MAX_TREE_NODES
    if ok and use is not None:
        ok = (tm is not None and use.dtype == torch.bool and use.dim() == 1 and use.shape[0] == b
              and use.device == dev)
    if ok and max_kv_len is not None:
        ok = max_kv_len <= bt.shape[1] * ks[1]
    return ok


def check_sm_scale(sm_scale: Optional[float]) -> None:
    if sm_scale is not None and not sm_scale > 0:
        raise ValueError(f"sm_scale={sm_scale} must be > 0 (the kernel takes row maxima of unscaled "
                         "scores); leave it None for 1/sqrt(head_dim)")


def check_attention_inputs(q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr, tree_mask,
                           use_tree_mask, max_q_len: Optional[int], max_kv_len: Optional[int]) -> None:
    args = (q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr, tree_mask, use_tree_mask,
            max_q_len, max_kv_len)
    if not _attention_inputs_ok(*args):
        _explain_attention_inputs(*args)  # raises the specific error
        raise ValueError("tree_attention: invalid inputs")  # unreachable unless the two disagree


def _explain_attention_inputs(q, k_cache, v_cache, block_tables, prefix_lens, qo_indptr, tree_mask,
                              use_tree_mask, max_q_len, max_kv_len) -> None:
    _require(q.dim() == 3, f"q must be [N, num_q_heads, head_dim]; got shape {tuple(q.shape)}")
    check_cache_pair(k_cache, v_cache)
    _require(q.dtype in FLOAT_DTYPES, f"q dtype {q.dtype} unsupported; use one of {FLOAT_DTYPES}")
    _require(q.dtype == k_cache.dtype, f"q ({q.dtype}) and the KV cache ({k_cache.dtype}) must "
             "share a dtype")
    _require(q.device == k_cache.device, f"q on {q.device} but the KV cache on {k_cache.device}")
    _require(q.stride(-1) == 1, "q's last dim must be contiguous (stride 1)")
    hq, d, hkv = q.shape[1], q.shape[2], k_cache.shape[2]
    _require(d == k_cache.shape[3], f"q head_dim {d} != cache head_dim {k_cache.shape[3]}")
    _require(hq % hkv == 0, f"num_q_heads={hq} must be a multiple of num_kv_heads={hkv}")
    b = prefix_lens.shape[0] if prefix_lens.dim() == 1 else -1
    _check_index(prefix_lens, "prefix_lens", 1, torch.int32, q.device)
    _check_index(qo_indptr, "qo_indptr", 1, torch.int32, q.device)
    _check_index(block_tables, "block_tables", 2, torch.int32, q.device)
    _require(qo_indptr.shape[0] == b + 1, f"qo_indptr has {qo_indptr.shape[0]} entries; "
             f"need batch + 1 = {b + 1} (prefix_lens has {b})")
    _require(block_tables.shape[0] == b, f"block_tables has {block_tables.shape[0]} rows; need "
             f"one per sequence ({b})")
    if tree_mask is not None:
        _check_index(tree_mask, "tree_mask", 1, torch.int64, q.device)
        _require(tree_mask.shape[0] == q.shape[0], f"tree_mask has {tree_mask.shape[0]} entries; "
                 f"need one per query row ({q.shape[0]})")
    if use_tree_mask is not None:
        _check_index(use_tree_mask, "use_tree_mask", 1, torch.bool, q.device)
        _require(use_tree_mask.shape[0] == b, f"use_tree_mask has {use_tree_mask.shape[0]} "
                 f"entries; need one per sequence ({b})")
        _require(tree_mask is not None, "use_tree_mask given without tree_mask")
    if tree_mask is not None and use_tree_mask is None and max_q_len is not None:
        _require(max_q_len <= MAX_TREE_NODES, f"max_q_len={max_q_len} with a tree bitmask on "
                 f"every sequence: a uint64 mask covers at most {MAX_TREE_NODES} nodes; pass "
                 "use_tree_mask to mark the causal (prefill) sequences")
    if max_kv_len is not None:
        cap = block_tables.shape[1] * k_cache.shape[1]
        _require(max_kv_len <= cap, f"max_kv_len={max_kv_len} exceeds the block tables' capacity "
                 f"{block_tables.shape[1]} blocks x {k_cache.shape[1]} = {cap} tokens; widen "
                 "block_tables")


def validate_attention_lengths(q, k_cache, block_tables, prefix_lens, qo_indptr, tree_mask,
                               use_tree_mask, max_q_len: Optional[int], max_kv_len: Optional[int]) -> None:
    """Checks that read the metadata's values (one device->host copy)."""
    indptr, prefix = qo_indptr.tolist(), prefix_lens.tolist()
    _require(indptr[0] == 0, f"qo_indptr must start at 0; got {indptr[0]}")
    lens = [indptr[i + 1] - indptr[i] for i in range(len(prefix))]
    _require(all(n >= 0 for n in lens), f"qo_indptr must be non-decreasing; got {indptr}")
    _require(indptr[-1] <= q.shape[0], f"qo_indptr ends at {indptr[-1]} but q has {q.shape[0]} rows")
    _require(all(p >= 0 for p in prefix), f"prefix_lens must be >= 0; got {prefix}")
    kv = [p + n for p, n in zip(prefix, lens)]
    if max_q_len is not None and lens:
        _require(max(lens) <= max_q_len, f"max_q_len={max_q_len} < a sequence's {max(lens)} new tokens")
    if max_kv_len is not None and kv:
        _require(max(kv) <= max_kv_len, f"max_kv_len={max_kv_len} < a sequence's {max(kv)} KV tokens")
    bs, width, nblocks = k_cache.shape[1], block_tables.shape[1], k_cache.shape[0]
    for b, length in enumerate(kv):
        need = -(-length // bs)
        _require(need <= width, f"sequence {b}: prefix_len + new tokens = {length} needs {need} "
                 f"blocks of {bs}; its block table has {width}")
        ids = block_tables[b, :need]
        _require(bool(((ids >= 0) & (ids < nblocks)).all()), f"sequence {b}: block ids "
                 f"{ids.tolist()} must lie in [0, {nblocks})")
    if tree_mask is not None:
        use = [True] * len(lens) if use_tree_mask is None else use_tree_mask.tolist()
        for b, n in enumerate(lens):
            _require(not use[b] or n <= MAX_TREE_NODES, f"sequence {b}: {n} new tokens under a "
                     f"tree bitmask; at most {MAX_TREE_NODES} (use the causal rule for prefill)")


def check_store_inputs(k, v, k_cache, v_cache, slot_mapping) -> None:
    ks, dev = k_cache.shape, k.device
    ok = (k.dim() == 3 and len(ks) == 4 and v.shape == k.shape and v_cache.shape == ks
          and k.shape[1:] == ks[2:] and k.dtype in FLOAT_DTYPES and v.dtype in FLOAT_DTYPES
          and k_cache.dtype == v_cache.dtype and k.stride(-1) == 1 and v.stride(-1) == 1
          and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
          and MIN_HEAD_DIM <= ks[3] <= MAX_HEAD_DIM and ks[3] % 8 == 0
          and v.device == dev and k_cache.device == dev and v_cache.device == dev
          and slot_mapping.dtype == torch.int64 and slot_mapping.dim() == 1
          and slot_mapping.shape[0] == k.shape[0] and slot_mapping.device == dev)
    if not ok:
        _explain_store_inputs(k, v, k_cache, v_cache, slot_mapping)
        raise ValueError("store_kv: invalid inputs")


def _explain_store_inputs(k, v, k_cache, v_cache, slot_mapping) -> None:
    check_cache_pair(k_cache, v_cache)
    want = (k.shape[0],) + tuple(k_cache.shape[2:])
    _require(k.dim() == 3 and tuple(k.shape) == want and v.shape == k.shape,
             f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [N, num_kv_heads, head_dim] = {want}")
    _require(k.dtype in FLOAT_DTYPES and v.dtype in FLOAT_DTYPES, f"k/v dtypes {k.dtype}/{v.dtype} "
             "unsupported")
    _require(k.stride(-1) == 1 and v.stride(-1) == 1, "k and v's last dim must be contiguous")
    _require(k.device == k_cache.device == v.device, "k, v and the caches must share a device")
    _check_index(slot_mapping, "slot_mapping", 1, torch.int64, k.device)
    _require(slot_mapping.shape[0] == k.shape[0], f"slot_mapping has {slot_mapping.shape[0]} "
             f"entries; need one per token ({k.shape[0]})")


def validate_slots(slots: Tensor, num_slots: int, name: str, unique: bool = False) -> None:
    kept = slots[slots >= 0]
    _require(bool((kept < num_slots).all()), f"{name} has slots >= the cache's {num_slots} slots")
    if unique:
        _require(kept.unique().numel() == kept.numel(), f"{name} repeats a slot: every "
                 "destination must be written once")


def check_compact_inputs(k_cache, v_cache, src_slots, dst_slots) -> None:
    _require(k_cache.dim() >= 4, f"caches must be [..., num_blocks, block_size, Hkv, D]; got "
             f"shape {tuple(k_cache.shape)}")
    check_cache_pair(k_cache, v_cache, lead=k_cache.dim() - 4)
    for name, s in (("src_slots", src_slots), ("dst_slots", dst_slots)):
        _check_index(s, name, 1, torch.int64, k_cache.device)
    _require(src_slots.shape == dst_slots.shape, f"src_slots {tuple(src_slots.shape)} and "
             f"dst_slots {tuple(dst_slots.shape)} must have the same length")
