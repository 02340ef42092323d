"""ragged.packed_runs / table_array (the vectorised staging of graphed steps and drafters) give
the slots that `ragged.slots` gives position by position."""
import numpy as np

from specdec.engine import ragged


def test_packed_runs_match_slots_per_position():
    tables = [[7, 2, 9], [4, 6], [1, 3, 5, 8]]
    starts, ends = np.array([2, 0, 5]), np.array([9, 3, 13])  # block size 4: runs cross blocks
    padded = ragged.table_array(tables, 5, 4)  # two padding sequences
    assert padded.tolist() == [[7, 2, 9, 0], [4, 6, 0, 0], [1, 3, 5, 8], [0] * 4, [0] * 4]
    total = int((ends - starts).sum()) + 6  # six padding rows
    indptr, pos, slots, rows = ragged.packed_runs(starts, ends, padded, 4, total, scratch=3)
    assert indptr.tolist() == [0, 7, 10, 18, 18, 18]
    want_pos = [p for s, e in zip(starts, ends) for p in range(s, e)]
    assert pos.tolist() == want_pos + [0] * 6
    want = [x for t, s, e in zip(tables, starts, ends) for x in ragged.slots(t, s, e - s, 4)]
    assert slots.tolist() == want + [-1] * 6
    assert rows.tolist() == [ragged.slots(t, e, 3, 4) for t, e in zip(tables, ends)]


def test_packed_runs_of_no_sequences():
    indptr, pos, slots, rows = ragged.packed_runs(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                                  ragged.table_array([], 2, 3), 4, 4, scratch=2)
    assert indptr.tolist() == [0, 0, 0] and pos.tolist() == [0] * 4 and slots.tolist() == [-1] * 4
    assert rows.shape == (0, 2)
