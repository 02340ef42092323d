"""Builders shared by the kernel tests: random trees, ragged paged batches, a dense oracle, and the
cases that the interpreter worker runs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

TREE_KINDS = ("single", "chain", "star", "balanced", "random")


def tree_parents(kind: str, t: int, gen: torch.Generator) -> list[int]:
    """Parent of each node (-1 for the root); parents precede children."""
    if kind == "single" or t == 1:
        return [-1]
    if kind == "chain":
        return [-1] + list(range(t - 1))
    if kind == "star":
        return [-1] + [0] * (t - 1)
    if kind == "balanced":
        return [-1] + [(i - 1) // 2 for i in range(1, t)]
    if kind == "random":
        return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, t)]
    raise ValueError(kind)


def ancestor_bits(parents: list[int]) -> list[int]:
    """uint64 ancestor masks (own bit set) as signed int64 values, the kernels' storage."""
    bits: list[int] = []
    for i, p in enumerate(parents):
        b = (1 << i) | (bits[p] if p >= 0 else 0)
        bits.append(b - (1 << 64) if b >= 1 << 63 else b)
    return bits


def ancestor_matrix(parents: list[int]) -> Tensor:
    """``[T, T]`` bool, by walking parent links (independent of the bit arithmetic)."""
    t = len(parents)
    m = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        j = i
        while j >= 0:
            m[i, j] = True
            j = parents[j]
    return m


@dataclass
class SeqSpec:
    prefix: int  # tokens already cached
    n: int  # new tokens
    tree: Optional[str] = None  # tree kind, or None for the causal rule (prefill / chain / decode)


@dataclass
class Batch:
    q: Tensor  # [N, Hq, D]
    k_cache: Tensor  # [num_blocks, page, Hkv, D]
    v_cache: Tensor
    block_tables: Tensor  # [B, max_blocks] int32
    prefix_lens: Tensor  # [B] int32
    qo_indptr: Tensor  # [B + 1] int32
    tree_mask: Optional[Tensor]  # [N] int64
    use_tree_mask: Optional[Tensor]  # [B] bool
    parents: list  # per sequence: parent list or None (causal)

    def args(self) -> tuple:
        return (self.q, self.k_cache, self.v_cache, self.block_tables, self.prefix_lens,
                self.qo_indptr, self.tree_mask, self.use_tree_mask)

    def to(self, device) -> "Batch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(*(mv(t) for t in self.args()), self.parents)


def make_batch(specs: list[SeqSpec], hq: int, hkv: int, d: int, page: int, dtype=torch.float32,
               seed: int = 0, use_flags: Optional[bool] = None) -> Batch:
    """Ragged batch on CPU over a shuffled paged cache filled with random values (no zeros).
    Causal sequences get random garbage bits in tree_mask, which the kernel must ignore.
    ``use_flags``: pass use_tree_mask (default: only when trees and causal rows mix)."""
    gen = torch.Generator().manual_seed(seed)
    need = [math.ceil((s.prefix + s.n) / page) for s in specs]
    num_blocks = sum(need) + 3  # spare blocks never referenced
    perm = torch.randperm(num_blocks, generator=gen)
    width = max(need) + 2  # tables wider than needed, padded with valid but unused ids
    tables = torch.randint(0, num_blocks, (len(specs), width), generator=gen, dtype=torch.int32)
    used = 0
    for b, k in enumerate(need):
        tables[b, :k] = perm[used:used + k].int()
        used += k
    kc = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype)
    vc = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype)
    n_tot = sum(s.n for s in specs)
    q = torch.randn(n_tot, hq, d, generator=gen).to(dtype)
    bits, parents = [], []
    for s in specs:
        if s.tree is None:
            parents.append(None)
            bits += torch.randint(-2**62, 2**62, (s.n,), generator=gen).tolist()
        else:
            p = tree_parents(s.tree, s.n, gen)
            parents.append(p)
            bits += ancestor_bits(p)
    has_tree = any(p is not None for p in parents)
    flags = use_flags if use_flags is not None else has_tree and any(p is None for p in parents)
    indptr = torch.tensor([0] + [s.n for s in specs]).cumsum(0).int()
    return Batch(
        q=q, k_cache=kc, v_cache=vc, block_tables=tables,
        prefix_lens=torch.tensor([s.prefix for s in specs], dtype=torch.int32), qo_indptr=indptr,
        tree_mask=torch.tensor(bits, dtype=torch.int64) if has_tree else None,
        use_tree_mask=torch.tensor([p is not None for p in parents]) if flags else None,
        parents=parents,
    )


def dense_oracle(batch: Batch, sm_scale: Optional[float] = None) -> Tensor:
    """float64 attention with an explicit [n, kv_len] mask per sequence, gathering the paged cache
    position by position: independent of the reference's vectorised indexing and bit tests."""
    q, kc, vc = batch.q.double(), batch.k_cache.double(), batch.v_cache.double()
    page, group = kc.shape[1], q.shape[1] // kc.shape[2]
    scale = sm_scale if sm_scale is not None else q.shape[2] ** -0.5
    out = torch.zeros_like(q)
    indptr, prefix = batch.qo_indptr.tolist(), batch.prefix_lens.tolist()
    for b, parents in enumerate(batch.parents):
        s0, n, p = indptr[b], indptr[b + 1] - indptr[b], prefix[b]
        rows = [batch.block_tables[b, i // page].item() for i in range(p + n)]
        k = torch.stack([kc[rows[i], i % page] for i in range(p + n)])  # [kv, Hkv, D]
        v = torch.stack([vc[rows[i], i % page] for i in range(p + n)])
        mask = torch.ones(n, p + n, dtype=torch.bool)
        mask[:, p:] = ancestor_matrix(parents) if parents is not None else torch.ones(n, n).tril().bool()
        for h in range(q.shape[1]):
            s = q[s0:s0 + n, h] @ k[:, h // group].T * scale  # [n, kv]
            out[s0:s0 + n, h] = s.masked_fill(~mask, float("-inf")).softmax(-1) @ v[:, h // group]
    return out


def rel_err(out: Tensor, ref: Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


# Ragged batch mixing every kind of sequence: decode, a chain and prefill chunks under the causal
# rule (with garbage tree bits the kernel must ignore), and trees of every shape incl. T = 64.
# Prefixes start/end mid-block, at a block boundary (32) and at 0.
MIX = [SeqSpec(37, 1), SeqSpec(16, 7, "chain"), SeqSpec(5, 9, "star"), SeqSpec(50, 15, "balanced"),
       SeqSpec(3, 64, "random"), SeqSpec(0, 70), SeqSpec(21, 1, "single"), SeqSpec(32, 12),
       SeqSpec(40, 8)]
# Fewer rows, longer prefixes: for split-KV (the merge runs one program per row and head).
SPLIT_MIX = [SeqSpec(300, 1), SeqSpec(130, 9, "random"), SeqSpec(77, 64, "random"),
             SeqSpec(200, 5), SeqSpec(0, 3, "chain")]
TREES_ONLY = [SeqSpec(9, 64, k) for k in ("chain", "star", "balanced")] + [SeqSpec(100, 20, "random")]
CAUSAL_ONLY = [SeqSpec(0, 40), SeqSpec(65, 1), SeqSpec(17, 33), SeqSpec(128, 2)]
# Plain decode (one new token each), split-KV with the merge in or after the attention kernel.
DECODE = [SeqSpec(300, 1), SeqSpec(77, 1), SeqSpec(0, 1), SeqSpec(129, 1, "single"), SeqSpec(16, 1)]

# name -> (specs, hq, hkv, d, page, plan kwargs)
ATTN_CASES = {
    "mix_g4_d64_p16": (MIX, 8, 2, 64, 16, {"num_splits": 1}),
    "mix_g3_d64_p32": (MIX, 6, 2, 64, 32, {"num_splits": 1}),
    "mix_g1_d32_p64": (MIX, 2, 2, 32, 64, {"num_splits": 1}),
    "mix_g8_d128_p16": (MIX, 8, 1, 128, 16, {"num_splits": 1}),
    "split3_g4_d64_p16": (SPLIT_MIX, 4, 1, 64, 16, {"num_splits": 3}),
    "split4_g3_d64_p32": (SPLIT_MIX, 3, 1, 64, 32, {"num_splits": 4}),
    "split2_g1_d128_p64": (SPLIT_MIX, 2, 2, 128, 64, {"num_splits": 2}),
    "auto_plan_g4_p16": (SPLIT_MIX, 4, 1, 64, 16, {}),
    # A CUDA-graph style plan: grid from loose upper bounds, true lengths read on the device.
    "bounds_plan_g3_p16": (SPLIT_MIX, 3, 1, 64, 16, {"max_q_len": 96, "max_kv_len": 1024}),
    "trees_no_flags_g2_d64": (TREES_ONLY, 4, 2, 64, 16, {"num_splits": 1}),
    "causal_no_mask_g4_d64": (CAUSAL_ONLY, 4, 1, 64, 16, {"num_splits": 2}),
    "headdim96_g2_p16": (MIX[:5], 4, 2, 96, 16, {"num_splits": 1}),
    "small_tiles_bm16_bn16": ([MIX[4], MIX[0], MIX[2]], 4, 1, 64, 32,
                              {"num_splits": 2, "block_m": 16, "block_n": 16}),
    # Fused split merge (last split of a tile merges; counters reset for the next launch).
    "decode_fused_g4_p16": (DECODE, 8, 2, 64, 16, {"num_splits": 4, "fused_merge": True}),
    "decode_fused_g3_d128_p32": (DECODE, 6, 2, 128, 32, {"max_q_len": 1, "max_kv_len": 512,
                                                         "fused_merge": True}),
    "decode_fused_g1_splits7": (DECODE, 2, 2, 32, 16, {"num_splits": 7, "block_n": 16,
                                                       "fused_merge": True}),
    "decode_kernel_merge_g4": (DECODE, 8, 2, 64, 16, {"max_q_len": 1, "max_kv_len": 400}),
    "fused_multi_token_tiles": (SPLIT_MIX, 4, 1, 64, 16, {"num_splits": 3, "fused_merge": True}),
}
KV_CASES = ("store_kv", "compact_kv")
LAYER_CASES = ("add_rms_norm", "add_rms_norm_no_residual", "rope", "silu_mul")


def layer_case(name: str, dtype=torch.float32, device="cpu", seed: int = 0):
    """Inputs of a fused layer op (kernels/layer_ops.py) at odd sizes (masks exercised):
    ``(fn_args, kwargs)`` for the op and its reference."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    if name.startswith("add_rms_norm"):
        res = None if name.endswith("no_residual") else rnd(7, 200)
        return (rnd(7, 200), 1 + 0.1 * rnd(200), 1e-5), {"residual": res}
    if name == "rope":  # 9 q + 3 k heads of D = 64 inside a qkv row of 15 heads, strided rows
        qkv = rnd(5, 15 * 64)
        ang = torch.rand(5, 32, generator=g).to(device) * 6
        cos, sin = torch.cat([ang, ang], 1).cos().to(dtype), torch.cat([ang, ang], 1).sin().to(dtype)
        return (qkv, cos, sin, 12), {}
    if name == "silu_mul":
        return (rnd(6, 2 * 1536)[:, : 2 * 1500].contiguous(),), {}
    raise KeyError(name)


def store_case(n: int, hkv: int, d: int, page: int, num_blocks: int, dtype=torch.float32, seed: int = 0):
    """k, v as strided views of a fused projection ``[N, (Hq + 2 Hkv) D]`` (as a model produces
    them), distinct random slots, a few negative (padding) slots."""
    gen = torch.Generator().manual_seed(seed)
    fused = torch.randn(n, (2 + 2 * hkv) * d, generator=gen).to(dtype)  # [N, (2 + 2 Hkv) D]
    k = fused[:, 2 * d:(2 + hkv) * d].view(n, hkv, d)  # [N, Hkv, D], row stride (2 + 2 Hkv) D
    v = fused[:, (2 + hkv) * d:].view(n, hkv, d)
    slots = torch.randperm(num_blocks * page, generator=gen)[:n]
    slots[torch.randperm(n, generator=gen)[: n // 5]] = -1
    kc = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype)
    vc = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype)
    return k, v, kc, vc, slots


def compact_case(layers: int, hkv: int, d: int, page: int, dtype=torch.float32, seed: int = 0):
    """Caches ``[L, nb, page, Hkv, D]`` and moves like the engine's commit: per sequence the
    accepted path's nodes slide down to consecutive positions (sources and destinations overlap),
    plus a cyclic permutation (every destination is another pair's source) and padding pairs."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 24
    kc = torch.randn(layers, num_blocks, page, hkv, d, generator=gen).to(dtype)
    vc = torch.randn(layers, num_blocks, page, hkv, d, generator=gen).to(dtype)
    src, dst = [], []
    for table_start, prefix, path in ((0, 5, [0, 2, 5, 9]), (4, 19, [0, 1, 4, 7, 8, 20]),
                                       (10, 0, [0, 3, 6])):
        slot = lambda p: (table_start + p // page) * page + p % page  # contiguous tables  # noqa: E731
        for j, node in enumerate(path):
            if node != j:
                src.append(slot(prefix + node))
                dst.append(slot(prefix + j))
    cycle = [int(x) for x in torch.randperm(num_blocks * page // 2, generator=gen)[:7] + num_blocks * page // 2]
    src += cycle
    dst += cycle[1:] + cycle[:1]
    src += [-1, 3]
    dst += [4, -1]
    t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    return kc, vc, t(src), t(dst)


TREE_STRUCTURE_CASES = ("tree_structure_t64", "tree_structure_t7", "tree_structure_bad_links")


def tree_structure_case(name: str, device="cpu", seed: int = 0) -> tuple[Tensor, Tensor]:
    """``parents [B, T]``, ``num_nodes [B]`` for `tree_structure`: every tree kind, padding past
    ``num_nodes``, and (``bad_links``) parents that no tree has (self, later, out of range), which
    the derivation must treat as unlinked."""
    g = torch.Generator().manual_seed(seed)
    width = 7 if name.endswith("t7") else 64
    rows, nums = [], []
    for kind in TREE_KINDS:
        for size in (1, width // 2, width):
            p = tree_parents(kind, size, g)  # "single" is one node whatever the size
            n = len(p)
            p = p + [-1] * (width - n)
            if n < width:  # padding carries junk parents: they must not count
                p[n:] = torch.randint(-1, width, (width - n,), generator=g).tolist()
            rows.append(p)
            nums.append(n)
    if name.endswith("bad_links"):
        for p in rows:
            for i in torch.randint(1, width, (3,), generator=g).tolist():
                p[i] = [i, min(i + 1, width - 1), width + 5, -7][i % 4]
        rows[0][0] = 3  # the root's own pointer is ignored
    parents = torch.tensor(rows, dtype=torch.long, device=device)
    return parents, torch.tensor(nums, dtype=torch.long, device=device)
