"""Runs the batch-invariant Triton kernels (kernels/batch_invariant_triton.py) under the CPU
interpreter; prints one JSON object {case: {...} or {"error": traceback}}. Started in a fresh
process by test_batch_invariant_triton.py (TRITON_INTERPRET must be set before triton's import)."""
import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import json  # noqa: E402
import math  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from specdec.kernels.batch_invariant_triton import attention_bi_cuda, linear_bi_cuda, rms_norm_bi_cuda  # noqa: E402


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def alone_equal(fn, x, rows):
    """Every row of ``fn(x)`` bitwise equal to ``fn`` of that row alone, and of a prefix batch."""
    whole = fn(x)
    ok = all(torch.equal(fn(x[r:r + 1])[0], whole[r]) for r in rows)
    return ok and torch.equal(fn(x[: rows[-1] + 1])[rows[-1]], whole[rows[-1]]), whole


def linear() -> dict:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(37, 96, generator=g), torch.randn(80, 96, generator=g), torch.randn(80, generator=g)
    invariant, out = alone_equal(lambda t: linear_bi_cuda(t, w, b), x, [0, 5, 17, 36])
    return {"rel_err": rel(out, F.linear(x, w, b)), "invariant": invariant}


def rms_norm() -> dict:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(9, 100, generator=g) * 3, torch.randn(100, generator=g)
    invariant, out = alone_equal(lambda t: rms_norm_bi_cuda(t, w, 1e-5), x, [0, 4, 8])
    ref = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    return {"rel_err": rel(out, ref), "invariant": invariant}


def attention() -> dict:
    """Rows over random key lists (GQA 6 / 2 heads, lengths across several key blocks), against
    a plain softmax attention over the same keys; each row alone equals the batch's row; two rows
    whose key lists hold the same keys give the same output (a tree node and a decode)."""
    g = torch.Generator().manual_seed(2)
    n, hq, hkv, d, blocks, bs = 7, 6, 2, 32, 20, 16
    q = torch.randn(n, hq, d, generator=g)
    kc, vc = torch.randn(blocks, bs, hkv, d, generator=g), torch.randn(blocks, bs, hkv, d, generator=g)
    lengths = torch.tensor([1, 5, 64, 65, 130, 200, 130])
    slots = torch.zeros(n, 200, dtype=torch.long)
    for r, length in enumerate(lengths.tolist()):
        slots[r, :length] = torch.randperm(blocks * bs, generator=g)[:length]
    slots[6], q[6] = slots[4], q[4]  # the same query over the same keys in the same order
    out = attention_bi_cuda(q, kc, vc, slots, lengths)
    kf, vf = kc.flatten(0, 1), vc.flatten(0, 1)
    err = 0.0
    for r, length in enumerate(lengths.tolist()):
        k, v = kf[slots[r, :length]], vf[slots[r, :length]]  # [L, Hkv, D]
        k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
        att = torch.softmax(torch.einsum("hd,lhd->hl", q[r], k) / math.sqrt(d), -1)
        err = max(err, rel(out[r], torch.einsum("hl,lhd->hd", att, v)))
    alone = all(torch.equal(attention_bi_cuda(q[r:r + 1], kc, vc, slots[r:r + 1], lengths[r:r + 1])[0], out[r])
                for r in range(n))
    return {"rel_err": err, "invariant": alone and torch.equal(out[6], out[4])}


CASES = {"linear": linear, "rms_norm": rms_norm, "attention": attention}

if __name__ == "__main__":
    results = {}
    for name, fn in CASES.items():
        try:
            results[name] = fn()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    print(json.dumps(results))
