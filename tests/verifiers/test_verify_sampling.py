"""Lossless sampling: the vectorised verifier reproduces a naive sequential walk exactly, given
the same uniforms, for every candidate kind, mixed kinds, mixed greedy and sampled rows, and
temperature / top-p / top-k."""
import pytest
import torch

from specdec.verifiers import CandidateKind, DraftTree, verify_tree

from verifier_naive import friendly_logits, lossless_walk, random_tree


def _tree_with_q(tree: DraftTree, vocab: int, gen, kinds) -> DraftTree:
    """Redraw the tokens of sampled nodes from q at their parent, as a drafter would."""
    batch, width = tree.tokens.shape
    q = torch.softmax(2 * torch.randn(batch, width, vocab, generator=gen), -1)
    kind = torch.tensor(kinds, dtype=torch.int8)[torch.randint(0, len(kinds), (batch, width), generator=gen)]
    tokens = tree.tokens.clone()
    for b in range(batch):
        n = int(tree.num_nodes[b])
        for node in range(n):
            kids = [i for i in range(n) if int(tree.parents[b, i]) == node]
            nr = [i for i in kids if int(kind[b, i]) == CandidateKind.SAMPLED_NO_REPLACEMENT]
            if len(nr) > vocab:
                kind[b, nr] = int(CandidateKind.SAMPLED)
                nr = []
            if nr:
                tokens[b, nr] = torch.multinomial(q[b, node], len(nr), replacement=False, generator=gen)
            for i in kids:
                if int(kind[b, i]) == CandidateKind.SAMPLED:
                    tokens[b, i] = torch.multinomial(q[b, node], 1, generator=gen)
    return DraftTree(tokens, tree.parents, tree.num_nodes, kind=kind, draft_probs=q)


CASES = [  # kinds, temperature, top_p, top_k, top_k on every row (else off on a quarter of them)
    # DETERMINISTIC: closed form over all nodes (no filters / batched top-k + top-p thresholds),
    # and the per-depth walk (rows with top-p alone need a sort)
    ([CandidateKind.DETERMINISTIC], 0.7, 1.0, 0, False),
    ([CandidateKind.DETERMINISTIC], 1.1, 0.8, 4, True),
    ([CandidateKind.DETERMINISTIC], 1.3, 0.8, 4, False),
    ([CandidateKind.SAMPLED], 1.0, 1.0, 0, False),
    ([CandidateKind.SAMPLED], 0.6, 0.9, 5, False),
    ([CandidateKind.SAMPLED_NO_REPLACEMENT], 1.0, 0.95, 0, False),
    ([0, 1, 2], 0.8, 0.9, 6, False),
    ([0, 1, 2], 0.8, 0.7, 3, True),
]


@pytest.mark.parametrize("kinds,temperature,top_p,top_k,topk_all", CASES)
def test_matches_sequential_walk(kinds, temperature, top_p, top_k, topk_all):
    gen = torch.Generator().manual_seed(int(100 * temperature) + 7 * len(kinds) + top_k)
    vocab, width, batch = 7, 14, 160
    tree = _tree_with_q(random_tree(batch, width, vocab, gen), vocab, gen, [int(k) for k in kinds])
    logits = friendly_logits(tree, vocab, gen, boost=2.5)
    # per-row parameters, a quarter of the rows greedy
    temp = torch.full((batch,), temperature)
    temp[::4] = 0.0
    tp, tk = torch.full((batch,), top_p), torch.full((batch,), top_k)
    if not topk_all:
        tk[1::4] = 0
    u = torch.rand(batch, width + 1, generator=gen)
    result = verify_tree(tree, logits, temp, tp, tk, uniforms=u)
    depths = []
    for b in range(batch):
        path, bonus = lossless_walk(tree, logits, temp, tp, tk, u, b)
        n = len(path) - 1
        assert result.accepted_nodes[b, : n + 1].tolist() == path, b
        assert int(result.num_accepted[b]) == n
        assert int(result.bonus_token[b]) == bonus, b
        depths.append(n)
    assert max(depths) >= 2 and min(depths) == 0  # the test covers rejections and deep accepts


def test_statistics_consistent_with_paths():
    gen = torch.Generator().manual_seed(5)
    tree = _tree_with_q(random_tree(200, 12, 6, gen), 6, gen, [1])
    logits = friendly_logits(tree, 6, gen)
    r = verify_tree(tree, logits, 1.0, 1.0, 0, generator=gen)
    n = r.num_accepted
    depth = torch.arange(r.depth_accepted.shape[1])
    assert torch.equal(r.depth_accepted, depth < n[:, None])
    assert bool((r.depth_attempted | ~r.depth_accepted).all())  # accepted implies attempted
    # a row stops at depth n: attempted there iff the last accepted node has children
    kids = tree.num_children.gather(1, r.last_node[:, None])[:, 0] > 0
    at_stop = r.depth_attempted.gather(1, n.clamp(max=depth.numel() - 1)[:, None])[:, 0]
    assert torch.equal(torch.where(n < depth.numel(), at_stop, False), kids & (n < depth.numel()))
    accepted, attempted = r.acceptance_per_depth()
    assert bool((accepted <= attempted).all()) and int(attempted[0]) == int((tree.num_nodes > 1).sum())


def test_uniforms_decide_and_generator_is_reproducible():
    gen = torch.Generator().manual_seed(9)
    tree = _tree_with_q(random_tree(50, 10, 5, gen), 5, gen, [1])
    logits = friendly_logits(tree, 5, gen)
    a = verify_tree(tree, logits, 1.0, generator=torch.Generator().manual_seed(3))
    b = verify_tree(tree, logits, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.accepted_nodes, b.accepted_nodes) and torch.equal(a.bonus_token, b.bonus_token)
    # a row's result depends on its own uniforms only: permuting the batch permutes the results
    u = torch.rand(50, 10, generator=gen)
    perm = torch.randperm(50, generator=gen)
    whole = verify_tree(tree, logits, 1.0, uniforms=u)
    sub = DraftTree(tree.tokens[perm], tree.parents[perm], tree.num_nodes[perm], kind=tree.kind[perm],
                    draft_probs=tree.draft_probs[perm])
    part = verify_tree(sub, logits[perm], 1.0, uniforms=u[perm])
    assert torch.equal(part.output_tokens[:, : whole.output_tokens.shape[1]], whole.output_tokens[perm])
