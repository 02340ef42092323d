"""Verifier latency: B = 32 trees of T = 64 nodes over a 128,256-token vocabulary (Llama 3).

    python experiments/bench_verifiers.py --out experiments/results/verifiers_h100.json

Three timings per case (CUDA events, median over --repeat after --warmup):
  * ``default``: `verify_tree` as round 1 measured it: parameters as device tensors, value
    checks on (``check=True``: reads the parameters and the checks' flags from the device);
  * ``fast``: the engine-facing path, ``check=False`` with a `SamplingPlan` — no host sync
    (verified under ``torch.cuda.set_sync_debug_mode("error")``);
  * ``graph``: the fast path captured in a CUDA graph together with the tree's derivation
    (``DraftTree(..., validate=False, bounds)`` from static buffers), timed per replay; the
    replay's output is checked against the eager one.
Eager calls get a fresh copy of the tree without its lazily cached tensors, so the per-tree
work a verifier does (sibling structure) is counted as an engine would pay it; what DraftTree
computes when built (depths, ancestor masks, the validation read) is timed separately.

Trees: an EAGLE-2-like static top-k tree of 64 nodes (depth 6, 32 internal nodes) and a chain of
64. Logits: "accept" boosts each node's first child so every row walks to the deepest leaf;
"random" logits reject at depth 1. Modes: greedy; temperature 1; temperature 0.7 + top-k 50 +
top-p 0.9 (batched thresholds); temperature 0.7 + top-p 0.9 alone (a sort per depth); SAMPLED
candidates with draft_probs (the rank-by-rank path). Micro-benchmarks of the pieces follow.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import time
import traceback
from functools import cached_property
from pathlib import Path

import torch

from specdec.engine.graphs import capture
from specdec.verifiers import CandidateKind, DraftTree, SamplingPlan, TreeChoices, sample, verify_tree
from specdec.verifiers.row_stats import row_stats

MODES = {  # name -> (temperature, top_p, top_k)
    "greedy": (0.0, 1.0, 0),
    "temp1": (1.0, 1.0, 0),
    "temp0.7_topk50_topp0.9": (0.7, 0.9, 50),
    "temp0.7_topp0.9": (0.7, 0.9, 0),
}
CACHED = [k for k, v in vars(DraftTree).items() if isinstance(v, cached_property)]


def eagle_like_choices(num: int = 63) -> list[list[int]]:
    """A top-k tree: paths ranked by (sum of ranks + depth), the first ``num`` (prefix-closed)."""
    paths, frontier = [], [[]]
    while frontier:
        frontier = [p + [r] for p in frontier for r in range(8) if sum(p) + r + len(p) + 1 <= 7]
        paths += frontier
    paths.sort(key=lambda p: (sum(p) + len(p), len(p), p))
    return paths[:num]


def make_tree(shape: str, batch: int, nodes: int, vocab: int, kind: CandidateKind, dev, seed: int) -> DraftTree:
    """A validated tree batch on ``dev``; SAMPLED nodes are drawn from q at their parent."""
    gen = torch.Generator().manual_seed(seed)
    if shape == "chain64":
        tree = DraftTree.chains(torch.randint(0, vocab, (batch, nodes), generator=gen))
    else:
        tc = TreeChoices(eagle_like_choices(nodes - 1))
        tree = DraftTree.from_choices(tc, torch.randint(0, vocab, (batch, tc.num_nodes), generator=gen))
    tokens, parents, num = tree.tokens.to(dev), tree.parents.to(dev), tree.num_nodes.to(dev)
    kinds = torch.full(tokens.shape, int(kind), dtype=torch.int8, device=dev)
    if kind == CandidateKind.DETERMINISTIC:
        return DraftTree(tokens, parents, num, kind=kinds)
    dgen = torch.Generator(device=dev).manual_seed(seed)
    probs = torch.softmax(torch.randn(batch, nodes, vocab, generator=dgen, device=dev), -1)  # [B, T, V]
    q_par = probs[torch.arange(batch, device=dev)[:, None], parents.clamp(min=0)]  # drafts come from q at the parent
    draws = torch.multinomial(q_par.view(-1, vocab), 1, generator=dgen).view(batch, -1)
    del q_par
    tokens = torch.where(parents >= 0, draws, tokens)
    return DraftTree(tokens, parents, num, kind=kinds, draft_probs=probs)


def make_logits(tree: DraftTree, vocab: int, regime: str, dtype, seed: int) -> torch.Tensor:
    dev = tree.tokens.device
    gen = torch.Generator(device=dev).manual_seed(10_000 + seed)  # independent of the draft's q
    logits = torch.randn(*tree.tokens.shape, vocab, generator=gen, device=dev)  # [B, T, V]
    if regime == "accept":  # each node's first child gets almost all the mass
        width = tree.max_nodes
        idx = torch.arange(width, device=dev).expand_as(tree.tokens)
        first = torch.full_like(tree.tokens, width)
        first.scatter_reduce_(1, tree.parents.clamp(min=0), torch.where(tree.parents >= 0, idx, width), "amin")
        has = first < width
        tok = tree.tokens.gather(1, first.clamp(max=width - 1))
        logits.scatter_add_(2, tok[:, :, None], torch.where(has, 30.0, 0.0)[:, :, None])
    return logits.to(dtype)


def fresh(tree: DraftTree) -> DraftTree:
    """The tree without its lazily cached tensors (as a verifier meets a new step's tree)."""
    out = copy.copy(tree)
    for k in CACHED:
        out.__dict__.pop(k, None)
    return out


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_calls(fn, make_args, warmup: int, repeat: int) -> dict:
    """Per call: device time between CUDA events (host time on CPU) and host (enqueue) time."""
    for _ in range(warmup):
        fn(*make_args())
    _sync()
    cuda = torch.cuda.is_available()
    dev_ms, host_ms = [], []
    for _ in range(repeat):
        args = make_args()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn(*args)
        host_ms.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            end.record()
            end.synchronize()
            dev_ms.append(start.elapsed_time(end))
    times = sorted(dev_ms if cuda else host_ms)
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[(9 * len(times)) // 10], "host_ms": statistics.median(host_ms)}


def path_name(tree: DraftTree, plan: SamplingPlan, vocab: int) -> str:
    if plan.all_greedy:
        return "greedy"
    if tree.has_sampled:
        return "general"
    if plan.filter_cap == 0:
        return "closed_form"
    return "closed_form_topk" if plan.filter_cap is not None and plan.filter_cap < vocab else "walk_sort"


def run_case(args, shape, regime, mode, dtype, kind) -> dict:
    dev = args.device
    seed = len(shape) * 7 + len(regime) + int(kind)
    tree = make_tree(shape, args.batch, args.nodes, args.vocab, kind, dev, seed)
    logits = make_logits(tree, args.vocab, regime, dtype, seed)
    temp, top_p, top_k = MODES[mode]
    host_params = (torch.full((args.batch,), temp), torch.full((args.batch,), top_p),
                   torch.full((args.batch,), top_k, dtype=torch.long))
    params = [p.to(dev) for p in host_params]
    plan = SamplingPlan.of(*host_params)
    u = torch.rand(args.batch, args.nodes + 1, device=dev)
    row = {"tree": shape, "logits": regime, "mode": mode, "dtype": str(dtype).replace("torch.", ""),
           "kind": kind.name, "path": path_name(tree, plan, args.vocab), "max_depth": tree.max_depth}

    def default(t):
        return verify_tree(t, logits, *params, uniforms=u)

    def fast(t):
        return verify_tree(t, logits, *params, uniforms=u, check=False, plan=plan)

    ref = fast(fresh(tree))
    row["mean_accepted"] = float(ref.num_accepted.float().mean())
    row["default"] = time_calls(default, lambda: (fresh(tree),), args.warmup, args.repeat)
    row["fast"] = time_calls(fast, lambda: (fresh(tree),), args.warmup, args.repeat)
    if dev == "cuda":
        row.update(_sync_free(fast, tree))
    row.update(_graph(tree, logits, params, u, plan, ref, args))
    print(_line(row), flush=True)
    return row


def _sync_free(fast, tree) -> dict:
    _sync()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fast(fresh(tree))
        return {"sync_free": True}
    except Exception as e:  # noqa: BLE001 - a synchronising call raises RuntimeError; record any
        return {"sync_free": False, "sync_error": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _graph(tree, logits, params, u, plan, ref, args) -> dict:
    def step():
        t = DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=tree.kind, draft_probs=tree.draft_probs,
                      validate=False, depth_bound=tree.max_depth, children_bound=tree.max_children)
        return verify_tree(t, logits, *params, uniforms=u, check=False, plan=plan)

    if args.device != "cuda":  # smoke: the captured function itself, eagerly
        out = step()
        return {"graph_matches_eager": bool(torch.equal(out.accepted_nodes, ref.accepted_nodes)
                                            and torch.equal(out.bonus_token, ref.bonus_token))}
    try:
        graph, _, out = capture(step, "cuda")
        graph.replay()
        _sync()
        same = bool(torch.equal(out.accepted_nodes, ref.accepted_nodes) and torch.equal(out.bonus_token, ref.bonus_token))
        stats = time_calls(lambda: graph.replay(), lambda: (), args.warmup, args.repeat)
        del graph, out
        return {"graph": stats, "graph_matches_eager": same}
    except Exception as e:  # noqa: BLE001 - record and go on: one call gives every number
        return {"graph": None, "graph_error": f"{type(e).__name__}: {str(e)[:300]}"}


def construction(args) -> list[dict]:
    """What DraftTree costs when built for a step: validated (one read) or not (bounds)."""
    rows = []
    tree = make_tree("eagle64", args.batch, args.nodes, args.vocab, CandidateKind.DETERMINISTIC, args.device, 1)
    for validate in (True, False):
        def build():
            return DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=tree.kind, validate=validate,
                             depth_bound=None if validate else tree.max_depth,
                             children_bound=None if validate else tree.max_children)
        rows.append({"what": f"DraftTree(eagle64, validate={validate})", **time_calls(build, lambda: (), args.warmup, args.repeat)})
    return rows


def micro(args) -> list[dict]:
    """The pieces: the one large read, thresholds, a sort per depth, the plain sampler."""
    dev, out = args.device, []
    tree = make_tree("eagle64", args.batch, args.nodes, args.vocab, CandidateKind.DETERMINISTIC, dev, 2)
    internal, valid = tree.num_children > 0, tree.valid
    scale = torch.ones(args.batch, device=dev)
    n_int = int(internal.sum())
    for dtype in (torch.float32, torch.bfloat16):
        x = make_logits(tree, args.vocab, "random", dtype, 3)
        size = x.element_size() * args.vocab
        thr = x.float().topk(50, dim=-1).values[..., -1]
        cases = {
            "torch.argmax all nodes": (lambda: x.argmax(-1), x.numel() * x.element_size()),
            "row_stats argmax, internal nodes": (lambda: row_stats(x, None, None, internal, want_lse=False), n_int * size),
            "row_stats argmax+lse, internal nodes": (lambda: row_stats(x, scale, None, internal), n_int * size),
            "row_stats argmax+lse with thr, all nodes": (lambda: row_stats(x, scale, thr, valid), x.numel() * x.element_size()),
            "torch.logsumexp(x*s) all nodes": (lambda: torch.logsumexp(x.float() * 0.7, -1), x.numel() * x.element_size()),
            "torch.topk(50) all nodes": (lambda: x.view(-1, args.vocab).topk(50, dim=-1), x.numel() * x.element_size()),
            "torch.sort [B, V] (one depth of the top-p walk)": (lambda: x[:, 0].float().sort(-1, descending=True), args.batch * size),
        }
        for name, (fn, nbytes) in cases.items():
            try:
                stats = time_calls(fn, lambda: (), args.warmup, args.repeat)
                gbs = nbytes / (stats["median_ms"] * 1e-3) / 1e9
                out.append({"what": name, "dtype": str(dtype).replace("torch.", ""), "bytes_read": nbytes,
                            "GB_per_s": gbs, **stats})
            except Exception as e:  # noqa: BLE001
                out.append({"what": name, "dtype": str(dtype), "error": str(e)[:300]})
            print(f"micro | {out[-1]['what']} | {out[-1].get('dtype')} | {out[-1].get('median_ms', float('nan')):.3f} ms | "
                  f"{out[-1].get('GB_per_s', float('nan')):.0f} GB/s", flush=True)
        del x
    out += kernel_sweep(args, tree, internal, scale)
    xs = torch.randn(args.batch, args.vocab, device=dev)
    us = torch.rand(args.batch, device=dev)
    for mode, (temp, top_p, top_k) in MODES.items():
        stats = time_calls(lambda: sample(xs, temp, top_p, top_k, us), lambda: (), args.warmup, args.repeat)
        out.append({"what": f"plain sampler sample([B, V]) {mode}", **stats})
        print(f"micro | {out[-1]['what']} | {stats['median_ms']:.3f} ms", flush=True)
    return out


def kernel_sweep(args, tree, internal, scale) -> list[dict]:
    """row_stats (argmax + lse, internal nodes, fp32) at other block sizes / warp counts."""
    if args.device != "cuda":
        return []
    from specdec.verifiers import row_stats_triton as rst
    x = make_logits(tree, args.vocab, "random", torch.float32, 4)
    nbytes = int(internal.sum()) * args.vocab * 4
    default, rows = (rst.BLOCK, rst.NUM_WARPS), []
    try:
        for block, warps in ((4096, 8), (2048, 8), (2048, 4), (8192, 8), (1024, 4)):
            rst.BLOCK, rst.NUM_WARPS = block, warps
            stats = time_calls(lambda: row_stats(x, scale, None, internal), lambda: (), args.warmup, args.repeat)
            rows.append({"what": f"row_stats argmax+lse internal fp32 BLOCK={block} warps={warps}",
                         "GB_per_s": nbytes / (stats["median_ms"] * 1e-3) / 1e9, **stats})
            print(f"micro | {rows[-1]['what']} | {stats['median_ms']:.3f} ms | {rows[-1]['GB_per_s']:.0f} GB/s", flush=True)
    except Exception as e:  # noqa: BLE001
        rows.append({"what": "kernel sweep", "error": str(e)[:300]})
    finally:
        rst.BLOCK, rst.NUM_WARPS = default
    return rows


def cases(args):
    for shape in ("eagle64", "chain64"):
        for regime in ("accept", "random"):
            for mode in MODES:
                yield shape, regime, mode, torch.float32, CandidateKind.DETERMINISTIC
    yield from (("eagle64", "accept", m, torch.bfloat16, CandidateKind.DETERMINISTIC) for m in ("greedy", "temp1"))
    yield from (("eagle64", r, "temp1", torch.float32, CandidateKind.SAMPLED) for r in ("accept", "random"))
    yield "eagle64", "accept", "temp0.7_topk50_topp0.9", torch.float32, CandidateKind.SAMPLED


def _ms(d) -> str:
    return "-" if not d else f"{d['median_ms']:.3f}"


def _line(r: dict) -> str:
    graph = _ms(r.get("graph")) if r.get("graph") else ("-" if "graph_error" not in r else "ERR")
    return (f"| {r['tree']} | {r['logits']} | {r['mode']} | {r['dtype']} | {r['kind']} | {r['path']} | "
            f"{r['mean_accepted']:.2f} | {_ms(r['default'])} | {_ms(r['fast'])} | {r['fast']['host_ms']:.3f} | "
            f"{graph} | {r.get('sync_free', '-')} | {r.get('graph_matches_eager', '-')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/verifiers_h100.json"))
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (host timing, no graphs)")
    parser.add_argument("--skip-micro", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --device cpu for a smoke run)")
    print("| tree | logits | mode | dtype | kind | path | accepted | default ms | fast ms | fast host ms | "
          "graph ms | sync-free | graph = eager |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "batch": args.batch, "nodes": args.nodes,
            "vocab": args.vocab, "warmup": args.warmup, "repeat": args.repeat,
            "command": "python experiments/bench_verifiers.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("skip_micro",))}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        pass
    out = {"meta": meta, "rows": [], "construction": [], "micro": [], "errors": []}

    def save():  # after every case: a run cut short still leaves its numbers
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))

    for case in cases(args):
        try:
            out["rows"].append(run_case(args, *case))
        except Exception:  # noqa: BLE001 - record and go on
            out["errors"].append({"case": [str(c) for c in case], "error": traceback.format_exc()[-2000:]})
            print(f"ERROR {case}: {out['errors'][-1]['error']}", flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()
        save()
    out["construction"] = construction(args)
    for b in out["construction"]:
        print(f"build | {b['what']} | {b['median_ms']:.3f} ms (host {b['host_ms']:.3f} ms)", flush=True)
    save()
    if not args.skip_micro:
        out["micro"] = micro(args)
    save()
    print(f"wrote {args.out} ({len(out['rows'])} cases, {len(out['errors'])} errors)")


if __name__ == "__main__":
    main()
