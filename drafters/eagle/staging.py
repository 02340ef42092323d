"""Host staging of an EAGLE step: the inputs of `draft.draft` for a batch of sequence slots, as
host arrays a `GraphRunner` copies in one go (the real sequences first, then padding slots that
store nothing), and the target features the catch-up runs.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from torch import Tensor

from specdec.engine.ragged import packed_runs, table_array

from .draft import TABLE
from .features import FeatureStore


class Stager:
    """Stages a step's inputs from the sequences and their pending features (`FeatureStore`)."""

    def __init__(self, features: FeatureStore, block_size: int, max_rows: int, table_width: int,
                 feature_width: int, dtype, device) -> None:
        self.features, self.block_size, self.max_rows = features, block_size, max_rows
        self.table_width = table_width  # block-table entries a graph stages per sequence
        self.feature_width, self.dtype, self.device = feature_width, dtype, device

    def stage(self, seqs, budgets, keep: int, bg: int,
              rows: Optional[int]) -> tuple[dict[str, np.ndarray], Tensor, int]:
        """Host inputs of `draft` for ``bg`` sequence slots (``len(seqs)`` real ones), their
        features ``[Nc, h]`` and the catch-up's longest run. ``rows``: pairs per sequence slot in
        a graph (packed, trailing padding), None: exact. Counts the staged pairs as cached."""
        n = len(seqs)
        starts = np.array([self.features.start(s) for s in seqs], np.int64)  # pairs start ..
        ends = np.array([len(s) - 1 for s in seqs], np.int64)  # .. end - 1
        total = int((ends - starts).sum()) if rows is None else bg * rows
        width = max((len(s.aux_tables[TABLE]) for s in seqs), default=1) if rows is None else self.table_width
        tables = table_array([s.aux_tables[TABLE] for s in seqs], bg, width)  # [bg, W]
        indptr, pos, slots, real_rows = packed_runs(  # [bg + 1], [Nc] x2, [n, R]
            starts, ends, tables, self.block_size, total, self.max_rows)
        row_slots = np.full((bg, self.max_rows), -1, np.int64)  # [bg, R] tree rows' slots
        row_slots[:n] = real_rows
        ids = np.zeros(total, np.int64)  # [Nc] pair i of b: (feature at start_b + i, next token)
        start_lens, ctx, last = np.zeros(bg, np.int32), np.zeros(bg, np.int32), np.zeros(bg, np.int64)
        start_lens[:n], ctx[:n], last[:n] = starts, ends, indptr[1:n + 1] - 1
        roots, nodes = np.zeros(bg, np.int64), np.ones(bg, np.int64)  # [bg]
        nodes[:n] = np.minimum(np.asarray(budgets[:n], np.int64), keep)
        spans = list(zip(seqs, starts.tolist(), ends.tolist()))
        feats = self.features.take_many(spans, self.feature_width, self.dtype, self.device)  # [Nc, h]
        for b, (s, start, end) in enumerate(spans):
            ids[indptr[b]:indptr[b + 1]] = s.tokens[start + 1: end + 1]
            roots[b] = s.tokens[-1]
            self.features.cached[s.seq_id] = end  # the staged pairs are run by `draft`
        host = {"ids": ids, "pos": pos, "slots": slots, "indptr": indptr, "start": start_lens,
                "last": last, "ctx": ctx, "tables": tables, "row_slots": row_slots, "roots": roots,
                "nodes": nodes}
        return host, feats, int((ends - starts).max()) if n else 1
