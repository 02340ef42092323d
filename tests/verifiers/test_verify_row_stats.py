"""Per-node target statistics: the torch reference against float64, the Triton kernel against
the reference under the CPU interpreter, and the batched thresholds / probabilities of `Target`
against `processed_probs` (the law every rule preserves), ties included."""
import json
import os
import subprocess
import sys

import pytest
import torch

from specdec.verifiers import SamplingPlan, processed_probs
from specdec.verifiers.probs import device_params
from specdec.verifiers.row_stats import row_stats_ref
from specdec.verifiers.target import Target

from verifier_naive import random_tree

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stats_interp_worker.py")


def test_reference_matches_float64():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 50, generator=gen) * 4
    scale = torch.tensor([1.0, 0.7, 2.0, 1.3])
    thr = torch.randn(4, 6, generator=gen)
    need = torch.rand(4, 6, generator=gen) < 0.5
    argmax, lse = row_stats_ref(logits, scale, thr, need)
    s = logits.double() * scale.double()[:, None, None]
    want = torch.logsumexp(torch.where(s >= thr.double()[..., None], s, float("-inf")), -1)
    assert torch.equal(argmax, torch.where(need, logits.argmax(-1), 0))
    assert torch.allclose(lse.double(), torch.where(need, want, 0.0), atol=1e-5, rtol=0)


def test_triton_kernel_matches_reference_under_interpreter():
    proc = subprocess.run([sys.executable, WORKER], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"interpreter worker failed:\n{proc.stderr[-4000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    for case, r in results.items():
        assert r["argmax_equal"], case
        assert r["unwritten"] == 0, case
        assert r["lse_err"] < 2e-5, (case, r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_target_matches_processed_probs(dtype):
    """Batched thresholds (one topk over all nodes, top-p on the survivors, ties beyond the
    K-th value counted) give the probabilities of `processed_probs`, node by node."""
    gen = torch.Generator().manual_seed(3)
    batch, width, vocab = 24, 10, 40
    tree = random_tree(batch, width, vocab, gen, min_nodes=width)
    # coarse logits: many ties, also at the top-k boundary
    logits = (torch.randn(batch, width, vocab, generator=gen) * 2).round().to(dtype)
    temp = torch.rand(batch, generator=gen) + 0.3
    temp[::6] = 0.0
    top_p = torch.where(torch.rand(batch, generator=gen) < 0.7, torch.rand(batch, generator=gen) * 0.6 + 0.3, 1.0)
    top_k = torch.randint(1, 12, (batch,), generator=gen)
    top_k[1::5] = 30  # the cap: K = 30 of 40 tokens, and ties at the 30th value reach beyond it
    top_p[1::5] = 1.0
    plan = SamplingPlan.of(temp, top_p, top_k)
    assert plan.filter_cap == 30
    params = device_params(temp, top_p, top_k, batch, plan, vocab, "cpu")
    target = Target(tree, logits, params)
    assert target.batched
    want = processed_probs(logits, temp, top_p, top_k).double()  # [B, T, V]
    rows = torch.arange(batch)
    for node in range(width):
        got = target.row_probs(torch.full((batch,), node))
        assert torch.allclose(got.double(), want[:, node], atol=1e-6), node
    inner = tree.inner
    par, tok = tree.parent_index, tree.tokens
    expect = want[rows[:, None], par, tok]
    assert torch.allclose(torch.where(inner, target.child_probs(), 0.0).double(),
                          torch.where(inner, expect, 0.0), atol=1e-6)
