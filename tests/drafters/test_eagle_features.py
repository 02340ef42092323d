"""The EAGLE drafters' pending target features (drafters/eagle/features.py): pieces of the steps'
feature tensors, gathered for a batch or one sequence (`take_many`) against the rows the pieces
name, sliced one by one."""
from types import SimpleNamespace

import pytest
import torch

from specdec.drafters import rows
from specdec.drafters.eagle.features import FeatureStore


PIECES = [(0, 10, 0, 0, 3), (0, 13, 1, 0, 2), (0, 15, 2, 0, 4),  # (seq, first position, step, row, rows)
          (1, 0, 0, 3, 4),
          (2, 5, 1, 2, 2), (2, 7, 2, 4, 5),
          (3, 2, 2, 4, 1)]


def filled(steps, seqs) -> FeatureStore:
    """Sequences with one to three pieces of three steps' tensors; some rows shared, some pending
    past what is taken."""
    store = FeatureStore("test")
    for seq_id, first, step, row, n in PIECES:
        store.keep([(seqs[seq_id], first, n)], steps[step][row:])  # a piece: (that view, 0, n)
    return store


def expected(steps, seq_id: int, start: int, end: int):
    """Positions ``start .. end - 1`` of a sequence, from the rows its pieces name."""
    rows = torch.cat([steps[step][row: row + n] for s, _, step, row, n in PIECES if s == seq_id])
    first = min(f for s, f, *_ in PIECES if s == seq_id)
    return rows[start - first: end - first]


@pytest.mark.parametrize("which", ["index", "slices"])
def test_take_many_gathers_the_rows_of_the_pieces(which):
    """Seven pieces (more than `rows.SLICES`: one index over the joined step tensors) or two
    (slices)."""
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(n, 5, generator=gen) for n in (7, 4, 9)]
    seqs = [SimpleNamespace(seq_id=i, request_id=f"r{i}") for i in range(4)]
    spans = ([(seqs[0], 10, 18), (seqs[1], 0, 3), (seqs[2], 5, 12), (seqs[3], 2, 3)] if which == "index"
             else [(seqs[1], 0, 3), (seqs[3], 2, 3)])
    reference = torch.cat([expected(steps, s.seq_id, start, end) for s, start, end in spans])
    one_by_one = filled(steps, seqs)
    one_at_a_time = [one_by_one.take_many([(s, start, end)], 5, torch.float32, "cpu") for s, start, end in spans]
    assert torch.equal(torch.cat(one_at_a_time), reference)
    batch = filled(steps, seqs)
    got = batch.take_many(spans, 5, torch.float32, "cpu")
    assert got.shape == (sum(e - s for _, s, e in spans), 5) and torch.equal(got, reference)
    assert not any(s.seq_id in batch.pending for s, _, _ in spans)  # taken: no longer pending
    assert FeatureStore("test").take_many([], 5, torch.float32, "cpu").shape == (0, 5)


def test_features_that_are_not_pending_are_an_error():
    steps = [torch.zeros(7, 5), torch.zeros(4, 5), torch.zeros(9, 5)]
    seqs = [SimpleNamespace(seq_id=i, request_id=f"r{i}") for i in range(4)]
    with pytest.raises(AssertionError, match="needs target features for positions 11..17"):
        filled(steps, seqs).take_many([(seqs[0], 11, 18)], 5, torch.float32, "cpu")
    with pytest.raises(AssertionError, match="arrive at position 21, expected 19"):
        filled(steps, seqs).keep([(seqs[0], 21, 1)], steps[0])


def test_long_runs_are_taken_in_one_gather_and_counted_as_cached(monkeypatch):
    """`take_long`: each sequence with more pairs to catch up than a graph's width gets all but
    its last pair (the features of many plain steps: one row of each step's tensor), the last
    stays pending; the others are untouched."""
    gen = torch.Generator().manual_seed(1)
    steps = [torch.randn(3, 4, generator=gen) for _ in range(10)]

    class Seq(SimpleNamespace):
        def __len__(self):
            return len(self.tokens)

    seqs = [Seq(seq_id=i, request_id=f"r{i}", tokens=list(range(100 + i, 111 + i)), aux_tables={"eagle": [i]})
            for i in range(3)]
    store = FeatureStore("test")
    for k, t in enumerate(steps):  # positions 0..9 of every sequence, step k's row b
        store.keep([(s, k, 1) for s in seqs], t)
    store.cached[seqs[2].seq_id] = 6  # 4 pairs left: within the width
    import specdec.drafters.eagle.features as features

    calls = []
    monkeypatch.setattr(features, "gather", lambda *a: calls.append(1) or rows.gather(*a))
    runs = store.take_long(seqs, 5)
    assert len(calls) == 1  # both sequences' runs in one gather
    monkeypatch.undo()
    assert [r[1] for r in runs] == [0, 0] and [r[0] for r in runs] == [[0], [1]]
    for b, (_, _, ids, feats) in enumerate(runs):
        assert ids == seqs[b].tokens[1:10] and torch.equal(feats, torch.stack([t[b] for t in steps[:9]]))
        assert store.start(seqs[b]) == 9 and torch.equal(store.take_many([(seqs[b], 9, 10)], 4, torch.float32, "cpu"), steps[9][b: b + 1])
    assert store.start(seqs[2]) == 6 and store.pending[seqs[2].seq_id][1] == 10
