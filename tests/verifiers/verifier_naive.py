"""Naive references for the verifier tests: one Python walk per sequence, straight from the rules
in ARCHITECTURE.md "Verifiers: the rules" (no vectorisation, float64)."""
from __future__ import annotations

import torch

from specdec.verifiers import CandidateKind, DraftTree, processed_probs, sample_from_probs


def _row(tree: DraftTree, b: int):
    n = int(tree.num_nodes[b])
    return (tree.tokens[b, :n].tolist(), tree.parents[b, :n].tolist(), tree.kind[b, :n].tolist(), n)


def greedy_walk(tree: DraftTree, logits: torch.Tensor, b: int) -> tuple[list[int], int]:
    """Accepted path (root first) and bonus token of row b at temperature 0."""
    toks, pars, _, n = _row(tree, b)
    node, path = 0, [0]
    while True:
        target = int(logits[b, node].argmax())
        kids = [i for i in range(n) if pars[i] == node and toks[i] == target]
        if not kids:
            return path, target
        node = kids[0]
        path.append(node)


def lossless_walk(tree: DraftTree, logits, temperature, top_p, top_k, uniforms, b: int):
    """Sequential recursive rejection sampling for row b."""
    toks, pars, kinds, n = _row(tree, b)
    greedy = float(temperature[b]) == 0
    node, path = 0, [0]
    while True:
        p = processed_probs(logits[b, node][None], temperature[b:b + 1], top_p[b:b + 1],
                            top_k[b:b + 1])[0].double()
        q = None if tree.draft_probs is None else tree.draft_probs[b, node].double()
        q_left = None if q is None else q.clone()
        accepted = None
        for i in (i for i in range(n) if pars[i] == node):
            c = toks[i]
            kind = CandidateKind.DETERMINISTIC if greedy else CandidateKind(kinds[i])
            if kind == CandidateKind.DETERMINISTIC:
                law = torch.zeros_like(p)
                law[c] = 1.0
            elif kind == CandidateKind.SAMPLED:
                law = q
            else:
                law = q_left / q_left.sum()
            if float(uniforms[b, i]) < float(p[c] / law[c]):
                accepted = i
                break
            res = (p - law).clamp(min=0)
            p = res / res.sum() if float(res.sum()) > 0 else p
            if kind == CandidateKind.SAMPLED_NO_REPLACEMENT:
                q_left[c] = 0.0
        if accepted is None:
            return path, int(sample_from_probs(p[None], uniforms[b, :1])[0])
        node = accepted
        path.append(node)


def random_tree(batch: int, width: int, vocab: int, gen: torch.Generator, kind=None,
                min_nodes: int = 1) -> DraftTree:
    """Random topologically ordered trees of 1..width nodes (small vocab: repeated sibling tokens)."""
    tokens = torch.randint(0, vocab, (batch, width), generator=gen)
    parents = torch.full((batch, width), -1, dtype=torch.long)
    num = torch.randint(min_nodes, width + 1, (batch,), generator=gen)
    for i in range(1, width):
        parents[:, i] = torch.randint(0, i, (batch,), generator=gen)
        # bias towards deep trees: half the nodes hang off the previous node
        parents[:, i] = torch.where(torch.rand(batch, generator=gen) < 0.5, i - 1, parents[:, i])
    parents[torch.arange(width) >= num[:, None]] = -1
    kinds = None
    if kind is not None:
        kinds = torch.full((batch, width), int(kind), dtype=torch.int8) if not isinstance(kind, list) \
            else torch.tensor(kind, dtype=torch.int8)[torch.randint(0, len(kind), (batch, width), generator=gen)]
    return DraftTree(tokens, parents, num, kind=kinds)


def friendly_logits(tree: DraftTree, vocab: int, gen: torch.Generator, boost: float = 4.0,
                    luck: float = 0.7) -> torch.Tensor:
    """Random logits [B, T, V] where, with probability ``luck``, a node's argmax is one of its
    children's tokens, so that verification accepts paths of several tokens."""
    batch, width = tree.tokens.shape
    logits = torch.randn(batch, width, vocab, generator=gen)
    for b in range(batch):
        toks, pars, _, n = _row(tree, b)
        for node in range(n):
            kids = [i for i in range(n) if pars[i] == node]
            if kids and float(torch.rand(1, generator=gen)) < luck:
                pick = kids[int(torch.randint(0, len(kids), (1,), generator=gen))]
                logits[b, node, toks[pick]] += boost
    return logits
