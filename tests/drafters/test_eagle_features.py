"""The EAGLE drafters' pending target features (drafters/eagle/features.py): pieces of the steps'
feature tensors, gathered for a batch in one index (`take_many`) against the per-sequence
reference (`take`, slices joined)."""
from types import SimpleNamespace

import pytest
import torch

from specdec.drafters.eagle.features import FeatureStore


def filled(steps, seqs) -> FeatureStore:
    """Sequences with one to three pieces of three steps' tensors; some rows shared, some pending
    past what is taken."""
    store = FeatureStore("test")
    for seq_id, first, piece in [(0, 10, (steps[0], 0, 3)), (0, 13, (steps[1], 0, 2)), (0, 15, (steps[2], 0, 4)),
                                 (1, 0, (steps[0], 3, 4)),
                                 (2, 5, (steps[1], 2, 2)), (2, 7, (steps[2], 4, 5)),
                                 (3, 2, (steps[2], 4, 1))]:
        store.append(seqs[seq_id].seq_id, first, piece)
    return store


@pytest.mark.parametrize("which", ["index", "slices"])
def test_take_many_gathers_what_take_gives_one_sequence_at_a_time(which):
    """Seven pieces (more than `SLICES`: one index over the joined step tensors) or two (slices)."""
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(n, 5, generator=gen) for n in (7, 4, 9)]
    seqs = [SimpleNamespace(seq_id=i, request_id=f"r{i}") for i in range(4)]
    spans = ([(seqs[0], 10, 18), (seqs[1], 0, 3), (seqs[2], 5, 12), (seqs[3], 2, 3)] if which == "index"
             else [(seqs[1], 0, 3), (seqs[3], 2, 3)])
    one_by_one = filled(steps, seqs)
    reference = torch.cat([one_by_one.take(s, start, end) for s, start, end in spans])
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
