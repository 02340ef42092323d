"""drafter=ngram: prompt lookup decoding (Saxena 2023; HF `prompt_lookup_num_tokens`; vLLM's
n-gram proposer). The draft is what followed the latest earlier occurrence of the sequence's
longest suffix n-gram (n_max down to n_min). The tree variant merges the continuations of several
occurrences into a trie of up to ``max_nodes`` nodes, so that a few guesses are verified at once.

A few sequences (up to ``host_batch``) are matched one at a time by the numpy functions below,
on the host; a larger batch at once with tensor operations (lookup.py), in a CUDA graph per
batch bucket on a GPU. Both give the same trees (tests/drafters/test_ngram.py). n-gram drafts
are chosen deterministically, so every node is a DETERMINISTIC candidate for the verifier.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from specdec.engine.graphs import batch_buckets, bucket
from specdec.verifiers import DraftTree

from . import lookup
from .base import DrafterBase

HOST_BATCH = 4  # up to this many sequences (by default), the lookup runs on the host


def match_starts(ctx: np.ndarray, n: int) -> np.ndarray:
    """Start indices i < len - n of every earlier occurrence of the length-n suffix of ``ctx``,
    most recent first (the suffix itself excluded). ``ctx`` [L] int64."""
    if n < 1 or len(ctx) <= n:
        return np.empty(0, dtype=np.int64)
    m = len(ctx) - n  # candidate starts 0 .. m - 1: the windows of ctx[:-1]
    hit = ctx[:m] == ctx[m]
    for j in range(1, n):  # one shifted comparison per suffix token (n is small)
        hit &= ctx[j: m + j] == ctx[m + j]
    return np.flatnonzero(hit)[::-1]


def continuations(ctx: np.ndarray, n_min: int, n_max: int, k: int, max_matches: int) -> list[np.ndarray]:
    """Up to ``max_matches`` continuations (each at most k tokens) of the longest matching suffix,
    falling back to shorter n-grams to fill the list; longer matches and recent ones first."""
    found: list[np.ndarray] = []
    for n in range(min(n_max, len(ctx) - 1), n_min - 1, -1):
        for start in match_starts(ctx, n):
            cont = ctx[start + n: start + n + k]
            if len(cont):
                found.append(cont)
            if len(found) >= max_matches:
                return found
    return found


def trie(root: int, conts: list[np.ndarray], max_nodes: int, k: int) -> tuple[list[int], list[int], list[float]]:
    """`lookup.trie` for one sequence, on the host: the continuations (each at most ``k`` tokens)
    merged into a trie under ``root``, cut to the root and the ``max_nodes - 1`` nodes the most
    continuations pass through (ties: earlier continuation, shallower first). Returns tokens,
    parents and scores (log of the share of continuations through a node), best node first, so
    every prefix is a subtree and the best of its size."""
    children: dict[tuple[int, int], int] = {}
    count, first, parent, token = [], [], [], []  # per trie node, in creation order
    for m, cont in enumerate(conts):
        node = -1
        for j, tok in enumerate(cont.tolist()):
            child = children.get((node, tok))
            if child is None:
                child = children[(node, tok)] = len(count)
                count.append(0)
                first.append(m * k + j)  # where the first continuation through it has it
                parent.append(node)
                token.append(tok)
            count[child] += 1
            node = child
    order = sorted(range(len(count)), key=lambda i: (-count[i], first[i]))[: max_nodes - 1]
    index = {node: at + 1 for at, node in enumerate(order)}  # a parent ranks before its children
    total = max(len(conts), 1)
    return ([root] + [token[i] for i in order], [-1] + [index.get(parent[i], 0) for i in order],
            [0.0] + [math.log(max(count[i] / total, 1e-6)) for i in order])


class NgramDrafter(DrafterBase):
    """Chain (``max_matches=1``) or trie of n-gram continuations, for the whole batch at once
    (lookup.py): the last ``window`` tokens of each sequence are searched."""
    name = "ngram"

    def __init__(self, num_tokens: int = 8, n_min: int = 1, n_max: int = 3, max_matches: int = 1,
                 max_nodes: int | None = None, window: int = 2048, host_batch: int = HOST_BATCH) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"ngram drafter needs 1 <= n_min <= n_max; got n_min={n_min}, n_max={n_max}")
        if num_tokens < 1:
            raise ValueError(f"ngram drafter: num_tokens (draft depth) must be >= 1; got {num_tokens}")
        if max_matches < 1:
            raise ValueError(f"ngram drafter: max_matches must be >= 1; got {max_matches}")
        if window <= n_max:
            raise ValueError(f"ngram drafter: window must exceed n_max={n_max}; got {window}")
        if host_batch < 0:
            raise ValueError(f"ngram drafter: host_batch must be >= 0; got {host_batch}")
        self.k, self.n_min, self.n_max, self.max_matches = num_tokens, n_min, n_max, max_matches
        self.window, self.host_batch = window, host_batch
        self.max_nodes = max_nodes if max_nodes is not None else num_tokens * max_matches + 1
        if not 2 <= self.max_nodes <= 64:
            raise ValueError(f"ngram drafter: max_nodes must lie in [2, 64]; got {self.max_nodes}")
        if max_matches > 1:
            self.name = "ngram_tree"

    def load(self, target) -> None:
        super().load(target)
        self.windows = lookup.TokenWindows(self.window, target.device)
        self.graphs = target.graph_runner()
        self.buckets = batch_buckets(target.graph_batch) if target.graph_batch else ()

    @torch.inference_mode()
    def warm_up(self) -> int:
        """Capture the batched lookup's graph of every batch bucket above ``host_batch`` now."""
        return self.graphs.warm_up(self._inputs(bg, [], []) for bg in self.buckets if bg > self.host_batch)

    def release(self, seq) -> None:
        self.windows.release(seq)

    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        """The trie of each sequence's continuations, best node first, cut to its budget. Up to
        ``host_batch`` sequences are matched on the host, one at a time (~30 us each, where the
        batched lookup's few dozen small ops cost ~0.3 ms on a CPU and ~2 ms of launches on a GPU
        at B = 1; the engine stages a host tree with the step's other host inputs); a larger batch
        at once in tensor ops (lookup.py), replayed from a CUDA graph per batch bucket when the
        engine allows graphs (each row the last ``window`` tokens: one shape per bucket)."""
        if len(seqs) <= self.host_batch:
            return self._host_trees(seqs, budgets)
        return self.graphs.run(*self._inputs(bucket(len(seqs), self.buckets), seqs, budgets))

    def _inputs(self, bg: int | None, seqs, budgets):
        """``(key, host, body, dev)`` of a `GraphRunner.run`: ``bg`` sequence slots (None:
        eagerly, exactly ``len(seqs)``); padding rows hold no token (no match, root -1: a tree
        nobody reads)."""
        n = bg or len(seqs)
        host = {"ctx": self.windows.rows(seqs, n, full=bg is not None), "budget": np.ones(n, np.int64)}
        host["budget"][: len(seqs)] = budgets
        return (None if bg is None else (bg,)), host, self._lookup, {}

    def _lookup(self, v: dict) -> DraftTree:
        """``ctx [B, W]``, ``budget [B]`` -> the batch's tries (tensor ops only: graph-safe)."""
        ctx = v["ctx"]
        conts, _ = lookup.continuations(ctx, self.n_min, self.n_max, self.k, self.max_matches)
        tokens, parents, num, scores = lookup.trie(ctx[:, -1], conts, self.max_nodes)  # [B, T]
        num = torch.minimum(num, v["budget"])
        parents = parents.masked_fill(torch.arange(tokens.shape[1], device=ctx.device) >= num[:, None], -1)
        return DraftTree(tokens, parents, num, scores=scores, validate=False, depth_bound=self.k,
                         children_bound=self.max_matches)  # (kind: DETERMINISTIC, the default)

    def _host_trees(self, seqs, budgets) -> DraftTree:
        """`propose` on the host: ``[B, T]`` tensors on the CPU, T the largest tree (so a step's
        graph bucket fits the trees found, not the drafter's maximum)."""
        found = []
        for seq, budget in zip(seqs, budgets):
            ctx = self.windows.array(seq)[-self.window:]
            conts = continuations(ctx, self.n_min, self.n_max, self.k, self.max_matches)
            found.append(trie(int(ctx[-1]), conts, min(budget, self.max_nodes), self.k))
        tokens, parents, scores = zip(*found)
        return DraftTree.from_lists(tokens, parents, scores=scores, validate=False, depth_bound=self.k,
                                    children_bound=self.max_matches)  # (kind: DETERMINISTIC, the default)
