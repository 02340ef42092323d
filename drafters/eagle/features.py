"""Per-sequence target features and the draft's catch-up.

Alignment (EAGLE, Li et al. 2024, sec. 3): draft pair i is (feature f_i of target position i,
token t_{i+1}); it sits at draft position i (rope position i) and predicts f_{i+1}, whose logits
score t_{i+2}. With ``L = len(seq)`` the root t_{L-1} is not yet in the target's cache, the
target has produced f_0 .. f_{L-2}, so the draft holds pairs 0 .. L-2 and the last one, pair
(f_{L-2}, root), scores the depth-1 children.

Per step, `update` keeps the target features of what the step settled (prefill rows; the accepted
path of a decode step) as pending; the next `propose` runs the pending pairs (the catch-up),
stores their K/V at their positions and counts them as cached. After preemption (`release`)
everything restarts from the recomputed prefill's features.
"""
from __future__ import annotations

import torch
from torch import Tensor

from specdec.engine.protocol import StepResult

from ..rows import Piece, gather
from .draft import TABLE


def settled_rows(step: StepResult):
    """``(hidden rows, [(seq, first position, count)])`` of what ``step`` settled: a prefill's
    rows, a decode's accepted path."""
    paths = step.accepted
    rows, spans = [], []
    for seq, prefill, start, prefix, new, r in zip(step.seqs, step.is_prefill, step.row_offsets,
                                                   step.prefix_lens, step.num_new, step.sample_index):
        if prefill:
            rows.extend(range(start, start + new))
            spans.append((seq, prefix, new))
        elif r >= 0:
            path = paths[r]
            if len(path) == 1:  # (a plain step's: the root)
                rows.append(start + path[0])
            else:
                rows.extend([start + n for n in path])
            spans.append((seq, prefix, len(path)))
    return rows, spans


class FeatureStore:
    """Per sequence: how many draft pairs hold valid K/V, and the target features of the pairs
    not run yet.

    A step's features stay one tensor, shared by its sequences: a sequence's pending features are
    pieces ``(step tensor, first row, rows)``, so keeping a step's features costs no tensor
    operation and gathering a batch's (`take_many`: drafters/rows.py) costs one index, whatever
    the batch size."""

    def __init__(self, name: str) -> None:
        self.name = name  # the drafter's, for errors
        self.cached: dict[int, int] = {}  # seq_id -> draft pairs whose K/V are valid (0 .. n-1)
        # seq_id -> (first position, count, pieces (step features [N, h], first row, rows))
        self.pending: dict[int, tuple[int, int, list[Piece]]] = {}

    def release(self, seq_id: int) -> None:
        self.cached.pop(seq_id, None)
        self.pending.pop(seq_id, None)

    def start(self, seq) -> int:
        """The first pair of ``seq`` the next catch-up runs."""
        return self.cached.get(seq.seq_id, 0)

    def keep(self, spans, feats: Tensor) -> None:
        """Append ``feats [n, h]``, the features of `settled_rows`'s ``spans`` one after the other."""
        offset, pending = 0, self.pending
        for seq, first, count in spans:  # (one loop, no call per sequence: 64 calls cost ~30 us)
            got = pending.get(seq.seq_id)
            if got is None:
                pending[seq.seq_id] = (first, count, [(feats, offset, count)])
            else:
                start, held, pieces = got
                if first != start + held:
                    self._misaligned(seq.seq_id, first, start + held)
                pieces.append((feats, offset, count))
                pending[seq.seq_id] = (start, held + count, pieces)
            offset += count

    def _misaligned(self, seq_id: int, first: int, expected: int):
        raise AssertionError(f"{self.name}: features of sequence {seq_id} arrive at position "
                             f"{first}, expected {expected}")

    def _pop(self, seq, start: int, end: int) -> list[Piece]:
        """The pieces of positions ``start .. end - 1`` of ``seq``, no longer pending."""
        first, count, pieces = self.pending.pop(seq.seq_id, (start, 0, None))
        if pieces is None or first != start or count < end - start:
            have = "none" if pieces is None else f"positions {first}..{first + count - 1}"
            raise AssertionError(f"{self.name}: sequence {seq.request_id} needs target features for "
                                 f"positions {start}..{end - 1}, has {have}")
        return pieces

    def _picked(self, seq, start: int, end: int) -> list[Piece]:
        """The pieces of positions ``start .. end - 1`` of ``seq`` (cut to them), no longer pending."""
        picked, need = [], end - start
        for t, r, n in self._pop(seq, start, end):
            if need <= 0:
                break
            picked.append((t, r, min(n, need)))
            need -= n
        return picked

    def take_many(self, spans, width: int, dtype, device) -> Tensor:
        """The features of ``spans`` — per sequence ``(seq, start, end)``: positions ``start ..
        end - 1``, no longer pending — one sequence after the other ``[sum(end - start), h]``, in
        one gather (``width``, ``dtype``, ``device``: an empty result's)."""
        picked = [p for seq, start, end in spans for p in self._picked(seq, start, end)]
        return gather(picked, width, dtype, device)

    def take_long(self, seqs, rows: int) -> list[tuple[list[int], int, list[int], Tensor]]:
        """All but the last pair of each sequence with more than ``rows`` pairs to catch up (the
        prompt after a prefill, the steps the policy ran without drafting, the whole history after
        preemption), so that a graph's fixed catch-up width holds every sequence: ``(block table,
        first position, token ids [n], features [n, h])`` per such sequence, counted as cached
        (the caller runs them: `DraftForward.catch_up`). Their features come in one gather (after
        a run of plain steps: a row of each of those steps' tensors per sequence)."""
        spans = []  # (seq, first pair, end)
        for s in seqs:
            start, end = self.start(s), len(s) - 1
            if end - start > rows:
                spans.append((s, start, end))
        if not spans:
            return []
        feats = self.take_many(spans, 0, None, None)  # (never empty: no width, dtype or device needed)
        runs, at = [], 0
        for s, start, end in spans:
            f = feats[at: at + end - start]  # [end - start, h]
            at += end - start
            self.pending[s.seq_id] = (end - 1, 1, [(f, f.shape[0] - 1, 1)])
            runs.append((s.aux_tables[TABLE], start, s.tokens[start + 1: end], f[:-1]))
            self.cached[s.seq_id] = end - 1
        return runs
