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
    tokens, parents = trie(9, [arr(1, 2, 3), arr(1, 2, 4), arr(5)], max_nodes=10)
    assert tokens == [9, 1, 2, 3, 4, 5]
    assert parents == [-1, 0, 1, 2, 2, 0]
    tokens, parents = trie(9, [arr(1, 2, 3), arr(5, 6)], max_nodes=4)
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
    continuations in its order, and the same trie; the batched trie lists its nodes best first
    (most continuations through them), so every prefix is a subtree."""
    import torch

    from specdec.drafters import lookup

    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 5, size=int(rng.integers(2, 60))) for _ in range(4)]
    width, k, m = 64, 4, 5
    ctx = torch.full((len(seqs), width), -1, dtype=torch.long)
    for b, s in enumerate(seqs):
        ctx[b, width - len(s):] = torch.from_numpy(s)
    conts, found = lookup.continuations(ctx, 1, 3, k, m)
    tokens, parents, num, scores = lookup.trie(ctx[:, -1], conts, 64)
    for b, s in enumerate(seqs):
        ref = continuations(s, 1, 3, k, m)
        got = [[t for t in c if t >= 0] for c, f in zip(conts[b].tolist(), found[b].tolist()) if f]
        assert got == [c.tolist() for c in ref]
        ref_tok, ref_par = trie(int(s[-1]), ref, 64)
        n = int(num[b])
        tok, par, sc = tokens[b, :n].tolist(), parents[b, :n].tolist(), scores[b, :n].tolist()
        assert sorted(paths(tok, par, n)) == sorted(paths(ref_tok, ref_par, len(ref_tok)))
        assert all(0 <= p < i for i, p in enumerate(par) if i) and sc == sorted(sc, reverse=True)


def test_the_trie_keeps_the_nodes_most_continuations_share():
    """Cut to 4 nodes, the trie keeps the shared prefix (3 continuations through it) before a
    lone branch."""
    import torch

    from specdec.drafters import lookup

    conts = torch.tensor([[[1, 2, 3], [7, -1, -1], [1, 2, 4], [1, 5, -1]]])
    tokens, parents, num, scores = lookup.trie(torch.tensor([9]), conts, 4)
    assert tokens[0].tolist() == [9, 1, 2, 3] and parents[0].tolist() == [-1, 0, 1, 2]
    assert num.tolist() == [4] and torch.allclose(scores[0, 1:].exp(), torch.tensor([0.75, 0.5, 0.25]))
