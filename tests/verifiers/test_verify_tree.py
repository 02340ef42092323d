"""DraftTree: builders, derived masks and depths, paths, static "choices" trees, bad input."""
import pytest
import torch

from specdec.verifiers import MAX_NODES, DraftTree, TreeChoices

from verifier_naive import random_tree


def _ancestors(parents: list[int], i: int) -> list[int]:
    out = [i]
    while parents[out[-1]] >= 0:
        out.append(parents[out[-1]])
    return out[::-1]


def test_masks_depths_paths_match_parent_walks():
    gen = torch.Generator().manual_seed(0)
    tree = random_tree(40, MAX_NODES, 9, gen)
    paths, valid = tree.leaf_paths()
    for b in range(40):
        n = int(tree.num_nodes[b])
        par = tree.parents[b, :n].tolist()
        leaves = [i for i in range(n) if i not in par]
        for i in range(n):
            anc = _ancestors(par, i)
            assert int(tree.depth[b, i]) == len(anc) - 1
            assert int(tree.ancestor_mask[b, i]) == sum(1 << j for j in anc) - (1 << 64 if 63 in anc else 0)
        assert bool((tree.ancestor_mask[b, n:] == 0).all())
        got = [[x for x in row if x >= 0] for row, ok in zip(paths[b].tolist(), valid[b].tolist()) if ok]
        assert got == [_ancestors(par, leaf) for leaf in leaves]
        assert tree.is_leaf[b].nonzero()[:, 0].tolist() == leaves
    nodes = tree.num_nodes - 1  # the last node of each row
    got = tree.path_to(nodes)
    for b in range(40):
        want = _ancestors(tree.parents[b].tolist(), int(nodes[b]))
        assert got[b].tolist() == want + [-1] * (tree.max_depth + 1 - len(want))
    assert torch.equal(tree.positions(torch.full((40,), 10)), 9 + tree.depth)


def test_chains_and_roots():
    tree = DraftTree.chains(torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]]), torch.tensor([4, 2]))
    assert tree.parents.tolist() == [[-1, 0, 1, 2], [-1, 0, -1, -1]]
    assert tree.depth.tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    assert tree.ancestor_mask.tolist() == [[1, 3, 7, 15], [1, 3, 0, 0]]
    roots = DraftTree.roots(torch.tensor([3, 4]))
    assert roots.max_nodes == 1 and roots.max_depth == 0


def test_from_choices_follows_medusa_order():
    # Medusa sorts choices by (length, path); node i's parent is the node of path[:-1]
    choices = [[1], [0, 0], [0], [0, 1], [1, 0], [0, 0, 0], [2]]
    tc = TreeChoices(choices)
    assert tc.paths == [(), (0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
    assert tc.parents == [-1, 0, 0, 0, 1, 1, 2, 4]
    assert tc.ranks == [-1, 0, 1, 2, 0, 1, 0, 0]
    assert tc.depths == [0, 1, 1, 1, 2, 2, 2, 3] and tc.max_depth == 3
    tree = DraftTree.from_choices(tc, torch.arange(16).view(2, 8))
    # the tree attention mask (Medusa's medusa_attn_mask): node (0, 0, 0) sees root, (0), (0, 0)
    assert int(tree.ancestor_mask[0, 7]) == (1 << 0) | (1 << 1) | (1 << 4) | (1 << 7)
    assert tree.kind.tolist() == [[0] * 8] * 2
    with pytest.raises(ValueError, match="prefix-closed"):
        TreeChoices([[0, 1]])
    with pytest.raises(ValueError, match="duplicate"):
        TreeChoices([[0], [0]])
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        DraftTree.from_choices(tc, torch.zeros(2, 5, dtype=torch.long))


def test_bad_trees_raise_clear_errors():
    with pytest.raises(ValueError, match="at most 64 nodes"):
        DraftTree.chains(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="topologically ordered"):
        DraftTree.from_lists([[1, 2, 3]], [[-1, 2, 0]])
    with pytest.raises(ValueError, match="root"):
        DraftTree.from_lists([[1, 2]], [[0, 0]])
    with pytest.raises(ValueError, match="num_nodes"):
        DraftTree(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[-1, 0, 1]]), torch.tensor([4]))
    with pytest.raises(ValueError, match="kind must be"):
        DraftTree.from_lists([[1, 2]], [[-1, 0]], kind=torch.zeros(1, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match="draft_probs must be"):
        DraftTree.from_lists([[1, 2]], [[-1, 0]], draft_probs=torch.zeros(1, 2))
