"""Host-side launch plan of `tree_attention`: built once per engine step, reused by every layer.

FlashInfer splits attention into ``plan`` (host work from the batch's metadata) and ``run`` (the
launch); we do the same so that a 32-layer step pays the host work once and never syncs the device
inside a layer. A plan holds only host ints: tile shapes, the grid, and the number of KV splits.
Built from upper bounds (``max_q_len``, ``max_kv_len``) it fixes the grid, which is what a CUDA
graph of a decode/verify step needs; the kernel reads the true lengths from device tensors.

Split-KV (flash-decoding, Dao et al. 2023): when ``batch * query tiles * kv heads`` programs cannot
fill the GPU, each sequence's KV range is cut into ``num_splits`` chunks processed by separate
programs, and the partial outputs are merged by their log-sum-exp: by a second kernel, or with
``fused_merge=True`` inside the attention kernel (the last split of a tile merges; one launch).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

MAX_TREE_NODES = 64  # a uint64 ancestor bitmask covers 64 nodes
MIN_SPLIT_TOKENS = 128  # below this a split's fixed cost (merge, launch tail) outweighs its gain
MAX_SPLITS = 64
# Splits are chosen to reach WAVES x SMs programs. Tiles of <= 64 rows (decode, small trees) merge
# cheaply and like two waves; 128/256-row tiles are MMA-bound and write 128 x D fp32 partials per
# split, so one wave is enough. Measured on the H100 (experiments/notes_kernels.md, graph-timed):
# B=1 L=4k decode 20.5 µs with 32 splits vs 22.5 µs with 16; B=8 L=4k T=16 81 µs with 4 splits vs
# 85 µs with 2; B=8 L=16k T=64 (256-row tiles) 334 µs with 2 splits vs 617 µs unsplit (64 programs).
SMALL_TILE_WAVES, LARGE_TILE_WAVES = 2, 1
FULL_ENOUGH = 0.75  # programs >= this fraction of the SMs: no split
# The fused merge loads all splits x GQA heads x head_dim partials of a token at once; past this
# many (split, head) pairs per token it would need more registers than the main loop.
MAX_FUSED_MERGE_PAIRS = 128


@dataclass
class TreeAttentionPlan:
    batch_size: int  # B
    max_q_len: int  # upper bound of new tokens per sequence
    max_kv_len: int  # upper bound of prefix_len + new tokens
    group: int  # query heads per KV head (GQA ratio)
    block_m: int  # rows (token x head) per program; power of two
    tok_per_tile: int  # new tokens per program = block_m // group
    q_tiles: int  # programs per sequence along the query axis
    block_n: int  # KV positions per inner iteration
    num_splits: int  # KV chunks per (sequence, tile, kv head); 1 = no split, no merge
    num_warps: int
    num_stages: int
    fused_merge: bool = False  # split merge inside the attention kernel (opt-in)
    _workspace: dict = field(default_factory=dict, repr=False, compare=False)

    def grid(self, num_kv_heads: int) -> tuple[int, int, int]:
        return (self.batch_size * self.q_tiles, num_kv_heads, self.num_splits)

    def workspace(self, num_tokens: int, num_q_heads: int, head_dim: int, device) -> tuple[Tensor, Tensor]:
        """Partial outputs ``[S, N, Hq, D]`` fp32 and their LSE ``[S, N, Hq]``, allocated once per
        shape and reused by every layer of the step (layers run one after another on one stream)."""
        key = (num_tokens, num_q_heads, head_dim, str(device))
        if key not in self._workspace:
            s = self.num_splits
            self._workspace[key] = (
                torch.empty(s, num_tokens, num_q_heads, head_dim, dtype=torch.float32, device=device),
                torch.empty(s, num_tokens, num_q_heads, dtype=torch.float32, device=device),
            )
        return self._workspace[key]

    def counters(self, num_kv_heads: int, device) -> Tensor:
        """Arrival counters ``[B * q_tiles * Hkv]`` int32 of the fused merge, zeroed once; the last
        split of each tile resets its counter, so every launch (layer, graph replay) finds zeros.
        One plan must not run on two streams at once."""
        key = ("counters", num_kv_heads, str(device))
        if key not in self._workspace:
            self._workspace[key] = torch.zeros(self.batch_size * self.q_tiles * num_kv_heads,
                                               dtype=torch.int32, device=device)
        return self._workspace[key]


def next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_block_m(group: int, max_q_len: int, head_dim: Optional[int] = None) -> int:
    """Smallest power of two >= 16 (tl.dot's minimum) holding every row, at most 256 rows (128
    when head_dim > 128: the accumulator would not fit in registers), or one token's heads when
    the GQA group alone is larger. 256-row tiles (a whole T=64 tree of 4 heads) read each KV tile
    once instead of twice and keep 16 warps per SM busy: B=8 L=16k T=64 334 µs vs 396 µs with two
    128-row tiles (round-2 sweep)."""
    rows = group * max_q_len
    cap = 128 if head_dim is not None and head_dim > 128 else 256
    return max(16, next_pow2(group), min(cap, next_pow2(rows)))


def choose_num_splits(programs: int, max_kv_len: int, sms: int, block_m: int) -> int:
    """KV chunks per program so that the grid fills whole waves, none under MIN_SPLIT_TOKENS."""
    if programs >= FULL_ENOUGH * sms:
        return 1
    want = (SMALL_TILE_WAVES if block_m <= 64 else LARGE_TILE_WAVES) * sms // programs
    return max(1, min(want, max_kv_len // MIN_SPLIT_TOKENS, MAX_SPLITS))


def max_fused_splits(group: int) -> int:
    """The fused merge is opt-in (``fused_merge=True``): on the H100 it saved no time (the merge
    kernel's launch inside a CUDA graph costs ~1.3 µs, and the merge code raises the decode kernel
    from 122 to 194 registers: B=8 L=4k x4 57.8 vs 57.1 µs, B=1 L=16k 36.1 vs 35.2 µs)."""
    return MAX_FUSED_MERGE_PAIRS // next_pow2(group)


def choose_tiles(block_m: int) -> tuple[int, int, int]:
    """(block_n, num_warps, num_stages). ``num_stages - 1`` K/V tiles are in flight while one is
    used (the block ids are prefetched, so Triton's pipeliner gets the whole depth; see
    tree_attention.py). From the round-2 H100 sweep (experiments/results/kernels_sweep_*):
    decode streams 64-token tiles on 4 warps with 2 in flight (122 registers, 70 KB: 3 CTAs/SM;
    deeper or wider was 2-10% slower); 64-row tiles keep round 1's depth (2 stages, 82 KB: 2 CTAs
    per SM; 4 stages took 148 KB, one 4-warp CTA per SM, and ran 13-23% slower); 128-row tiles
    use wgmma over two warpgroups; 256-row tiles four (16 warps, 128 registers each)."""
    if block_m <= 32:
        return 64, 4, 3 if block_m <= 16 else 4
    if block_m <= 64:
        return 64, 4, 2
    if block_m <= 128:
        return 64, 8, 4
    return 64, 16, 3


def plan_tree_attention(
    qo_indptr: Tensor,  # [B + 1] int32
    prefix_lens: Tensor,  # [B] int32
    num_q_heads: int,
    num_kv_heads: int,
    max_q_len: Optional[int] = None,  # None: read from qo_indptr (a device sync)
    max_kv_len: Optional[int] = None,  # None: read from prefix_lens + lengths (a device sync)
    *,
    num_splits: Optional[int] = None,  # None: chosen from the shapes
    fused_merge: Optional[bool] = None,  # None: off (measured no faster; see max_fused_splits)
    block_m: Optional[int] = None,
    block_n: Optional[int] = None,
    num_warps: Optional[int] = None,
    num_stages: Optional[int] = None,
    sms: Optional[int] = None,  # None: the device's SM count (132 assumed off CUDA)
    head_dim: Optional[int] = None,  # None: assumed <= 128 (caps the tile rows when larger)
) -> TreeAttentionPlan:
    """Launch plan for one step. Pass ``max_q_len``/``max_kv_len`` (host ints the engine already
    knows) to keep it sync-free; upper bounds are fine and give a fixed grid for CUDA graphs."""
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    batch = prefix_lens.shape[0]
    if max_q_len is None or max_kv_len is None:
        lens = (qo_indptr[1:] - qo_indptr[:-1]).long()  # [B]
        if max_q_len is None:
            max_q_len = int(lens.max().item()) if batch else 0
        if max_kv_len is None:
            max_kv_len = int((prefix_lens.long() + lens).max().item()) if batch else 0
    max_q_len, max_kv_len = max(1, int(max_q_len)), max(1, int(max_kv_len))
    group = num_q_heads // num_kv_heads
    bm = block_m or choose_block_m(group, max_q_len, head_dim)
    if bm < group or bm & (bm - 1):
        raise ValueError(f"block_m={bm} must be a power of two >= the GQA group {group}")
    tok = bm // group
    q_tiles = -(-max_q_len // tok)
    if sms is None:
        sms = num_sms(qo_indptr.device.index or 0) if qo_indptr.is_cuda else 132
    splits = num_splits or choose_num_splits(batch * q_tiles * num_kv_heads, max_kv_len, sms, bm)
    if fused_merge and num_splits is None:
        splits = min(splits, max_fused_splits(group))
    if fused_merge and splits > max_fused_splits(group):
        raise ValueError(f"fused_merge with {splits} splits and GQA group {group}: at most "
                         f"{max_fused_splits(group)} splits; pass fewer or fused_merge=False")
    bn, warps, stages = choose_tiles(bm)
    return TreeAttentionPlan(
        batch_size=batch, max_q_len=max_q_len, max_kv_len=max_kv_len, group=group, block_m=bm,
        tok_per_tile=tok, q_tiles=q_tiles, block_n=block_n or bn, num_splits=splits,
        num_warps=num_warps or warps, num_stages=num_stages or stages,
        fused_merge=bool(fused_merge and splits > 1),
    )
