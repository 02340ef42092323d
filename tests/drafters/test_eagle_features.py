"""The EAGLE drafters' pending target features (drafters/eagle/features.py): pieces of the steps'
feature tensors, gathered for a batch (`take_many`) or one sequence (`take`) against the rows the
pieces name, sliced one by one."""
from types import SimpleNamespace

import pytest
import torch

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
        store.append(seqs[seq_id].seq_id, first, (steps[step], row, n))
    return store


def expected(steps, seq_id: int, start: int, end: int):
    """Positions ``start .. end - 1`` of a sequence, from the rows its pieces name."""
    rows = torch.cat([steps[step][row: row + n] for s, _, step, row, n in PIECES if s == seq_id])
    first = min(f for s, f, *_ in PIECES if s == seq_id)
    return rows[start - first: end - first]


@pytest.mark.parametrize("which", ["index", "slices"])
def test_take_many_and_take_gather_the_rows_of_the_pieces(which):
    """Seven pieces (more than `rows.SLICES`: one index over the joined step tensors) or two
    (slices)."""
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(n, 5, generator=gen) for n in (7, 4, 9)]
    seqs = [SimpleNamespace(seq_id=i, request_id=f"r{i}") for i in range(4)]
    spans = ([(seqs[0], 10, 18), (seqs[1], 0, 3), (seqs[2], 5, 12), (seqs[3], 2, 3)] if which == "index"
             else [(seqs[1], 0, 3), (seqs[3], 2, 3)])
    reference = torch.cat([expected(steps, s.seq_id, start, end) for s, start, end in spans])
    one_by_one = filled(steps, seqs)
    assert torch.equal(torch.cat([one_by_one.take(s, start, end) for s, start, end in spans]), reference)
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
        filled(steps, seqs).append(0, 21, (steps[0], 0, 1))
