"""Triton kernels vs the references on CPU, under TRITON_INTERPRET=1 (fp32).

The interpreter must be chosen before triton's first import, which another test module of this
pytest process may already have done; so the cases run in one fresh worker process
(interp_worker.py), started once for the module with the cases that were collected.
"""
import json
import os
import subprocess
import sys

import pytest

from kernel_cases import ATTN_CASES, KV_CASES, LAYER_CASES, TREE_STRUCTURE_CASES

# fp32 under the interpreter: numpy matmuls in fp32, online softmax in fp32 -> ~1e-7 observed.
FP32_REL_TOL = 1e-5
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interp_worker.py")
CASES = list(ATTN_CASES) + list(KV_CASES) + list(LAYER_CASES) + list(TREE_STRUCTURE_CASES)


@pytest.fixture(scope="module")
def results(request):
    names = [item.callspec.params["case"] for item in request.session.items
             if item.module is request.module and hasattr(item, "callspec")]
    proc = subprocess.run([sys.executable, WORKER, *names], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"interpreter worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_under_interpreter(results, case):
    r = results[case]
    assert "error" not in r, r.get("error")
    assert r["unwritten"] == 0, f"{r['unwritten']} output values were never written"
    assert r["rel_err"] < FP32_REL_TOL, r
    if case in KV_CASES:
        assert r["exact"], "store/compact must copy bits exactly"
    if case in TREE_STRUCTURE_CASES:
        assert r["exact"], "tree structure is integer arithmetic: it must equal the reference"
