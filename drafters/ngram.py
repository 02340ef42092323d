"""drafter=ngram: prompt lookup decoding (Saxena 2023; HF `prompt_lookup_num_tokens`; vLLM's
n-gram proposer). The draft is what followed the latest earlier occurrence of the sequence's
longest suffix n-gram (n_max down to n_min). The tree variant merges the continuations of several
occurrences into a trie of up to ``max_nodes`` nodes, so that a few guesses are verified at once.

The drafter matches the whole batch at once with tensor operations (lookup.py); the numpy
functions below do the same for one sequence, the reference that tests/drafters/test_ngram.py
compares it with. n-gram drafts are chosen deterministically, so every node is a DETERMINISTIC
candidate for the verifier.
"""
from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from specdec.verifiers import CandidateKind, DraftTree

from . import lookup
from .base import DrafterBase

HOST_BATCH = 4  # up to this many sequences, the lookup runs on the host


def match_starts(ctx: np.ndarray, n: int) -> np.ndarray:
    """Start indices i < len - n of every earlier occurrence of the length-n suffix of ``ctx``,
    most recent first (the suffix itself excluded). ``ctx`` [L] int64."""
    if n < 1 or len(ctx) <= n:
        return np.empty(0, dtype=np.int64)
    windows = sliding_window_view(ctx[:-1], n)  # [L - n, n]: window i = ctx[i : i + n]
    hits = np.flatnonzero((windows == ctx[-n:]).all(axis=1))
    return hits[::-1]


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


def trie(root: int, conts: list[np.ndarray], max_nodes: int) -> tuple[list[int], list[int]]:
    """Merge continuations into a trie under ``root``: (tokens, parents), at most ``max_nodes``
    nodes, earlier continuations taking precedence; nodes are appended in topological order."""
    tokens, parents = [root], [-1]
    children: dict[tuple[int, int], int] = {}
    for cont in conts:
        node = 0
        for tok in cont.tolist():
            child = children.get((node, tok))
            if child is None:
                if len(tokens) >= max_nodes:
                    break
                child = len(tokens)
                children[(node, tok)] = child
                tokens.append(tok)
                parents.append(node)
            node = child
    return tokens, parents


class NgramDrafter(DrafterBase):
    """Chain (``max_matches=1``) or trie of n-gram continuations, for the whole batch at once
    (lookup.py): the last ``window`` tokens of each sequence are searched."""
    name = "ngram"

    def __init__(self, num_tokens: int = 8, n_min: int = 1, n_max: int = 3, max_matches: int = 1,
                 max_nodes: int | None = None, window: int = 2048) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"ngram drafter needs 1 <= n_min <= n_max; got n_min={n_min}, n_max={n_max}")
        if num_tokens < 1:
            raise ValueError(f"ngram drafter: num_tokens (draft depth) must be >= 1; got {num_tokens}")
        if max_matches < 1:
            raise ValueError(f"ngram drafter: max_matches must be >= 1; got {max_matches}")
        if window <= n_max:
            raise ValueError(f"ngram drafter: window must exceed n_max={n_max}; got {window}")
        self.k, self.n_min, self.n_max, self.max_matches = num_tokens, n_min, n_max, max_matches
        self.window = window
        self.max_nodes = max_nodes if max_nodes is not None else num_tokens * max_matches + 1
        if not 2 <= self.max_nodes <= 64:
            raise ValueError(f"ngram drafter: max_nodes must lie in [2, 64]; got {self.max_nodes}")
        if max_matches > 1:
            self.name = "ngram_tree"

    def load(self, target) -> None:
        super().load(target)
        self.windows = lookup.TokenWindows(self.window, target.device)

    def release(self, seq) -> None:
        self.windows.release(seq)

    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        """The trie of each sequence's continuations, best node first, cut to its budget. A few
        sequences are matched on the host: on a GPU the lookup's few dozen small kernels cost
        ~2 ms a step at B = 1 (H200), more than the host's whole lookup; the engine stages a host
        tree with the step's inputs."""
        small = len(seqs) <= HOST_BATCH
        ctx = self.windows.batch(seqs, "cpu" if small else None)  # [B, W]
        conts, _ = lookup.continuations(ctx, self.n_min, self.n_max, self.k, self.max_matches)
        tokens, parents, num, scores = lookup.trie(ctx[:, -1], conts, self.max_nodes)  # [B, T]
        budget = torch.tensor(budgets, device=ctx.device)
        num = torch.minimum(num, budget)
        parents = parents.masked_fill(torch.arange(tokens.shape[1], device=ctx.device) >= num[:, None], -1)
        kind = torch.full_like(tokens, int(CandidateKind.DETERMINISTIC), dtype=torch.int8)
        return DraftTree(tokens, parents, num, kind=kind, scores=scores, validate=False,
                         depth_bound=self.k, children_bound=self.max_matches)
