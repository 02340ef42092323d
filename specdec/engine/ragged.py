"""Host-side assembly of a ragged batch for the paged attention kernels; shared by the target's
ModelRunner and by drafters that run their own model on their own paged tables."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from specdec.models.attention import AttnMetadata

from .graphs import bucket


def slots(table: Sequence[int], start: int, count: int, block_size: int) -> list[int]:
    """Flat cache slots of positions ``start .. start + count - 1`` under a block table."""
    return [table[p // block_size] * block_size + p % block_size for p in range(start, start + count)]


def table_array(tables: Sequence[Sequence[int]], rows: int, width: int, dtype=np.int32) -> np.ndarray:
    """Block tables as a zero-padded ``[rows, width]`` array (rows past ``len(tables)``: padding)."""
    out = np.zeros((rows, width), dtype)
    for r, t in enumerate(tables):
        out[r, : len(t)] = t
    return out


def packed_runs(starts: np.ndarray, ends: np.ndarray, tables: np.ndarray, block_size: int,
                total: int, scratch: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sequence b of ``n = len(starts)`` has new positions ``starts[b] .. ends[b] - 1``, packed one
    after the other into ``total`` rows (the rest is padding). With ``tables [>= n, W]`` (a
    `table_array`), returns ``indptr [tables.shape[0] + 1]`` int32 (padding sequences empty),
    ``pos [total]`` (padding 0), ``slots [total]`` (padding -1: stores nothing) and the slots of
    the ``scratch`` positions after each run, ``row_slots [n, scratch]`` (tree rows' scratch)."""
    n = len(starts)
    counts = ends - starts
    indptr = np.zeros(tables.shape[0] + 1, np.int32)
    np.cumsum(counts, out=indptr[1:n + 1])
    at = int(indptr[n])
    indptr[n + 1:] = at
    owner = np.repeat(np.arange(n), counts)  # [at] the sequence of each new position
    pos, slots = np.zeros(total, np.int64), np.full(total, -1, np.int64)
    pos[:at] = np.arange(at) - indptr[:n][owner] + starts[owner]
    slots[:at] = tables[owner, pos[:at] // block_size].astype(np.int64) * block_size + pos[:at] % block_size
    rp = ends[:, None] + np.arange(scratch)  # [n, scratch]
    row_slots = np.take_along_axis(tables[:n], rp // block_size, 1).astype(np.int64) * block_size + rp % block_size
    return indptr, pos, slots, row_slots


CATCH_UP = 64  # tokens per sequence slot of a fixed-shape catch-up forward (`catch_up_parts`)


def catch_up_parts(runs, buckets: tuple[int, ...], block_size: int, device, max_model_len: int, scratch: int,
                   store: bool = True, rows: int = CATCH_UP):
    """A drafter's eager catch-up in forwards of one shape per batch bucket, whatever the
    lengths: ``runs`` holds per sequence ``(block table, first position, token ids [n])`` (token i
    at position start + i). Yields per forward ``(meta, ids, pos, real)`` on ``device``: ``S``
    sequence slots (a bucket) of ``rows`` tokens each — ``ids, pos [S * rows]``, the rows after a
    sequence's tokens and padding slots storing nothing (slot -1, position 0), tables as wide as
    ``max_model_len`` positions and the drafter's ``scratch`` past them (or ``rows``) need, bounds
    ``(rows, max_model_len + rows)`` — and ``real``: ``(run index, first token, count, first
    row)`` of the real rows. So the kernels see one shape per bucket: they compile at warm-up,
    not on the step after every run of plain decoding of a new length. ``store=False`` stores
    nothing (warm-up)."""
    width, kv_bound = table_width(max_model_len + max(scratch, rows), block_size), max_model_len + rows
    done = [0] * len(runs)
    while True:
        todo = [i for i, r in enumerate(runs) if done[i] < len(r[2])]
        if not todo:
            return
        for j in range(0, len(todo), buckets[-1]):
            part = todo[j: j + buckets[-1]]
            n = bucket(len(part), buckets)
            tables = table_array([runs[i][0] for i in part], n, width)  # [S, W]
            ids, pos = np.zeros(n * rows, np.int64), np.zeros(n * rows, np.int64)
            flat, prefix, real = np.full(n * rows, -1, np.int64), np.zeros(n, np.int32), []
            for b, i in enumerate(part):
                _, start, tokens = runs[i]
                d, at = done[i], b * rows
                k = min(rows, len(tokens) - d)
                prefix[b] = start + d
                ids[at: at + k] = tokens[d: d + k]
                pos[at: at + k] = np.arange(start + d, start + d + k)
                if store:
                    p = pos[at: at + k]
                    flat[at: at + k] = tables[b, p // block_size].astype(np.int64) * block_size + p % block_size
                real.append((i, d, k, at))
                done[i] += rows
            dev = [torch.from_numpy(a).to(device) for a in (ids, pos, flat, prefix, tables)]
            indptr = torch.arange(n + 1, dtype=torch.int32, device=device) * rows
            meta = AttnMetadata(indptr, dev[3], dev[4], dev[2], max_q_len=rows, max_kv_len=kv_bound)
            yield meta, dev[0], dev[1], real


def warm_up_run(max_model_len: int) -> tuple[list[int], int, list[int]]:
    """A dummy run for warming up `catch_up_parts`' kernels (``store=False``): a full slot of
    ``CATCH_UP`` tokens, fewer when positions stop earlier (a drafter's rope table covers positions
    below about ``max_model_len`` only; rows past a run are padding at position 0)."""
    return [0], 0, [0] * min(CATCH_UP, max_model_len)


def table_width(num_positions: int, block_size: int) -> int:
    """Block-table entries a CUDA graph stages per sequence to cover ``num_positions``
    positions (one spare)."""
    return -(-num_positions // block_size) + 1


def block_table_tensor(tables: Sequence[Sequence[int]]) -> torch.Tensor:  # [B, max_blocks] int32
    width = max((len(t) for t in tables), default=1) or 1
    out = torch.zeros(len(tables), width, dtype=torch.int32)
    for b, t in enumerate(tables):
        if t:
            out[b, : len(t)] = torch.tensor(t, dtype=torch.int32)
    return out


def attn_metadata(tables: Sequence[Sequence[int]], prefix_lens: Sequence[int], counts: Sequence[int],
                  slot_mapping: Sequence[int], device, bits: Optional[Sequence[int]] = None,
                  use_tree_mask: Optional[Sequence[bool]] = None) -> AttnMetadata:
    """Metadata for a ragged batch: sequence b has ``prefix_lens[b]`` cached tokens and
    ``counts[b]`` new ones (rows concatenated in batch order). ``bits`` [N] ancestor bitmasks apply
    to the sequences flagged in ``use_tree_mask``; the rest are causal."""
    indptr = [0]
    for c in counts:
        indptr.append(indptr[-1] + c)
    masked = bits is not None and (use_tree_mask is None or any(use_tree_mask))
    return AttnMetadata(
        qo_indptr=torch.tensor(indptr, dtype=torch.int32, device=device),
        prefix_lens=torch.tensor(list(prefix_lens), dtype=torch.int32, device=device),
        block_tables=block_table_tensor(tables).to(device),
        slot_mapping=torch.tensor(list(slot_mapping), dtype=torch.long, device=device),
        tree_mask=torch.tensor(list(bits), dtype=torch.long, device=device) if masked else None,
        use_tree_mask=(torch.tensor(list(use_tree_mask), dtype=torch.bool, device=device)
                       if masked and use_tree_mask is not None else None),
        max_q_len=max(counts, default=0),
        max_kv_len=max((p + c for p, c in zip(prefix_lens, counts)), default=0),
    )
