"""Paged KV-cache block accounting: a free list and reference counts (nano-vllm's BlockManager).

Blocks are ids into the cache tensors ``[num_blocks, block_size, Hkv, D]``. A block table maps a
sequence's positions to blocks: position p lives in ``table[p // block_size]`` at offset
``p % block_size``. Reference counts let several tables share a block (forked or shared prefixes);
a block returns to the free list when its count drops to zero.
"""
from __future__ import annotations

from collections import deque


class OutOfBlocks(RuntimeError):
    """Raised when an allocation asks for more free blocks than there are."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two; got {block_size}")
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1; got {num_blocks}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.ref_counts = [0] * num_blocks
        self.free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def missing(self, table: list[int], num_tokens: int) -> int:
        """Blocks that ``table`` lacks to hold ``num_tokens`` positions."""
        return max(0, self.blocks_for(num_tokens) - len(table))

    def can_grow(self, table: list[int], num_tokens: int) -> bool:
        return self.missing(table, num_tokens) <= self.num_free

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Append fresh blocks to ``table`` (in place) until it holds ``num_tokens`` positions."""
        need = self.missing(table, num_tokens)
        if need > self.num_free:
            raise OutOfBlocks(f"need {need} free KV blocks, {self.num_free} available")
        for _ in range(need):
            block = self.free.popleft()
            self.ref_counts[block] = 1
            table.append(block)

    def share(self, table: list[int]) -> list[int]:
        """A new table referencing the same blocks (e.g. a forked sequence)."""
        for block in table:
            self.ref_counts[block] += 1
        return list(table)

    def release(self, table: list[int]) -> None:
        """Drop one reference to every block of ``table`` and empty it (in place)."""
        for block in table:
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free.append(block)
            elif self.ref_counts[block] < 0:
                raise AssertionError(f"block {block} released more often than referenced")
        table.clear()

    def check(self, tables: list[list[int]]) -> None:
        """Invariant check (tests, fuzzing): reference counts equal the tables' uses, no block is
        both free and referenced, none is lost."""
        counts = [0] * self.num_blocks
        for table in tables:
            for block in table:
                counts[block] += 1
        if counts != self.ref_counts:
            bad = [b for b in range(self.num_blocks) if counts[b] != self.ref_counts[b]]
            raise AssertionError(f"reference counts disagree with block tables for blocks {bad[:10]}")
        free = set(self.free)
        if len(free) != len(self.free):
            raise AssertionError("a block is on the free list twice")
        used = {b for b in range(self.num_blocks) if counts[b]}
        if free & used:
            raise AssertionError(f"blocks both free and in use: {sorted(free & used)[:10]}")
        if len(free) + len(used) != self.num_blocks:
            raise AssertionError(f"{self.num_blocks - len(free) - len(used)} blocks leaked")
