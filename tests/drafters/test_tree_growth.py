import itertools

import torch

from specdec.drafters.tree_growth import Candidates, expand, select
from specdec.verifiers import DraftTree


def grow(b=3, v=12, top_k=3, depth=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    cands = Candidates.start(torch.arange(b))
    frontier = torch.zeros(b, 1, dtype=torch.long)
    lp = torch.randn(b, 1, v, generator=g).log_softmax(-1)
    for level in range(depth):
        cands, frontier = expand(cands, frontier, lp, top_k)
        lp = torch.randn(b, top_k, v, generator=g).log_softmax(-1)
    return cands


def test_scores_are_joint_logprobs_along_parents():
    cands = grow()
    for b in range(cands.tokens.shape[0]):
        for i in range(1, cands.count):
            p = int(cands.parents[b, i])
            assert 0 <= p < i
            assert cands.depth[b, i] == cands.depth[b, p] + 1
            assert cands.scores[b, i] <= cands.scores[b, p] + 1e-6


def test_select_keeps_best_scores_and_is_a_valid_tree():
    cands = grow()
    for budget in (1, 2, 5, 9, 13):
        tokens, parents, kept, scores = select(cands, budget)
        n = tokens.shape[1]
        DraftTree(tokens, parents, torch.full((tokens.shape[0],), n))  # validates the topology
        for b in range(tokens.shape[0]):
            k = kept[b].tolist()
            best = cands.scores[b, 1:].sort(descending=True).values[: n - 1]
            # best first: every prefix is the best subtree of its size
            assert k[0] == 0 and cands.scores[b, k[1:]].tolist() == best.tolist()
            assert scores[b].tolist() == cands.scores[b, k].tolist()
            assert tokens[b].tolist() == cands.tokens[b, k].tolist()
            for j in range(1, n):
                assert int(cands.parents[b, k[j]]) == k[int(parents[b, j])]


def test_expand_picks_global_topk_children():
    b, v, k = 1, 5, 2
    cands = Candidates.start(torch.tensor([0]))
    lp0 = torch.tensor([[[0.0, -1, -2, -3, -4]]]).log_softmax(-1)
    cands, frontier = expand(cands, torch.zeros(1, 1, dtype=torch.long), lp0, k)
    lp1 = torch.randn(b, k, v).log_softmax(-1)
    grown, _ = expand(cands, frontier, lp1, k)
    joint = [(float(cands.scores[0, 1 + f] + lp1[0, f, t]), 1 + f, t) for f, t in itertools.product(range(k), range(v))]
    best = sorted(joint, reverse=True)[:k]
    assert sorted(zip(grown.parents[0, 3:].tolist(), grown.tokens[0, 3:].tolist())) == sorted((p, t) for _, p, t in best)
