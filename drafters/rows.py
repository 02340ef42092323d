"""Rows a drafter kept from earlier steps, gathered for a batch in one operation.

A drafter that keeps per-sequence state from the target's step outputs (EAGLE's features, Medusa's
hidden state) keeps it as *pieces*: ``(step tensor [N, h], first row, rows)``, references into one
tensor per step rather than a slice per sequence (on a GPU's host a slice costs a few microseconds:
at 64 sequences, most of a drafter's host time). `gather` joins a batch's pieces: consecutive rows
of one tensor become one piece, the whole tensor is returned as is, a few pieces are sliced, more
are read by one ``index_select`` over their tensors joined — when those pieces use most of their
tensors' rows (a batch's rows of the same steps); a few rows of each of many tensors (one
sequence's rows of many steps) are sliced and joined instead.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SLICES = 4  # up to this many pieces are joined by slices, more by one index ...
SPARSE = 4  # ... unless their tensors hold over this many times the rows picked (then slices)

Piece = tuple[Tensor, int, int]  # (step tensor [N, h], first row, rows)


def merged(pieces: list[Piece]) -> list[Piece]:
    """``pieces`` with each run of consecutive rows of one tensor joined into one piece."""
    out: list[Piece] = []
    for t, r, n in pieces:
        if out and out[-1][0] is t and out[-1][1] + out[-1][2] == r:
            out[-1] = (t, out[-1][1], out[-1][2] + n)
        else:
            out.append((t, r, n))
    return out


def gather(pieces: list[Piece], width: int, dtype, device) -> Tensor:
    """The rows of ``pieces`` one after the other, ``[sum of rows, h]`` (``width``, ``dtype``,
    ``device``: an empty result's). The result may be a view of a step tensor."""
    pieces = merged(pieces)
    tensors: dict[int, tuple[Tensor, int]] = {}  # id -> (step tensor, its first row in the join)
    starts, lens, base = np.empty(len(pieces), np.int64), np.empty(len(pieces), np.int64), 0
    for i, (t, r, n) in enumerate(pieces):
        if id(t) not in tensors:
            tensors[id(t)] = (t, base)
            base += t.shape[0]
        starts[i], lens[i] = tensors[id(t)][1] + r, n
    if len(pieces) <= SLICES or base > SPARSE * int(lens.sum()):
        parts = [t if r == 0 and n == t.shape[0] else t[r: r + n] for t, r, n in pieces]
        if not parts:
            return torch.zeros(0, width, dtype=dtype, device=device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    skip = np.cumsum(lens) - lens  # each piece's first row in the result
    index = np.repeat(starts - skip, lens) + np.arange(int(lens.sum()))
    joined = [t for t, _ in tensors.values()]
    source = joined[0] if len(joined) == 1 else torch.cat(joined)  # [rows of the steps, h]
    return source.index_select(0, to_device(index, source.device))


def to_device(index: np.ndarray, device) -> Tensor:
    """A host index on ``device``: from pageable memory, non-blocking (the copy returns once the
    array is read, and no synchronisation waits for work already queued on the device)."""
    return torch.from_numpy(index).to(device, non_blocking=True)


def row_index(rows: list[int], device) -> slice | Tensor:
    """Increasing row numbers as an index of a step's outputs: a slice when they are one run (a
    plain step's: row b of sequence b; no host-to-device copy), else an index tensor."""
    if rows and rows[-1] - rows[0] + 1 == len(rows):
        return slice(rows[0], rows[-1] + 1)
    return to_device(np.asarray(rows, dtype=np.int64), device)


def copy_rows(x: Tensor, index: slice | Tensor) -> Tensor:
    """A copy of ``x``'s rows at ``index`` (`row_index`): a graph's static outputs are rewritten
    by its next replay."""
    return x[index].clone() if isinstance(index, slice) else x.index_select(0, index)
