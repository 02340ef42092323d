"""`drafters/rows.py`: a batch's kept rows gathered from several steps' tensors, against slicing
each piece and joining them."""
import pytest
import torch

from specdec.drafters.rows import SLICES, copy_rows, gather, merged, row_index


def reference(pieces):
    return torch.cat([t[r: r + n] for t, r, n in pieces])


@pytest.fixture
def steps():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, 3, generator=gen) for n in (6, 5, 8)]


def test_consecutive_rows_of_one_tensor_merge_into_one_piece(steps):
    a, b, _ = steps
    assert merged([(a, 0, 2), (a, 2, 1), (b, 3, 1), (a, 3, 2), (a, 4, 1)]) == [(a, 0, 3), (b, 3, 1), (a, 3, 2), (a, 4, 1)]


def test_a_whole_tensor_comes_back_as_is_and_a_run_as_a_view(steps):
    a = steps[0]
    assert gather([(a, i, 1) for i in range(6)], 3, a.dtype, "cpu") is a  # (Medusa, every sequence drafting)
    run = gather([(a, 1, 2), (a, 3, 2)], 3, a.dtype, "cpu")
    assert run._base is a and torch.equal(run, a[1:5])


@pytest.mark.parametrize("count", [2, SLICES, SLICES + 3])
def test_pieces_are_joined_in_order_by_slices_or_one_index(steps, count):
    gen = torch.Generator().manual_seed(count)
    pieces = []
    for _ in range(count):  # from any step, not consecutive with the last (so none merge)
        t = steps[int(torch.randint(3, (), generator=gen))]
        n = int(torch.randint(1, 3, (), generator=gen))
        r = int(torch.randint(0, t.shape[0] - n + 1, (), generator=gen))
        if pieces and pieces[-1][0] is t and pieces[-1][1] + pieces[-1][2] == r:
            r = 0 if r else t.shape[0] - n
        pieces.append((t, r, n))
    assert len(merged(pieces)) == count
    assert torch.equal(gather(pieces, 3, torch.float32, "cpu"), reference(pieces))


def test_no_pieces_give_an_empty_result_of_the_given_width():
    got = gather([], 7, torch.bfloat16, "cpu")
    assert got.shape == (0, 7) and got.dtype == torch.bfloat16


@pytest.mark.parametrize("rows", [[3, 4, 5], [0, 2, 3], [7]])
def test_copied_rows_are_the_rows_and_outlive_the_step_output(steps, rows):
    """One run of rows is sliced (no index to copy to the device), others indexed; either way the
    copy keeps the values when the step's output is rewritten (a graph's next replay)."""
    out = steps[2].clone()
    index = row_index(rows, "cpu")
    assert isinstance(index, slice) == (rows[-1] - rows[0] + 1 == len(rows))
    got = copy_rows(out, index)
    want = out[torch.tensor(rows)].clone()
    out.zero_()
    assert torch.equal(got, want)


def test_a_few_rows_of_many_tensors_are_sliced_not_indexed(monkeypatch, steps):
    """One sequence's features of many steps (a row of each step's tensor): joining the tensors to
    index them would copy every row of every step; the rows are sliced and joined instead."""
    import specdec.drafters.rows as rows

    many = [torch.randn(16, 3) for _ in range(12)]
    pieces = [(t, 5, 1) for t in many]
    monkeypatch.setattr(rows, "to_device", lambda *a: pytest.fail("indexed"))
    assert torch.equal(gather(pieces, 3, torch.float32, "cpu"), reference(pieces))
