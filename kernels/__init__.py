"""Attention and KV-cache kernels over the paged cache, the fused layer ops and a wide top-k
(`wide_topk`, pure torch). Kernels that serve the verifiers live in `specdec.verifiers`; this
package imports nothing from the rest of specdec.

One entry point per operation; each checks its inputs, then picks the Triton kernel for CUDA
tensors and the plain-torch reference (`specdec.kernels.reference`) otherwise. Contracts (shapes,
masking rule) are documented in `reference.py`.

Hot path (per layer, no device sync): build a plan once per step, pass it to every layer::

    plan = plan_tree_attention(qo_indptr, prefix_lens, num_q_heads, num_kv_heads,
                               max_q_len=max_q_len, max_kv_len=max_kv_len)  # host ints
    for layer in layers:
        o = tree_attention(q, k_cache[layer], v_cache[layer], block_tables, prefix_lens,
                           qo_indptr, tree_mask, use_tree_mask, plan=plan)

Without a plan and hints the wrapper reads the lengths from the device (a sync) and validates them.
"""
from __future__ import annotations

_handed_over = False
if __name__ == "kernels":
    # This folder is `specdec.kernels`. Run from a clone's root (`python -m specdec.run`, `python -m
    # pytest`), the root is on sys.path, so `import kernels` finds this folder before the installed
    # package of that name (Hugging Face's hub kernels, which transformers imports when it is
    # installed, as transformers 5.2x requires). Hand that import over to the installed package;
    # without one, this folder serves it (transformers < 5.2x imports `kernels` to probe for it).
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir))
    _path = [p for p in sys.path if os.path.realpath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds
        _spec.loader.exec_module(_module)
        _handed_over = True
if not _handed_over:
    # `.ops` imports the Triton modules (kernels/tree_attention.py, ...) before the names below are
    # bound: importing a submodule binds it as an attribute of the package, which would otherwise
    # replace `tree_attention` (the function) by `tree_attention` (the module). The launchers are
    # exported as `tree_attention_triton` etc.; `importlib.import_module(
    # "specdec.kernels.tree_attention")` reaches the module itself.
    from .ops import (add_rms_norm, add_rms_norm_triton, compact_kv, compact_kv_triton, rope_,
                      rope_triton, silu_mul, silu_mul_triton, store_kv, store_kv_triton,
                      tree_attention, tree_attention_triton)
    from .plan import MAX_TREE_NODES, TreeAttentionPlan, plan_tree_attention
    from .reference import (add_rms_norm_ref, compact_kv_ref, rope_ref, silu_mul_ref, store_kv_ref,
                            tree_attention_ref)
    from .topk import wide_topk

    __all__ = ["tree_attention", "store_kv", "compact_kv", "plan_tree_attention",
               "TreeAttentionPlan", "MAX_TREE_NODES", "tree_attention_ref", "store_kv_ref",
               "compact_kv_ref",
               "tree_attention_triton", "store_kv_triton", "compact_kv_triton",
               "add_rms_norm", "rope_", "silu_mul", "add_rms_norm_ref", "rope_ref", "silu_mul_ref",
               "add_rms_norm_triton", "rope_triton", "silu_mul_triton",
               "wide_topk"]
