"""processed_probs follows HF transformers' warpers (temperature -> top-k -> top-p) row by row;
sample_from_probs is an exact inverse CDF."""
import pytest
import torch
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from specdec.verifiers import processed_probs, sample, sample_from_probs


def _hf(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    scores = logits[None].clone()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).float()
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, -1)[0]


@pytest.mark.parametrize("vocab", [5, 50, 1000])
def test_matches_hf_warpers_per_row(vocab):
    gen = torch.Generator().manual_seed(vocab)
    rows = 64
    logits = torch.randn(rows, vocab, generator=gen) * 3
    temp = torch.rand(rows, generator=gen) * 1.5 + 0.1
    temp[::7] = 0.0
    top_p = torch.where(torch.rand(rows, generator=gen) < 0.7, torch.rand(rows, generator=gen) * 0.9 + 0.05, 1.0)
    top_k = torch.where(torch.rand(rows, generator=gen) < 0.5, torch.randint(1, vocab + 3, (rows,), generator=gen), 0)
    ours = processed_probs(logits, temp, top_p, top_k)
    for r in range(rows):
        ref = _hf(logits[r], float(temp[r]), float(top_p[r]), int(top_k[r]))
        assert torch.equal(ours[r] > 0, ref > 0), r
        torch.testing.assert_close(ours[r], ref, atol=1e-6, rtol=1e-5)


def test_top_k_only_path_matches_sort_path():
    """When every filtering row has top-k, thresholds come from topk(max k) instead of a sort."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 300, generator=gen)
    top_k = torch.tensor([1, 2, 5, 10, 40, 3, 7, 9])
    top_p = torch.tensor([1.0, 0.5, 0.9, 0.3, 0.99, 1.0, 0.7, 0.8])
    fast = processed_probs(logits, 0.9, top_p, top_k)
    # one extra row with top-p but no top-k forces the full sort for the whole batch
    slow = processed_probs(torch.cat([logits, logits[:1]]), 0.9, torch.cat([top_p, torch.tensor([0.5])]),
                           torch.cat([top_k, torch.tensor([0])]))[:8]
    torch.testing.assert_close(fast, slow)


def test_ties_at_boundaries_keep_whole_classes():
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])
    # top-k = 2: the k-th value (1.0) is tied three ways: HF keeps all of them, so do we
    assert (processed_probs(logits, 1.0, 1.0, 2) > 0).tolist() == [[True, True, True, True, False]]
    # top-p: the mass above a tied token decides for the whole class
    probs = torch.softmax(logits, -1)[0]
    p_cut = float(probs[0]) + 1e-4  # first token alone does not reach it
    assert (processed_probs(logits, 1.0, p_cut, 0) > 0).tolist() == [[True, True, True, True, False]]
    assert (processed_probs(logits, 1.0, float(probs[0]) - 1e-4, 0) > 0).tolist() == [[True, False, False, False, False]]


def test_shared_params_over_tree_nodes():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 20, generator=gen)
    temp = torch.tensor([0.0, 0.5, 1.0])
    out = processed_probs(logits, temp, torch.tensor([1.0, 0.8, 0.6]), torch.tensor([0, 3, 0]))
    for b in range(3):
        torch.testing.assert_close(out[b], processed_probs(logits[b], float(temp[b]), [1.0, 0.8, 0.6][b], [0, 3, 0][b]))
    assert torch.equal(out[0].argmax(-1), logits[0].argmax(-1)) and bool((out[0].max(-1).values == 1).all())


def test_inverse_cdf_is_exact_on_a_grid():
    probs = torch.tensor([0.1, 0.0, 0.3, 0.6, 0.0])
    n = 10_000
    u = (torch.arange(n) + 0.5) / n
    tokens = sample_from_probs(probs.expand(n, -1), u)
    counts = torch.bincount(tokens, minlength=5)
    assert (counts - probs * n).abs().max() <= 1
    # unnormalised rows, and u at the top of [0, 1) never land on a zero-mass tail
    top = torch.tensor([1 - 2 ** -24])
    assert int(sample_from_probs(torch.tensor([[0.5, 0.7, 0.0, 0.0]]), top)[0]) == 1
    assert int(sample_from_probs(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([0.0]))[0]) == 2


def test_sample_uses_processed_distribution():
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0]] * 4)
    u = torch.tensor([0.0, 0.3, 0.6, 0.999])
    assert sample(logits, 1.0, 1.0, 1, u).tolist() == [1, 1, 1, 1]  # top-k 1: always token 1
    assert sample(logits, 0.0, 1.0, 0, u).tolist() == [1, 1, 1, 1]  # greedy


def test_bad_parameters_raise():
    logits = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="temperature"):
        processed_probs(logits, -1.0)
    with pytest.raises(ValueError, match="top_p"):
        processed_probs(logits, 1.0, 0.0)
    with pytest.raises(ValueError, match="top_k"):
        processed_probs(logits, 1.0, 1.0, -2)
    with pytest.raises(ValueError, match="one value per row"):
        processed_probs(logits, torch.ones(3))
