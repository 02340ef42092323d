"""check_lossless: our rules pass for every candidate kind x tree shape with temperature, top-p
and top-k on (>= 100k draws, p > 0.001, fixed seeds); deliberately broken verifiers and the
lossy typical rule fail — the checker has power."""
import pytest
import torch
from scipy import stats

from specdec.verifiers import (CandidateKind, DraftTree, TypicalVerifier, check_lossless,
                               chi_square_pvalue, processed_probs, sample_from_probs, verify_tree)

SHAPES = ["chain4", "top3_depth3", "dup_siblings"]
PARAMS = dict(temperature=0.9, top_p=0.95, top_k=7, num_draws=100_000)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", list(CandidateKind), ids=lambda k: k.name)
def test_lossless_rule_passes(kind, shape):
    report = check_lossless(verify_tree, shape=shape, kind=kind, seed=1, **PARAMS)
    assert report.passed, str(report)
    assert report.mean_accepted > 0.4, "too few accepted drafts for the check to mean much"
    assert report.dof_first >= 3 and bool((report.expected_first == 0).any()), "filters must bite"


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_rule_passes(shape):
    report = check_lossless(verify_tree, shape=shape, seed=2, **{**PARAMS, "temperature": 0.0})
    assert report.passed and report.impossible == 0, str(report)


def forgets_residual(tree, logits, temperature, top_p, top_k, uniforms):
    """Broken: after a rejection, draws the bonus token from p instead of the residual."""
    result = verify_tree(tree, logits, temperature, top_p, top_k, uniforms)
    rows = torch.arange(tree.batch_size)
    p = processed_probs(logits[rows, result.last_node], temperature, top_p, top_k)
    result.bonus_token = sample_from_probs(p, uniforms[:, 0])
    return result


def _relabelled(tree, kind):
    return DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=torch.full_like(tree.kind, int(kind)),
                     draft_probs=tree.draft_probs)


def topk_as_sampled(tree, logits, temperature, top_p, top_k, uniforms):
    """Broken: treats top-k (deterministic) candidates as if drawn from q: min(1, p / q)."""
    return verify_tree(_relabelled(tree, CandidateKind.SAMPLED), logits, temperature, top_p, top_k, uniforms)


def no_replacement_as_iid(tree, logits, temperature, top_p, top_k, uniforms):
    """Broken (subtly): drafts drawn without replacement verified as if i.i.d."""
    return verify_tree(_relabelled(tree, CandidateKind.SAMPLED), logits, temperature, top_p, top_k, uniforms)


@pytest.mark.parametrize("broken,kind,shape", [
    (forgets_residual, CandidateKind.SAMPLED, "chain4"),
    (forgets_residual, CandidateKind.DETERMINISTIC, "dup_siblings"),
    (topk_as_sampled, CandidateKind.DETERMINISTIC, "chain4"),
    (topk_as_sampled, CandidateKind.DETERMINISTIC, "dup_siblings"),
    (no_replacement_as_iid, CandidateKind.SAMPLED_NO_REPLACEMENT, "dup_siblings"),
])
def test_broken_verifiers_fail(broken, kind, shape):
    report = check_lossless(broken, shape=shape, kind=kind, seed=1, **PARAMS)
    assert not report.passed, str(report)
    assert min(report.p_first, report.p_pair) < 1e-6


def test_typical_acceptance_is_lossy():
    report = check_lossless(TypicalVerifier().verify, shape="chain4", seed=1, **PARAMS)
    assert not report.passed, str(report)


def test_chi_square_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1], dtype=torch.float64)
    for n in (200, 5_000):
        obs = torch.bincount(torch.multinomial(probs.float(), n, replacement=True, generator=gen), minlength=5)
        chi2, p, dof = chi_square_pvalue(obs, probs)
        ref = stats.chisquare(obs.double().numpy(), (probs * n).numpy())
        assert dof == 4
        assert chi2 == pytest.approx(ref.statistic, rel=1e-9)
        assert p == pytest.approx(ref.pvalue, rel=1e-6)
    # far from the null: tiny p-values agree too
    chi2, p, _ = chi_square_pvalue(torch.tensor([500, 100, 100, 100, 200]), probs)
    assert p == pytest.approx(stats.chi2.sf(chi2, 4), rel=1e-6)


def test_report_is_deterministic():
    a = check_lossless(verify_tree, shape="chain4", num_draws=20_000, seed=7)
    b = check_lossless(verify_tree, shape="chain4", num_draws=20_000, seed=7)
    assert (a.p_first, a.p_pair, a.mean_accepted) == (b.p_first, b.p_pair, b.mean_accepted)
