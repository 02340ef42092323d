import numpy as np
import pytest

from specdec.drafters.ngram import continuations, match_starts, trie


def arr(*xs):
    return np.array(xs, dtype=np.int64)


def naive_starts(ctx, n):
    suffix = list(ctx[-n:])
    return [i for i in range(len(ctx) - n - 1, -1, -1) if list(ctx[i:i + n]) == suffix]


@pytest.mark.parametrize("seed", range(20))
def test_match_starts_equals_naive_scan(seed):
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, 4, size=int(rng.integers(2, 40)))
    for n in (1, 2, 3):
        assert match_starts(ctx, n).tolist() == naive_starts(ctx, n)


def test_longest_match_first_then_recency():
    #            0  1  2  3  4  5  6  7  8  9 10
    ctx = arr(5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2)
    conts = continuations(ctx, n_min=1, n_max=3, k=2, max_matches=3)
    # suffix (1, 2) matches at 5 and 1 (most recent first), then suffix (2,) adds nothing new
    # beyond those starts, so the 1-gram matches of 2 follow: at 6 and 2
    assert [c.tolist() for c in conts] == [[4, 7], [3, 9], [4, 7]]


def test_no_match_gives_nothing():
    assert continuations(arr(1, 2, 3, 4), 1, 3, 5, 2) == []


def test_trie_merges_shared_prefixes_and_respects_budget():
    tokens, parents, scores = trie(9, [arr(1, 2, 3), arr(1, 2, 4), arr(5)], max_nodes=10, k=3)
    assert tokens == [9, 1, 2, 3, 4, 5]
    assert parents == [-1, 0, 1, 2, 2, 0]
    assert np.allclose(np.exp(scores), [1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])
    tokens, parents, _ = trie(9, [arr(1, 2, 3), arr(5, 6)], max_nodes=4, k=3)
    assert tokens == [9, 1, 2, 3] and parents == [-1, 0, 1, 2]


def paths(tokens, parents, num):
    """The root paths of a tree's nodes, as tuples of tokens (a trie is its set of paths)."""
    out = []
    for i in range(num):
        path, n = [], i
        while n >= 0:
            path.append(tokens[n])
            n = parents[n]
        out.append(tuple(reversed(path)))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_batched_lookup_equals_the_per_sequence_reference(seed):
    """lookup.continuations / lookup.trie (the whole batch in tensor ops) find the reference's
    continuations in its order, and the same trie, node for node: best first (most
    continuations through a node), so every prefix is a subtree."""
    import torch

    from specdec.drafters import lookup

    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 5, size=int(rng.integers(2, 60))) for _ in range(4)]
    width, k, m = 64, 4, 5
    ctx = torch.full((len(seqs), width), -1, dtype=torch.long)
    for b, s in enumerate(seqs):
        ctx[b, width - len(s):] = torch.from_numpy(s)
    conts, found = lookup.continuations(ctx, 1, 3, k, m)
    for max_nodes in (64, 6):
        tokens, parents, num, scores = lookup.trie(ctx[:, -1], conts, max_nodes)
        for b, s in enumerate(seqs):
            ref = continuations(s, 1, 3, k, m)
            got = [[t for t in c if t >= 0] for c, f in zip(conts[b].tolist(), found[b].tolist()) if f]
            assert got == [c.tolist() for c in ref]
            ref_tok, ref_par, ref_score = trie(int(s[-1]), ref, max_nodes, k)
            n = int(num[b])
            assert (tokens[b, :n].tolist(), parents[b, :n].tolist()) == (ref_tok, ref_par)
            assert np.allclose(scores[b, :n].numpy(), ref_score)
            assert all(0 <= p < i for i, p in enumerate(ref_par) if i) and ref_score == sorted(ref_score, reverse=True)


@pytest.mark.parametrize("max_matches", [1, 4])
def test_host_and_batched_proposals_are_the_same_trees(max_matches, monkeypatch):
    """A few sequences are matched on the host (numpy, one at a time), a batch with the tensor
    lookup: the same trees, cut to the same budgets."""
    import types

    import torch

    from specdec.drafters import lookup, ngram

    rng = np.random.default_rng(0)
    seqs = [types.SimpleNamespace(tokens=rng.integers(0, 6, size=int(rng.integers(3, 300))).tolist(),
                                  seq_id=i) for i in range(4)]
    budgets = [32, 5, 1, 17]
    drafter = ngram.NgramDrafter(num_tokens=8, max_matches=max_matches, max_nodes=32 if max_matches > 1 else None,
                                 window=128)
    drafter.windows = lookup.TokenWindows(drafter.window, "cpu")
    host = drafter.propose(seqs, budgets)
    monkeypatch.setattr(ngram, "HOST_BATCH", 0)
    batched = drafter.propose(seqs, budgets)
    assert host.num_nodes.tolist() == batched.num_nodes.tolist()
    assert host.num_nodes.tolist()[2] == 1 and host.max_nodes == max(host.num_nodes.tolist())  # no padding column
    for b, n in enumerate(host.num_nodes.tolist()):
        for name in ("tokens", "parents"):
            assert getattr(host, name)[b, :n].tolist() == getattr(batched, name)[b, :n].tolist()
        assert torch.allclose(host.scores[b, :n], batched.scores[b, :n])


def test_the_trie_keeps_the_nodes_most_continuations_share():
    """Cut to 4 nodes, the trie keeps the shared prefix (3 continuations through it) before a
    lone branch."""
    import torch

    from specdec.drafters import lookup

    conts = torch.tensor([[[1, 2, 3], [7, -1, -1], [1, 2, 4], [1, 5, -1]]])
    tokens, parents, num, scores = lookup.trie(torch.tensor([9]), conts, 4)
    assert tokens[0].tolist() == [9, 1, 2, 3] and parents[0].tolist() == [-1, 0, 1, 2]
    assert num.tolist() == [4] and torch.allclose(scores[0, 1:].exp(), torch.tensor([0.75, 0.5, 0.25]))
