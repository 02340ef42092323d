"""The GPU's batch-invariant kernels (kernels/batch_invariant_triton.py) under the Triton
interpreter on the CPU: each matches its reference (fp32) and computes a row alone bitwise as it
does in a batch. tests/engine/test_exact.py runs them on a GPU (marker gpu): a tree node equals a
decode at its position, and speculative output equals autoregressive output in bf16."""
import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bi_triton_worker.py")


@pytest.fixture(scope="module")
def results():
    proc = subprocess.run([sys.executable, WORKER], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"interpreter worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["linear", "rms_norm", "attention"])
def test_kernel_is_row_invariant_and_right(results, case):
    r = results[case]
    assert "error" not in r, r.get("error")
    assert r["invariant"], f"{case}: a row computed alone differs from the same row in a batch"
    assert r["rel_err"] < 1e-5, r


@pytest.mark.gpu
def test_kernels_are_row_invariant_on_the_gpu_in_bf16():
    import torch

    from specdec.kernels.batch_invariant_triton import attention_bi_cuda, linear_bi_cuda, rms_norm_bi_cuda

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(45, 576, generator=g, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1536, 576, generator=g, device="cuda", dtype=torch.bfloat16)
    for fn in (lambda t: linear_bi_cuda(t, w), lambda t: rms_norm_bi_cuda(t, w[0], 1e-5)):
        whole = fn(x)
        assert all(torch.equal(fn(x[r:r + 1])[0], whole[r]) for r in (0, 7, 44))
    q = torch.randn(5, 9, 64, generator=g, device="cuda", dtype=torch.bfloat16)
    kc, vc = (torch.randn(30, 16, 3, 64, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    lengths = torch.tensor([1, 63, 64, 200, 333], device="cuda")
    slots = torch.stack([torch.randperm(480, generator=g, device="cuda")[:333] for _ in range(5)])
    out = attention_bi_cuda(q, kc, vc, slots, lengths)
    assert all(torch.equal(attention_bi_cuda(q[r:r + 1], kc, vc, slots[r:r + 1], lengths[r:r + 1])[0], out[r])
               for r in range(5))
