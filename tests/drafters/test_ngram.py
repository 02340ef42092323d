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
