"""Exact-match verification (engine.exact): lossless by check_lossless for every candidate kind,
and draw for draw what autoregressive sampling emits with the same per-position uniforms."""
import pytest
import torch

from specdec.verifiers import (CandidateKind, DraftTree, LosslessVerifier, MatchVerifier,
                               TypicalVerifier, check_lossless, exact_verifier, processed_probs,
                               sample_from_probs)

PARAMS = dict(temperature=0.9, top_p=0.95, top_k=7, num_draws=100_000)


@pytest.mark.parametrize("shape", ["chain5", "top3_depth3"])
@pytest.mark.parametrize("kind", list(CandidateKind), ids=lambda k: k.name)
def test_match_rule_passes_check_lossless(kind, shape):
    report = check_lossless(MatchVerifier().verify, shape=shape, kind=kind, seed=4, **PARAMS)
    assert report.passed, str(report)
    assert report.mean_accepted > 1.0


@pytest.mark.parametrize("wrong_at", [1, 3, None])
def test_emitted_tokens_are_the_autoregressive_draws(wrong_at):
    """A chain whose tokens are the target's own draws is accepted up to the first one that is
    not; every emitted token, the bonus included, is the draw AR would make at its position."""
    torch.manual_seed(0)
    t, v = 5, 40
    logits = torch.randn(1, t, v) * 3
    uniforms = torch.rand(1, t + 1)
    params = dict(temperature=0.8, top_p=0.9, top_k=0)
    probs = processed_probs(logits[0], **params)  # [T, V]: node i's row predicts position i + 1
    draws = sample_from_probs(probs, uniforms[0, :t])  # the AR draw after depth d = node d
    tokens = torch.cat([torch.tensor([7]), draws[:-1]])  # node i + 1 carries the draw after node i
    if wrong_at is not None:
        tokens[wrong_at] = (draws[wrong_at - 1] + 1) % v
    tree = DraftTree.chains(tokens[None])
    out = MatchVerifier().verify(tree, logits, params["temperature"], params["top_p"],
                                 params["top_k"], uniforms)
    n = (t - 1) if wrong_at is None else wrong_at - 1  # accepted draft tokens
    assert int(out.num_accepted[0]) == n
    emitted = [x for x in out.output_tokens[0].tolist() if x >= 0]
    assert emitted == draws[: n + 1].tolist()


def test_greedy_rows_take_the_argmax_walk():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 30)
    tree = DraftTree.chains(torch.randint(30, (2, 4)))
    ours = MatchVerifier().verify(tree, logits, 0.0, 1.0, 0, torch.rand(2, 5))
    ref = LosslessVerifier().verify(tree, logits, 0.0, 1.0, 0, torch.rand(2, 5))
    assert torch.equal(ours.output_tokens, ref.output_tokens)


def test_exact_mode_refuses_a_lossy_verifier():
    with pytest.raises(ValueError, match="needs a lossless verifier"):
        exact_verifier(TypicalVerifier())
    assert isinstance(exact_verifier(LosslessVerifier()), MatchVerifier)
