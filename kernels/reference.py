"""Plain-torch references for every kernel in `specdec.kernels`.

They are the specification: simple enough to trust by reading, used by the tests as the oracle for
the Triton kernels, and used by the engine on CPU.

Paged KV layout (ARCHITECTURE.md, "Paged KV layout"): ``k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim]``;
token ``p`` of a sequence lives in block ``block_table[p // block_size]`` at offset
``p % block_size``, i.e. flat slot ``block_id * block_size + offset``.

One call of `tree_attention_ref` serves a ragged batch: sequence ``b`` has ``prefix_lens[b]`` tokens
already cached and ``n_b = qo_indptr[b+1] - qo_indptr[b]`` new tokens whose K/V were already written
(by `store_kv`) at positions ``prefix_lens[b] .. prefix_lens[b] + n_b - 1``. New token ``i`` sees the
whole prefix, and new token ``j`` of its own sequence when
  * causal rule: ``j <= i`` (prefill chunks, chains, plain decode), or
  * tree rule: bit ``j`` of ``tree_mask[qo_indptr[b] + i]`` is set (uint64 ancestor bitmask stored in
    int64; a node's own bit is set).
Rows of ``q`` past ``qo_indptr[-1]`` (padding, e.g. for CUDA graphs) are left unwritten. Query head
``h`` reads KV head ``h // (Hq // Hkv)``; ``sm_scale`` defaults to ``1 / sqrt(head_dim)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def gather_kv_ref(cache: Tensor, block_table: Tensor, length: int) -> Tensor:
    """Positions ``0..length-1`` of one sequence: ``[length, H_kv, D]``."""
    block_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    blocks = block_table[pos // block_size].long()  # [length]
    return cache[blocks, pos % block_size]


def new_token_mask_ref(n: int, bits: Optional[Tensor]) -> Tensor:
    """``[n, n]`` bool: may new token i see new token j. ``bits`` [n] int64 or None (causal)."""
    if bits is None:
        return torch.ones(n, n, dtype=torch.bool, device="cpu").tril()
    j = torch.arange(n, device=bits.device)
    return ((bits.view(n, 1) >> j.view(1, n)) & 1).bool()


def tree_attention_ref(
    q: Tensor,  # [N, Hq, D] queries of all new tokens, sequences concatenated
    k_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: Tensor,  # [B, max_blocks] int32
    prefix_lens: Tensor,  # [B] int32: tokens cached before this step's new ones
    qo_indptr: Tensor,  # [B + 1] int32
    tree_mask: Optional[Tensor] = None,  # [N] int64 ancestor bitmasks, or None: causal everywhere
    use_tree_mask: Optional[Tensor] = None,  # [B] bool: which sequences use tree_mask (None: all)
    sm_scale: Optional[float] = None,
) -> Tensor:  # [N, Hq, D]
    n_q_heads, head_dim = q.shape[1], q.shape[2]
    group = n_q_heads // k_cache.shape[2]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.empty_like(q)
    indptr, prefix = qo_indptr.tolist(), prefix_lens.tolist()
    use = None if use_tree_mask is None else use_tree_mask.tolist()
    for b in range(len(prefix)):
        start, end = indptr[b], indptr[b + 1]
        n, kv_len = end - start, prefix[b] + end - start
        if n == 0:
            continue
        k = gather_kv_ref(k_cache, block_tables[b], kv_len).float()  # [kv_len, Hkv, D]
        v = gather_kv_ref(v_cache, block_tables[b], kv_len).float()
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [kv_len, Hq, D]
        bits = None
        if tree_mask is not None and (use is None or use[b]):
            bits = tree_mask[start:end]
        mask = torch.ones(n, kv_len, dtype=torch.bool, device=q.device)
        mask[:, prefix[b]:] = new_token_mask_ref(n, bits).to(q.device)
        scores = torch.einsum("qhd,khd->hqk", q[start:end].float(), k) * scale  # [Hq, n, kv_len]
        scores = scores.masked_fill(~mask, float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(q.dtype)
    return out


def store_kv_ref(
    k: Tensor,  # [N, Hkv, D]
    v: Tensor,  # [N, Hkv, D]
    k_cache: Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: Tensor,
    slot_mapping: Tensor,  # [N] int64 flat slot of each token; negative = skip (padding)
) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)


def compact_kv_ref(
    k_cache: Tensor,  # [..., num_blocks, block_size, Hkv, D] (leading dims, e.g. layers, allowed)
    v_cache: Tensor,
    src_slots: Tensor,  # [M] int64 flat slots to read; negative = skip the pair (padding)
    dst_slots: Tensor,  # [M] int64 flat slots to write; negative = skip the pair
) -> None:
    """``cache[dst_slots[i]] = cache[src_slots[i]]`` for all i, every read before any write
    (sources and destinations may overlap, as when accepted tree nodes slide down)."""
    keep = (src_slots >= 0) & (dst_slots >= 0)
    src, dst = src_slots[keep].long(), dst_slots[keep].long()
    for cache in (k_cache, v_cache):
        flat = cache.flatten(-4, -3)  # [..., num_blocks * block_size, Hkv, D], a view
        flat[..., dst, :, :] = flat[..., src, :, :].clone()


# ---- fused layer ops (kernels/layer_ops.py): the plain-torch formulas of specdec.models.llama ----

def add_rms_norm_ref(x: Tensor, weight: Tensor, eps: float, residual: Optional[Tensor] = None
                     ) -> tuple[Tensor, Tensor]:
    """``(norm(residual + x) * weight, residual + x)`` for ``x [N, H]``; HF's RMSNorm (fp32
    statistics, cast to the input dtype before the weight)."""
    if residual is not None:
        x = residual + x
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype), x


def rope_ref(x: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> None:
    """In place: rotate the first ``num_heads`` heads (head dim D = cos.shape[1]) of each row of
    ``x [N, >= num_heads * D]`` by ``cos, sin [N, D]`` (HF's rotate_half convention)."""
    d = cos.shape[1]
    heads = x[:, : num_heads * d].view(x.shape[0], num_heads, d)  # [N, H, D]
    half = d // 2
    rotated = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
    heads.copy_(heads * cos[:, None, :] + rotated * sin[:, None, :])


def silu_mul_ref(x: Tensor) -> Tensor:
    """``x [N, 2I]`` = (gate | up) -> ``silu(gate) * up [N, I]``."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up

