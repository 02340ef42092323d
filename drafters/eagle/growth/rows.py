"""Tree rows: the nodes of a growing tree that a draft forward runs. They are numbered in
creation order, each row's parent row is earlier (or -1 for a child of the root, whose feature
comes from the catch-up), and ``masks [B, R]`` are their ancestor bitmasks among the rows (bit j:
row j), so at most `MAX_ROWS` fit one int64.
"""
from __future__ import annotations

import torch
from torch import Tensor

MAX_ROWS = 63  # bits 0..62 of an int64 ancestor mask (bit 63 is the sign)


def append_rows(masks: Tensor, parent_row: Tensor) -> Tensor:
    """Ancestor masks of new rows (``parent_row [B, n]``, -1 = child of the root) appended after
    the ``masks [B, R]`` rows: ``[B, R + n]``."""
    b, r = masks.shape
    n = parent_row.shape[1]
    if r + n > MAX_ROWS:
        raise ValueError(f"a draft forward over {r + n} tree nodes exceeds {MAX_ROWS}: lower depth or top_k")
    own = torch.ones((), dtype=torch.long, device=masks.device) << torch.arange(r, r + n, device=masks.device)
    inherited = torch.where(parent_row >= 0, masks.gather(1, parent_row.clamp(min=0)) if r else 0, 0)
    return torch.cat([masks, own.expand(b, n) | inherited], 1)


class Rows:
    """The rows grown so far, at exact sizes: each level appends its new rows, and a forward runs
    all of them (`TreeForward.rows`)."""

    def __init__(self, tokens: Tensor, parent: Tensor, depth: Tensor, masks: Tensor) -> None:
        self.tokens, self.parent, self.depth, self.masks = tokens, parent, depth, masks  # [B, R] each

    @classmethod
    def empty(cls, b: int, device) -> "Rows":
        z = torch.zeros(b, 0, dtype=torch.long, device=device)
        return cls(z, z, z, z)

    def add(self, tokens: Tensor, parent_row: Tensor, depth: int) -> None:
        """Append rows ``tokens, parent_row [B, n]`` (parent row or -1) at tree depth ``depth``."""
        self.masks = append_rows(self.masks, parent_row)
        self.tokens = torch.cat([self.tokens, tokens], 1)
        self.parent = torch.cat([self.parent, parent_row], 1)
        self.depth = torch.cat([self.depth, torch.full_like(tokens, depth)], 1)
