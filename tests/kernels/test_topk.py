"""kernels.wide_topk (two single-block passes) against torch.topk, its reference."""
import pytest
import torch

from specdec.kernels import wide_topk


@pytest.mark.parametrize("shape", [(3, 49152), (2, 5, 10000), (4, 4096), (7, 3000)])
@pytest.mark.parametrize("k", [1, 10, 64])
def test_matches_torch_topk(shape, k):
    """Distinct random values: the same values and indices, largest first (10000 is not a
    multiple of the chunk: the -inf padding must never be picked)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(k))
    vals, ids = wide_topk(x, k)
    ref_vals, ref_ids = x.topk(k, dim=-1)
    assert vals.shape == ids.shape == (*shape[:-1], k)
    assert torch.equal(vals, ref_vals)
    assert torch.equal(ids, ref_ids)


def test_ties_and_masked_entries():
    """With ties (bf16 log-probs repeat) and -inf entries the values still match torch.topk and
    every index points at its value."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-20, 0, (6, 20000), generator=g).float()
    x[:, ::3] = float("-inf")
    vals, ids = wide_topk(x, 16)
    assert torch.equal(vals, x.topk(16, dim=-1).values)
    assert torch.equal(x.gather(1, ids), vals)
    assert all(len(set(row)) == 16 for row in ids.tolist())


def test_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be in"):
        wide_topk(torch.zeros(2, 10), 11)
    with pytest.raises(ValueError, match="k must be in"):
        wide_topk(torch.zeros(2, 10), 0)
