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


def test_roots_shortcut_matches_the_generic_derivation():
    """`roots` sets every derived field itself (a host-time shortcut): it must equal what the
    generic builder derives for one-node chains, tensors, dtypes and host facts alike."""
    tokens = torch.tensor([3, 4, 49151])
    fast, slow = DraftTree.roots(tokens), DraftTree.chains(tokens.view(-1, 1))
    for name in ("tokens", "parents", "num_nodes", "kind", "parent_index", "num_children", "depth",
                 "ancestor_mask", "valid", "inner", "is_leaf", "earlier_siblings", "first_of_token"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for name in ("max_depth", "max_children", "children_at_depth", "has_sampled",
                 "has_no_replacement", "draft_probs", "batch_size", "max_nodes"):
        assert getattr(fast, name) == getattr(slow, name), name
    assert fast.path_to(torch.zeros(3, dtype=torch.long)).tolist() == [[0]] * 3


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


def test_host_facts_and_bounds():
    gen = torch.Generator().manual_seed(4)
    tree = random_tree(30, 20, 5, gen, kind=[0, 1])
    tree = DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=tree.kind)
    children = [[sum(1 for j in range(int(tree.num_nodes[b])) if int(tree.parents[b, j]) == i)
                 for i in range(20)] for b in range(30)]
    assert tree.max_depth == int(tree.depth.max())
    assert tree.max_children == max(max(c) for c in children)
    assert tree.num_children.tolist() == children
    assert tree.children_at_depth == [max(c[i] for b, c in enumerate(children) for i in range(20)
                                          if int(tree.depth[b, i]) == d and i < int(tree.num_nodes[b]))
                                      for d in range(tree.max_depth + 1)]
    assert not tree.has_sampled  # SAMPLED kinds but no draft_probs: nothing to sample against
    q = torch.full((30, 20, 5), 0.2)
    with_q = DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=tree.kind, draft_probs=q)
    assert with_q.has_sampled and not with_q.has_no_replacement
    # bounds: accepted when they hold, kept as the facts (a fixed result width), refused when not
    bounded = DraftTree(tree.tokens, tree.parents, tree.num_nodes, depth_bound=19, children_bound=19)
    assert (bounded.max_depth, bounded.max_children) == (19, 19)
    assert bounded.children_at_depth == (tree.children_at_depth + [0] * 20)[:20]
    assert bounded.path_to(torch.zeros(30, dtype=torch.long)).shape == (30, 20)
    with pytest.raises(ValueError, match="depth_bound = 1 is below"):
        DraftTree(tree.tokens, tree.parents, tree.num_nodes, depth_bound=1)
    # without validation: loose facts, and a bad tree still indexes in range (no crash, no read)
    loose = DraftTree(tree.tokens, tree.parents, tree.num_nodes, draft_probs=q, validate=False)
    assert (loose.max_depth, loose.max_children, loose.has_sampled) == (19, 19, True)
    assert loose.children_at_depth == [19] * 20
    assert torch.equal(loose.depth, tree.depth) and torch.equal(loose.ancestor_mask, tree.ancestor_mask)
    bad = DraftTree(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[-1, 7, 1]]), torch.tensor([3]),
                    validate=False)
    assert bad.parent_index.tolist() == [[0, 0, 1]]


def test_sibling_structure_matches_naive():
    from specdec.verifiers.structure import children_table
    gen = torch.Generator().manual_seed(6)
    tree = random_tree(25, 16, 3, gen)  # 3 tokens: many repeated siblings
    table = children_table(tree)
    assert table.shape == (25, 16, tree.max_children)
    for b in range(25):
        n = int(tree.num_nodes[b])
        toks, par = tree.tokens[b].tolist(), tree.parents[b].tolist()
        for i in range(16):
            kids = [j for j in range(1, n) if par[j] == i]
            assert [k for k in table[b, i].tolist() if k >= 0] == kids
            if 0 < i < n:
                sibs = [j for j in range(1, i) if par[j] == par[i]]
                assert tree.earlier_siblings[b, i].nonzero()[:, 0].tolist() == sibs
                assert bool(tree.first_of_token[b, i]) == all(toks[j] != toks[i] for j in sibs)
            else:
                assert not bool(tree.first_of_token[b, i]) and not bool(tree.earlier_siblings[b, i].any())
