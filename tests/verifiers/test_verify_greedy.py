"""Greedy verification equals a naive argmax walk, on random trees, through both code paths
(the loop-free greedy path, and greedy rows inside the sampling path)."""
import torch

from specdec.verifiers import DraftTree, verify_tree
from specdec.verifiers.greedy import verify_greedy

from verifier_naive import friendly_logits, greedy_walk, random_tree


def _check_against_walk(tree, logits, result, rows):
    for b in rows:
        path, bonus = greedy_walk(tree, logits, b)
        n = len(path) - 1
        assert result.accepted_nodes[b, : n + 1].tolist() == path, b
        assert bool((result.accepted_nodes[b, n + 1:] == -1).all())
        assert int(result.num_accepted[b]) == n
        assert int(result.bonus_token[b]) == bonus
        toks = [int(tree.tokens[b, i]) for i in path[1:]]
        assert result.output_tokens[b, : n + 1].tolist() == toks + [bonus]


def test_greedy_matches_naive_walk_on_random_trees():
    gen = torch.Generator().manual_seed(0)
    for width, vocab in [(1, 5), (2, 3), (7, 4), (16, 6), (40, 8), (64, 50)]:
        tree = random_tree(64, width, vocab, gen)
        logits = friendly_logits(tree, vocab, gen)
        result = verify_greedy(tree, logits)
        _check_against_walk(tree, logits, result, range(64))
        assert int(result.num_accepted.max()) >= min(2, tree.max_depth), "test lacks deep accepts"


def test_greedy_rows_in_sampling_path_match_walk():
    """Rows at temperature 0 mixed with sampled rows go through the rejection-sampling path with
    p = point mass at the argmax: they must still be exactly greedy, whatever their kind."""
    gen = torch.Generator().manual_seed(1)
    tree = random_tree(96, 20, 6, gen, kind=[0, 1, 2])
    tree.kind[tree.kind == 2] = 1  # repeated siblings are legal for SAMPLED only
    q = torch.softmax(torch.randn(96, 20, 6, generator=gen), -1)
    tree = DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=tree.kind, draft_probs=q)
    logits = friendly_logits(tree, 6, gen)
    temp = torch.where(torch.arange(96) % 2 == 0, 0.0, 0.7)
    result = verify_tree(tree, logits, temp, 1.0, 0, uniforms=torch.rand(96, 20, generator=gen))
    _check_against_walk(tree, logits, result, range(0, 96, 2))


def test_greedy_statistics_and_duplicates():
    # root 7 -> children [3, 3, 5]; argmax at root is 3: the FIRST 3 (node 1) is accepted
    tree = DraftTree.from_lists([[7, 3, 3, 5, 9]], [[-1, 0, 0, 0, 2]])
    logits = torch.zeros(1, 5, 10)
    logits[0, 0, 3] = 1
    logits[0, 1, 4] = 1  # node 1 (a leaf) -> bonus 4
    logits[0, 2, 9] = 1  # node 2 would have continued with 9, but is not the first match
    r = verify_tree(tree, logits)
    assert r.accepted_nodes.tolist() == [[0, 1, -1]]
    assert r.bonus_token.tolist() == [4]
    assert r.depth_attempted.tolist() == [[True, False]]  # node 1 has no children
    assert r.depth_accepted.tolist() == [[True, False]]
    assert r.output_tokens.tolist() == [[3, 4, -1]]
    assert r.accepted_tokens.tolist() == [[3, -1]]
    assert int(r.last_node[0]) == 1
