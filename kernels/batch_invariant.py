"""Batch-invariant ops (``engine.exact=true``): each row's result is bitwise the same whatever
else is in the step — how many rows, which sequences, tree or chain, prefill chunk or decode.

Why ordinary ops are not: a GEMM library picks its kernel (and so the order in which it sums a
row's products) from the matrix shapes, so a token's hidden state differs in its last bits
between a one-token decode (M = 1) and a 33-row verify (M = 33); attention sums over the keys in
an order that depends on how the batch was padded and where the masked keys sit. In bf16 those
bits flip argmax near-ties and the texts part (Thinking Machines, "Defeating Nondeterminism in
LLM Inference", 2025, makes the same argument on GPUs). The remedy is the same here, in plain
torch, for the CPU (the engine refuses exact mode elsewhere: torch's CUDA reductions and scans
pick their order by shape, so a GPU needs kernels with a fixed order, not built yet):

* `linear_bi`: the rows go through the GEMM in fixed tiles of ``TILE_ROWS`` rows for the dtype
  (the last one padded), one call per tile, so the library sees one shape only and sums every
  row alike;
* `attention_bi`: each query attends over its visible keys gathered in *logical* order (the
  positions its sequence would have them at, ancestors of a tree node included, masked siblings
  excluded); the softmax's sums run over blocks of ``KEY_BLOCK`` positions fixed from position 0,
  then across blocks in order, so a query at position p reads bitwise the same numbers, summed
  in the same order, as a one-token decode at p;
* RMSNorm, rope and the elementwise ops are per row already (the model's plain formulas).

Tested by tests/kernels/test_batch_invariant.py (each row against the same row computed alone)
and end to end by tests/engine/test_exact.py (speculative output equals autoregressive output).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# rows per GEMM call, per dtype: a tile costs about what one row costs (a decode pays little),
# measured on a CPU: float32 GEMMs of 1 or 2 rows take one path, 4 rows already cost ~1.5x;
# bf16 tiles of 16 rows cost about one row
TILE_ROWS = {torch.float32: 2, torch.float64: 2}
DEFAULT_TILE_ROWS = 16
KEY_BLOCK = 64  # key positions per attention block
ROW_CHUNK = 32  # query rows per attention pass (bounds its memory)


def linear_bi(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x [N, K] @ weight [M, K]^T (+ bias)`` -> ``[N, M]``, row i's result independent of N."""
    n, rows = x.shape[0], TILE_ROWS.get(x.dtype, DEFAULT_TILE_ROWS)
    tiles = max(1, -(-n // rows))
    xp = F.pad(x, (0, 0, 0, tiles * rows - n)) if n % rows or n == 0 else x
    wt = weight.t()
    out = torch.cat([xp[i * rows:(i + 1) * rows] @ wt for i in range(tiles)])[:n]
    return out if bias is None else out + bias


@dataclass
class KeyLists:
    """Each query row's visible keys in logical order."""
    slots: Tensor  # [N, L] int64 flat cache slot of the row's l-th visible key (padding: 0)
    lengths: Tensor  # [N] int64 visible keys of each row (its position + 1)


def key_lists(qo_indptr: Tensor, prefix_lens: Tensor, block_tables: Tensor, block_size: int,
              tree_mask: Optional[Tensor] = None, use_tree_mask: Optional[Tensor] = None) -> KeyLists:
    """The visible keys of every new row (masking rule of `reference.tree_attention_ref`): the
    sequence's prefix, then the new tokens it may see (itself included) in increasing index —
    for a draft tree, its ancestors root first, i.e. in the order of their logical positions."""
    dev = qo_indptr.device
    indptr = qo_indptr.long()
    counts = indptr[1:] - indptr[:-1]  # [B]
    n = int(indptr[-1])
    seq = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)  # [N]
    i = torch.arange(n, device=dev) - indptr[seq]  # [N] index among its sequence's new tokens
    width = int(counts.max()) if n else 0
    j = torch.arange(width, device=dev)[None]  # [1, W]
    visible = (j <= i[:, None]) & (j < counts[seq][:, None])  # causal
    if tree_mask is not None:
        use = torch.ones_like(seq, dtype=torch.bool) if use_tree_mask is None else use_tree_mask.bool()[seq]
        bits = ((tree_mask[:n, None] >> j.clamp(max=63)) & 1).bool() & (j < counts[seq][:, None])
        visible = torch.where(use[:, None], bits, visible)
    # the visible new-token indices first, ascending (invisible ones pushed past them)
    order = torch.where(visible, j, width + j).sort(dim=1).values  # [N, W]
    seen = visible.sum(1)  # [N]
    prefix = prefix_lens.long()[seq]  # [N]
    lengths = prefix + seen
    total = int(lengths.max()) if n else 0
    col = torch.arange(total, device=dev)[None]  # [1, L]
    new = (col - prefix[:, None]).clamp(0, max(width - 1, 0))
    position = torch.where(col < prefix[:, None], col,
                           prefix[:, None] + (order.gather(1, new) if width else new))
    valid = col < lengths[:, None]
    position = torch.where(valid, position, 0)
    table = block_tables.long()[seq]  # [N, max_blocks]
    slots = table.gather(1, position // block_size) * block_size + position % block_size
    return KeyLists(torch.where(valid, slots, 0), lengths)


def attention_bi(q: Tensor, k_cache: Tensor, v_cache: Tensor, keys: KeyLists,
                 sm_scale: Optional[float] = None) -> Tensor:
    """``q [N, Hq, D]``, caches ``[num_blocks, block_size, Hkv, D]`` -> ``[N, Hq, D]``: the
    softmax attention of each row over ``keys``, in float32, ``ROW_CHUNK`` rows at a time (the
    memory stays bounded; rows do not interact)."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[2])
    width = max(1, -(-keys.slots.shape[1] // KEY_BLOCK)) * KEY_BLOCK
    slots = F.pad(keys.slots, (0, width - keys.slots.shape[1]))  # [N, L] whole blocks
    out = torch.empty_like(q)
    for r in range(0, q.shape[0], ROW_CHUNK):
        rows = slice(r, r + ROW_CHUNK)
        out[rows] = _attend(q[rows], k_cache, v_cache, slots[rows], keys.lengths[rows], scale)
    return out


def _attend(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, lengths: Tensor,
            scale: float) -> Tensor:  # q [n, Hq, D], slots [n, L] (L = nb * KB) -> [n, Hq, D]
    """Every product is a batch of same-shape GEMMs, one per (row, KV head, key block): the
    scores ``[G, D] @ [D, KB]`` and the weighted values ``[G, KB] @ [KB, D]``, so the library runs
    one kernel on one shape whatever the batch; the blocks are then summed in order by `cumsum`
    (a sequential scan). Keys past a row's length score -inf, weigh exactly 0 and add exactly 0,
    so the padding a batch needs changes nothing; the softmax's max is exact in any order."""
    n, hq, d = q.shape
    hkv = k_cache.shape[2]
    g, nb = hq // hkv, slots.shape[1] // KEY_BLOCK
    blocks = (n, nb, KEY_BLOCK, hkv, d)
    k = k_cache.flatten(0, 1)[slots].float().view(blocks).permute(0, 3, 1, 4, 2).contiguous()  # [n, Hkv, nb, D, KB]
    v = v_cache.flatten(0, 1)[slots].float().view(blocks).permute(0, 3, 1, 2, 4).contiguous()  # [n, Hkv, nb, KB, D]
    qf = q.float().view(n, hkv, 1, g, d).expand(n, hkv, nb, g, d).contiguous()  # [n, Hkv, nb, G, D]
    s = torch.matmul(qf, k) * scale  # [n, Hkv, nb, G, KB]
    valid = torch.arange(nb * KEY_BLOCK, device=q.device)[None] < lengths[:, None]  # [n, L]
    s = s.masked_fill(~valid.view(n, 1, nb, 1, KEY_BLOCK), float("-inf"))
    top = s.amax(dim=(2, 4), keepdim=True)  # [n, Hkv, 1, G, 1]
    p = torch.exp(s - top)  # [n, Hkv, nb, G, KB]
    total = p.sum(-1).cumsum(2)[:, :, -1]  # [n, Hkv, G]
    acc = torch.matmul(p, v).cumsum(2)[:, :, -1]  # [n, Hkv, G, D]
    return (acc / total[..., None]).reshape(n, hq, d).to(q.dtype)
