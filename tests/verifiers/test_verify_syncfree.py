"""Verification without host syncs: with ``check=False``, a SamplingPlan and a tree built with
bounds (``validate=False``), verification reads no value from the device — proven on the meta
device, where any read (``.item()``, ``bool()``, ``.tolist()``, ``.cpu()``, ``nonzero``) raises;
and the fast configuration returns exactly what the default, validating one returns."""
import numpy as np
import pytest
import torch

from specdec.verifiers import DraftTree, SamplingPlan, verify_tree, verify_tree_typical

from test_verify_sampling import _tree_with_q
from verifier_naive import friendly_logits, random_tree

PLANS = {  # path -> a plan that selects it
    "greedy": SamplingPlan(all_greedy=True),
    "closed_form": SamplingPlan(filter_cap=0),
    "closed_form_topk": SamplingPlan(filter_cap=5),
    "walk_sort": SamplingPlan(filter_cap=None),
}


@pytest.mark.parametrize("sampled", [False, True], ids=["deterministic", "sampled"])
@pytest.mark.parametrize("path", list(PLANS))
def test_no_value_is_read_on_meta(path, sampled):
    batch, width, vocab = 4, 9, 50
    meta = dict(device="meta")
    extra = {}
    if sampled:
        extra = dict(kind=torch.ones(batch, width, dtype=torch.int8, **meta),
                     draft_probs=torch.empty(batch, width, vocab, **meta))
    tree = DraftTree(torch.zeros(batch, width, dtype=torch.long, **meta),
                     torch.zeros(batch, width, dtype=torch.long, **meta),
                     torch.zeros(batch, dtype=torch.long, **meta),
                     validate=False, depth_bound=3, children_bound=2, **extra)
    logits = torch.empty(batch, width, vocab, **meta)
    params = (torch.empty(batch, **meta), torch.empty(batch, **meta), torch.empty(batch, dtype=torch.long, **meta))
    r = verify_tree(tree, logits, *params, uniforms=torch.empty(batch, width + 1, **meta), check=False,
                    plan=PLANS[path])
    assert r.accepted_nodes.shape == (batch, 4) and r.bonus_token.shape == (batch,)
    assert r.depth_attempted.shape == (batch, 3)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the default mode validates: it reads
        verify_tree(tree, logits, *params, uniforms=torch.empty(batch, width + 1, **meta))


def test_typical_needs_no_read_either():
    meta = dict(device="meta")
    tree = DraftTree(torch.zeros(2, 5, dtype=torch.long, **meta), torch.zeros(2, 5, dtype=torch.long, **meta),
                     torch.zeros(2, dtype=torch.long, **meta), validate=False, depth_bound=4)
    params = (torch.empty(2, **meta), torch.empty(2, **meta), torch.empty(2, dtype=torch.long, **meta))
    r = verify_tree_typical(tree, torch.empty(2, 5, 11, **meta), *params,
                            uniforms=torch.empty(2, 6, **meta), check=False, plan=SamplingPlan(filter_cap=3))
    assert r.accepted_nodes.shape == (2, 5)


@pytest.mark.parametrize("kinds,top_p,top_k", [([0], 1.0, 0), ([0], 0.9, 4), ([0], 0.85, 0), ([0, 1, 2], 0.9, 4)])
def test_fast_configuration_matches_default(kinds, top_p, top_k):
    gen = torch.Generator().manual_seed(len(kinds) * 10 + top_k)
    batch, width, vocab = 120, 14, 9
    tree = _tree_with_q(random_tree(batch, width, vocab, gen), vocab, gen, kinds)
    logits = friendly_logits(tree, vocab, gen, boost=2.5)
    temp = torch.full((batch,), 0.9)
    temp[::5] = 0.0
    tp, tk = torch.full((batch,), top_p), torch.full((batch,), top_k)
    u = torch.rand(batch, width + 1, generator=gen)
    want = verify_tree(tree, logits, temp, tp, tk, uniforms=u)
    bounded = DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=tree.kind, draft_probs=tree.draft_probs,
                        validate=False, depth_bound=width - 1, children_bound=width - 1)
    for plan in (SamplingPlan.of(temp, tp, tk), SamplingPlan()):  # tight, and the loosest
        got = verify_tree(bounded, logits, temp, tp, tk, uniforms=u, check=False, plan=plan)
        depth = want.accepted_nodes.shape[1]
        assert torch.equal(got.accepted_nodes[:, :depth], want.accepted_nodes)
        assert bool((got.accepted_nodes[:, depth:] == -1).all())
        assert torch.equal(got.bonus_token, want.bonus_token)
        assert torch.equal(got.num_accepted, want.num_accepted)


def test_plan_is_checked_against_the_parameters():
    tree = DraftTree.from_lists([[1, 2, 3]], [[-1, 0, 1]])
    logits = torch.zeros(1, 3, 5)
    with pytest.raises(ValueError, match="all_greedy=True but some row"):
        verify_tree(tree, logits, 0.5, plan=SamplingPlan(all_greedy=True))
    with pytest.raises(ValueError, match="filter_cap=2 but"):
        verify_tree(tree, logits, 0.5, 0.9, 3, plan=SamplingPlan(filter_cap=2))
    with pytest.raises(ValueError, match="any_greedy=False"):
        verify_tree(tree, logits, 0.0, plan=SamplingPlan(any_greedy=False))
    verify_tree(tree, logits, 0.5, 0.9, 3, plan=SamplingPlan(filter_cap=4))  # a looser plan is fine
    assert SamplingPlan.of(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.9]), torch.tensor([0, 0])) == \
        SamplingPlan(all_greedy=False, any_greedy=True, filter_cap=None)
    assert SamplingPlan.of(torch.tensor([1.0]), torch.tensor([0.9]), torch.tensor([7])).filter_cap == 7
    assert SamplingPlan.of(torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([0])).all_greedy


@pytest.mark.parametrize("rows", [[(0.0, 1.0, 0)], [(0.0, 1.0, 0), (1.0, 0.9, 0)], [(1.0, 0.9, 7), (0.7, 1.0, 3)],
                                  [(0.8, 1.0, 0)], [(0.0, 0.5, 4), (1.0, 1.0, 0)]])
def test_plan_of_numpy_equals_plan_of_tensors(rows):
    """The engine derives plans from numpy arrays (cheaper on the host); same plan as tensors."""
    temp, top_p, top_k = zip(*rows)
    want = SamplingPlan.of(torch.tensor(temp), torch.tensor(top_p), torch.tensor(top_k))
    got = SamplingPlan.of(np.array(temp, np.float32), np.array(top_p, np.float32), np.array(top_k, np.int64))
    assert got == want
