"""drafter=suffix: speculation from the text already seen (SuffixDecoding, Oliaro et al. 2024; vLLM's
``method=suffix``). Every earlier place where the sequence's current suffix occurred, in its own
prompt and output or in the outputs of finished requests (a bounded store), votes for what came
next; the votes form a trie whose nodes are scored by the share of votes through them.

  * matching: positions are indexed by the bigram that ends there (a dict per text); the
    candidates of the current last bigram are extended backwards, and only the longest matches
    (ties: the most recent) vote, so a long shared context outweighs a common bigram;
  * the speculation length follows the match: at most ``alpha`` x the match length tokens deep
    (SuffixDecoding's adaptive length), at most ``max_depth``; a node keeps at least
    ``min_share`` of the votes;
  * memory is bounded: the store keeps the last ``max_stored_tokens`` tokens of finished outputs
    and forgets whole outputs, oldest first.

Nodes are DETERMINISTIC candidates (chosen from counts, not sampled), listed best first.
"""
from __future__ import annotations

from collections import deque
import numpy as np
import torch

from specdec.verifiers import DraftTree

from .base import DrafterBase


class Text:
    """A growing token array and the positions where each bigram ends (``pos`` such that
    ``tokens[pos - 2 : pos]`` is the bigram)."""

    def __init__(self) -> None:
        self.tokens = np.empty(64, dtype=np.int64)
        self.size = 0
        self.ends: dict[tuple[int, int], list[int]] = {}

    def extend(self, tokens) -> None:
        new = np.asarray(tokens, dtype=np.int64)
        if self.size + len(new) > len(self.tokens):
            grown = np.empty(2 * (self.size + len(new)), dtype=np.int64)
            grown[: self.size] = self.tokens[: self.size]
            self.tokens = grown
        start = self.size
        self.tokens[start: start + len(new)] = new
        self.size += len(new)
        t = self.tokens
        for end in range(max(start, 2), self.size + 1):
            self.ends.setdefault((int(t[end - 2]), int(t[end - 1])), []).append(end)

    def view(self) -> np.ndarray:
        return self.tokens[: self.size]


class SuffixDrafter(DrafterBase):
    name = "suffix"

    def __init__(self, max_nodes: int = 32, max_depth: int = 16, alpha: float = 2.0,
                 max_match: int = 32, min_share: float = 0.05, max_votes: int = 64,
                 max_stored_tokens: int = 1 << 18) -> None:
        if not 2 <= max_nodes <= 64:
            raise ValueError(f"drafter=suffix: max_nodes must lie in [2, 64]; got {max_nodes}")
        for name, value in (("max_depth", max_depth), ("max_match", max_match), ("max_votes", max_votes),
                            ("max_stored_tokens", max_stored_tokens)):
            if value < 1:
                raise ValueError(f"drafter=suffix: {name} must be >= 1; got {value}")
        if alpha <= 0 or not 0 <= min_share < 1:
            raise ValueError(f"drafter=suffix: alpha must be > 0 and min_share in [0, 1); got "
                             f"alpha={alpha}, min_share={min_share}")
        self.max_nodes, self.max_depth, self.alpha = max_nodes, max_depth, alpha
        self.max_match, self.min_share, self.max_votes = max_match, min_share, max_votes
        self.max_stored = max_stored_tokens
        self.texts: dict[int, Text] = {}  # seq_id -> its prompt and output so far
        self.store: deque[np.ndarray] = deque()  # finished outputs, oldest first
        self.store_text, self.stored = Text(), 0

    # ---- state ------------------------------------------------------------------------------
    def _text(self, seq) -> Text:
        text = self.texts.get(seq.seq_id)
        if text is None or text.size > len(seq.tokens):  # new, or recomputed after preemption
            text = self.texts[seq.seq_id] = Text()
        if text.size < len(seq.tokens):
            text.extend(seq.tokens[text.size:])
        return text

    def release(self, seq) -> None:
        """A finished request's output joins the store (a preempted one is only forgotten)."""
        self.texts.pop(seq.seq_id, None)
        if seq.finished and seq.output:
            self.store.append(np.asarray(seq.output, dtype=np.int64))
            self.stored += len(seq.output)
            if self.stored > self.max_stored:
                while self.stored > self.max_stored // 2:  # forget the oldest half, reindex
                    self.stored -= len(self.store.popleft())
                self.store_text = Text()
                for out in self.store:
                    self.store_text.extend(np.append(out, -1))
            else:
                self.store_text.extend(np.append(seq.output, -1))  # -1: no match crosses outputs

    # ---- drafting ---------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        trees = [self.tree(self._text(s), min(b, self.max_nodes)) for s, b in zip(seqs, budgets)]
        tokens, parents, scores = zip(*trees)
        return DraftTree.from_lists(tokens, parents, device=self.target.device, scores=scores, validate=False,
                                    depth_bound=self.max_depth)  # (kind: DETERMINISTIC, the default)

    def tree(self, text: Text, budget: int) -> tuple[list[int], list[int], list[float]]:
        """(tokens, parents, scores) of one sequence's tree, best node first, ``budget`` nodes
        at most; ``text`` its tokens so far."""
        votes, depth = self.votes(text)
        return vote_trie(int(text.view()[-1]), votes, budget, depth, self.min_share)

    def votes(self, own: Text) -> tuple[list[np.ndarray], int]:
        """The continuations of the longest matches of the sequence's suffix, in its own text
        and in the store, and how deep to speculate."""
        ctx = own.view()
        if len(ctx) < 2:
            return [], 0
        key = (int(ctx[-2]), int(ctx[-1]))
        found = []  # (match length, recency, continuation)
        for text, rank in ((self.store_text, 0), (own, 1 << 40)):  # own text: more recent
            ends = [e for e in text.ends.get(key, ()) if e < len(ctx) or text is not own]
            if not ends:  # (in its own text, the suffix itself is not a match)
                continue
            ends = np.asarray(ends[-4 * self.max_votes:])  # the most recent ones
            for e, n in zip(ends.tolist(), match_lengths(text.view(), ends, ctx, self.max_match).tolist()):
                found.append((n, e + rank, text.view()[e: e + self.max_depth]))
        if not found:
            return [], 0
        found.sort(key=lambda f: (f[0], f[1]), reverse=True)
        found = found[: self.max_votes]
        longest = found[0][0]
        depth = min(self.max_depth, max(1, int(self.alpha * longest)))
        return [c for n, _, c in found if n == longest or n >= 4], depth


def match_lengths(tokens: np.ndarray, ends: np.ndarray, ctx: np.ndarray, limit: int) -> np.ndarray:
    """For each ``ends[i]``, how many tokens before it equal the last tokens of ``ctx`` (at
    most ``limit``; the bigram itself counts 2)."""
    j = np.arange(1, min(limit, len(ctx)) + 1)  # [J]
    pos = ends[:, None] - j  # [E, J]
    ok = (pos >= 0) & (tokens[np.clip(pos, 0, None)] == ctx[len(ctx) - j])
    return np.where(ok.all(1), ok.shape[1], ok.argmin(1))


def vote_trie(root: int, votes: list[np.ndarray], budget: int, depth: int,
              min_share: float) -> tuple[list[int], list[int], list[float]]:
    """A trie of the votes (each cut at ``depth`` and at a -1), nodes scored by the share of
    votes through them, those under ``min_share`` dropped, the best ``budget - 1`` kept, best
    first (a node's share never exceeds its parent's: parents come first)."""
    counts: dict[tuple[int, ...], int] = {}
    for v in votes:
        path = ()
        for tok in v[:depth].tolist():
            if tok < 0:
                break
            path = path + (tok,)
            counts[path] = counts.get(path, 0) + 1
    total = max(len(votes), 1)
    ranked = sorted((p for p, c in counts.items() if c / total >= min_share),
                    key=lambda p: (-counts[p], len(p), p))[: budget - 1]
    index = {(): 0}
    tokens, parents, scores = [root], [-1], [0.0]
    for p in ranked:  # parents rank before children: a parent has at least the child's votes
        index[p] = len(tokens)
        tokens.append(p[-1])
        parents.append(index[p[:-1]])
        scores.append(float(np.log(counts[p] / total)))
    return tokens, parents, scores
