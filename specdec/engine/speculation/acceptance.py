"""How many tokens a sequence's next step will emit as a function of its node budget, from the
drafter's own node scores, calibrated online against what verification accepted.

A step emits the accepted draft tokens plus one, and the accepted draft tokens are the nodes on
the accepted path, so their expected number is the sum over nodes of P(node accepted). The
calibration maps a node's (depth, score) to that probability: counts of accepted / verified
nodes in bins of depth and score, shared by all requests (a Beta(1, 1) prior per bin), then a
per-request factor: the request's accepted drafts over what the bins predicted for it (a running
ratio). Drafters list nodes best first (every prefix is the best subtree of its size), so the
expected tokens of a budget n are 1 + the first n - 1 probabilities of the request's last tree.
Drafters without scores get score 0 for every node: the bins then calibrate by depth alone.

A tree smaller than the drafter's budget (the policy chose a small one) says nothing about the
nodes it did not draft; its curve goes on past its last node with the mean probability of each
later node over the trees that held one (`gain`, per node index, times the request's ratio), so
a budget once measured keeps its worth while the policy drafts less, instead of looking no better
than the tree it drafts now. A node index no tree has held yet is worth `PRIOR_GAIN` (the bins'
Beta(1, 1) mean): optimistic, so that a larger tree is tried once before it is judged. At zero, a
policy whose costs were all known (timed at start-up) and whose first trees were small never
learned what a larger one accepts — every budget past the largest tree drafted so far predicted
the same tokens at a higher cost (on an H100, EAGLE-2 at B = 1 spent a third of its steps at 16
nodes for tau 2.29 where its 60-node trees reached 2.53).
"""
from __future__ import annotations

import numpy as np

DEPTHS, BINS = 16, 16  # bins: depth 1..16 (deeper share the last) x score
SCORE_STEP = 0.5  # a score bin spans this much log-likelihood: 0, -0.5, ... -7.5 and below
RATIO_WEIGHT = 0.25  # weight of a new step in a request's running ratio
GAIN_MEMORY = 256  # a node's mean gain weighs its last ~this many trees
PRIOR_GAIN = 0.5  # the acceptance probability of a node index no tree has held yet


class Acceptance:
    """Calibrated acceptance per node, and per request the curve of its last drafted tree (rows
    of one table, so that a step reads a batch's curves in one gather)."""

    def __init__(self, max_nodes: int) -> None:
        self.max_nodes = max_nodes
        self.accepted = np.ones((DEPTHS, BINS))  # Beta(1, 1) prior per bin
        self.verified = np.full((DEPTHS, BINS), 2.0)
        self.table = np.ones((64, max_nodes))  # [rows, T] expected emitted tokens at budgets 1..T
        self.ratios = np.ones(64)  # [rows] accepted / predicted drafts, a running ratio
        self.row: dict[int, int] = {}  # seq_id -> its row
        self.free = list(range(63, -1, -1))
        self.trees = 0
        self.gain = np.full(max_nodes, PRIOR_GAIN)  # [T] mean calibrated probability of node i, over trees holding it
        self.held = np.zeros(max_nodes)  # [T] trees that held node i (the mean's weight, capped)
        self._unseen: int | None = None  # first_unseen(), until held changes
        # over recent trees, for a request with none yet; before any tree, the prior's
        self.mean_curve = np.concatenate([[1.0], 1.0 + np.cumsum(self.gain[1:])])

    @staticmethod
    def bins(depth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.clip(depth, 1, DEPTHS) - 1
        s = np.clip(np.nan_to_num(-score / SCORE_STEP, nan=BINS, posinf=BINS), 0, BINS - 1).astype(np.int64)
        return d.astype(np.int64), s

    def _rows(self, seq_ids: list[int]) -> np.ndarray:
        """The table rows of these requests; a new one gets a row holding the mean curve."""
        row = self.row
        try:  # every request known (all steps but a request's first): one pass
            return np.array([row[sid] for sid in seq_ids], dtype=np.int64)
        except KeyError:
            pass
        for sid in seq_ids:
            if sid not in row:
                if not self.free:  # grow the table
                    n = len(self.table)
                    self.table = np.concatenate([self.table, np.ones((n, self.max_nodes))])
                    self.ratios = np.concatenate([self.ratios, np.ones(n)])
                    self.free = list(range(2 * n - 1, n - 1, -1))
                r = self.row[sid] = self.free.pop()
                self.table[r], self.ratios[r] = self.mean_curve, 1.0
        return np.array([row[sid] for sid in seq_ids], dtype=np.int64)

    def curves(self, seq_ids: list[int]) -> np.ndarray:
        """``[B, max_nodes]``: the tokens each request's next step is expected to emit at
        budgets 1..T."""
        rows = self._rows(seq_ids)  # first: it may grow the table (``self.table[...]`` would
        return self.table[rows]     # read the old one, evaluated before the index)

    def observe(self, seq_ids: list[int], depth: np.ndarray, score: np.ndarray,
                parents: np.ndarray, num: np.ndarray, accepted: list[list[int]]) -> None:
        """One step's verified trees ``[B, T]`` (node order; ``num [B]`` nodes each) and their
        accepted paths: update the bins, each request's ratio and its curve."""
        b, t = depth.shape
        node = np.arange(t)
        inner = (node[None, :] >= 1) & (node[None, :] < num[:, None])  # [B, T] draft nodes
        hit = np.zeros((b, t), dtype=bool)
        for r, path in enumerate(accepted):
            hit[r, path[1:]] = True
        d, s = self.bins(depth, score)
        flat = (d * BINS + s)[inner]  # np.add.at is ~10x slower than bincount here
        self.verified += np.bincount(flat, minlength=DEPTHS * BINS).reshape(DEPTHS, BINS)
        self.accepted += np.bincount(flat, weights=hit[inner], minlength=DEPTHS * BINS).reshape(DEPTHS, BINS)
        p = np.where(inner, self.accepted[d, s] / self.verified[d, s], 0.0)
        p = _capped_by_parents(p, parents, depth)  # [B, T]
        rows = self._rows(seq_ids)
        got = hit.sum(1)  # [B] accepted drafts
        ratio = (1 - RATIO_WEIGHT) * self.ratios[rows] + RATIO_WEIGHT * (got + 0.5) / (p.sum(1) + 0.5)
        self.ratios[rows] = ratio = np.clip(ratio, 0.2, 5.0)
        width = min(t, self.max_nodes)
        held = inner[:, :width]  # [B, width]
        count = held.sum(0)  # [width] trees holding node i this step
        self.held[:width] = np.minimum(self.held[:width] + count, GAIN_MEMORY)
        self._unseen = None
        w = np.divide(count, self.held[:width], out=np.zeros(width), where=count > 0)
        self.gain[:width] += w * (np.divide(p[:, :width].sum(0), count, out=np.zeros(width), where=count > 0)
                                  - self.gain[:width])
        beyond = np.broadcast_to(self.gain, (b, self.max_nodes)).copy()  # [B, T]: the mean gains ...
        beyond[:, :width] = np.where(held, p[:, :width], self.gain[None, :width])  # ... past its own nodes
        scaled = np.minimum(beyond[:, 1:] * ratio[:, None], 1.0)  # [B, T - 1]
        curves = np.empty((b, self.max_nodes))
        curves[:, 0] = 1.0
        np.cumsum(scaled, 1, out=curves[:, 1:])
        curves[:, 1:] += 1.0
        self.table[rows] = curves
        self.trees += b
        w = max(b / self.trees, 0.02)
        self.mean_curve = (1 - w) * self.mean_curve + w * curves.mean(0)

    def first_unseen(self) -> int:
        """The first node index no tree has held yet (``max_nodes`` when all have): a budget
        above it is predicted from the prior (optimistic), not from what was accepted."""
        if self._unseen is None:
            seen = self.held[1:] > 0
            self._unseen = int(np.argmin(seen)) + 1 if not seen.all() else self.max_nodes
        return self._unseen

    def curve(self, seq_id: int) -> np.ndarray:
        return self.curves([seq_id])[0]

    def release(self, seq_id: int) -> None:
        r = self.row.pop(seq_id, None)
        if r is not None:
            self.free.append(r)


def _capped_by_parents(p: np.ndarray, parents: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """``p [B, T]`` with each node's value capped by its parent's, depth by depth."""
    out, rows = p.copy(), np.arange(p.shape[0])[:, None]
    for level in range(2, int(depth.max(initial=0)) + 1):
        at = depth == level
        capped = np.minimum(out, out[rows, np.clip(parents, 0, None)])
        out = np.where(at, capped, out)
    return out


def tree_statistics(tree, rows: int):
    """Start the host copy of the first ``rows`` trees' node depths, scores (zeros for a drafter
    without scores) and parents ``[B, T]``, in one transfer issued now, with the drafter's work
    (on a GPU: non-blocking, into pinned memory). Returns ``read(num_nodes)``, which gives
    ``(depth, score, parents, num_nodes [B])`` as arrays: call it only after the step's read-back,
    which waits for the copy (it runs before the step on the same stream)."""
    import torch

    scores = tree.scores if tree.scores is not None else torch.zeros_like(tree.depth, dtype=torch.float32)
    stats = torch.stack([tree.depth[:rows].float(), scores[:rows].float(), tree.parents[:rows].float()])
    host = stats.to("cpu", non_blocking=True)

    def read(num_nodes: list[int]):
        depth, score, parents = host.numpy()
        return depth.astype(np.int64), score, parents.astype(np.int64), np.asarray(num_nodes)
    return read
