"""Runs the Triton kernels under the CPU interpreter against the references; prints one JSON
object {case: {"rel_err": .., "unwritten": .., "seconds": ..} or {"error": traceback}}.

Started by test_interpreter.py in a fresh process: Triton chooses interpreter or compiler for every
@triton.jit function (its own library ones included) when it is imported, so TRITON_INTERPRET must
be set before the first `import triton` - which other tests in the pytest process may have done.
Usage: python interp_worker.py CASE [CASE ...]
"""
import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_cases import (ATTN_CASES, LAYER_CASES, TREE_STRUCTURE_CASES, compact_case,  # noqa: E402
                          layer_case, make_batch, rel_err, store_case, tree_structure_case)

from specdec.kernels import reference as ref_ops  # noqa: E402
from specdec.kernels import layer_ops  # noqa: E402
from specdec.verifiers.tree import tree_structure as tree_structure_ref  # noqa: E402
from specdec.verifiers.tree_structure_triton import tree_structure_triton  # noqa: E402
from specdec.kernels import (compact_kv_ref, compact_kv_triton, plan_tree_attention,  # noqa: E402
                             store_kv_ref, store_kv_triton, tree_attention_ref, tree_attention_triton)


def run_attention(name: str) -> dict:
    specs, hq, hkv, d, page, plan_kw = ATTN_CASES[name]
    batch = make_batch(specs, hq, hkv, d, page, seed=len(name))
    plan = plan_tree_attention(batch.qo_indptr, batch.prefix_lens, hq, hkv, **plan_kw)
    ref = tree_attention_ref(*batch.args())
    errs, unwritten = [], 0
    for _ in range(2 if plan.fused_merge else 1):  # a second launch must find the counters reset
        out = torch.full_like(batch.q, float("nan"))  # poisoned: every row must be written
        tree_attention_triton(*batch.args(), plan=plan, out=out)
        errs.append(rel_err(out.nan_to_num(), ref))
        unwritten += int(out.isnan().sum())
    if "fused" in name and not plan.fused_merge:
        raise AssertionError(f"case {name} expects a plan with fused_merge; got {plan}")
    return {"rel_err": max(errs), "unwritten": unwritten, "num_splits": plan.num_splits,
            "fused_merge": plan.fused_merge, "grid": list(plan.grid(hkv))}


def run_store() -> dict:
    k, v, kc, vc, slots = store_case(n=23, hkv=3, d=64, page=16, num_blocks=4)
    kr, vr = kc.clone(), vc.clone()
    store_kv_triton(k, v, kc, vc, slots)
    store_kv_ref(k, v, kr, vr, slots)
    return {"rel_err": max(rel_err(kc, kr), rel_err(vc, vr)), "unwritten": 0,
            "exact": bool(torch.equal(kc, kr) and torch.equal(vc, vr))}


def run_compact() -> dict:
    kc, vc, src, dst = compact_case(layers=3, hkv=2, d=64, page=16)
    kr, vr = kc.clone(), vc.clone()
    compact_kv_triton(kc, vc, src, dst)
    compact_kv_ref(kr, vr, src, dst)
    return {"rel_err": max(rel_err(kc, kr), rel_err(vc, vr)), "unwritten": 0,
            "exact": bool(torch.equal(kc, kr) and torch.equal(vc, vr))}


def run_layer_op(name: str) -> dict:
    """A fused layer op (Triton) vs its torch formula; rope runs in place on copies."""
    args, kw = layer_case(name)
    op = name.replace("_no_residual", "")
    if op == "rope":
        out, ref = args[0].clone(), args[0].clone()
        layer_ops.rope_triton(out, *args[1:])
        ref_ops.rope_ref(ref, *args[1:])
        outs, refs = [out], [ref]
    else:
        outs = getattr(layer_ops, f"{op}_triton")(*args, **kw)
        refs = getattr(ref_ops, f"{op}_ref")(*args, **kw)
        outs, refs = (list(outs), list(refs)) if isinstance(outs, tuple) else ([outs], [refs])
    return {"rel_err": max(rel_err(o, r) for o, r in zip(outs, refs)),
            "unwritten": sum(int(o.isnan().sum()) for o in outs)}


def run_tree_structure(name: str) -> dict:
    """Parent index, child counts, depths and ancestor masks: integers, so exactly equal."""
    parents, num = tree_structure_case(name)
    outs = tree_structure_triton(parents, num)
    refs = tree_structure_ref(parents, num)
    exact = all(torch.equal(o, r) for o, r in zip(outs, refs))
    return {"rel_err": 0.0 if exact else 1.0, "unwritten": 0, "exact": exact}


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    results = {}
    for name in names:
        t0 = time.time()
        try:
            fn = {"store_kv": run_store, "compact_kv": run_compact}.get(name)
            if name in TREE_STRUCTURE_CASES:
                results[name] = run_tree_structure(name)
            elif name in LAYER_CASES:
                results[name] = run_layer_op(name)
            else:
                results[name] = fn() if fn else run_attention(name)
        except Exception:  # reported per case by the test
            results[name] = {"error": traceback.format_exc()}
        results[name]["seconds"] = round(time.time() - t0, 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
