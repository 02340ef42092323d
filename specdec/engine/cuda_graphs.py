"""CUDA graphs of the decode/verify step: target forward, logits of the tree nodes and the
verifier, replayed as one graph per (batch bucket, node bucket, sampling plan).

A small model's step is host-bound: eagerly, SmolLM2-135M issues ~350 launches plus the verifier's
dozens, each a few microseconds of Python and driver time, while the GPU work is ~1 ms. Captured
once per shape bucket (as vLLM and SGLang capture their decode steps), a step costs one replay.

What a graph needs, and how it gets it:
  * fixed shapes: a batch of B sequences with at most T nodes each runs in the bucket
    (B_g >= B, T_g >= T) with N_g = B_g * T_g token rows; padding rows store nothing (slot -1),
    padding sequences have no new tokens (the kernel's tiles exit) and a root-only tree;
  * fixed addresses: inputs live in static device buffers, filled each step by ONE host-to-device
    copy per dtype from pinned staging memory, laid out per bucket (`_Layout`);
  * no host read inside: the attention plan comes from upper bounds (T_g, max_model_len), the
    draft tree is built with ``validate=False`` and the verifier runs with ``check=False`` and a
    `SamplingPlan` decided on the host (part of the key: greedy and sampled batches are
    different graphs).
Prefill and mixed steps run eagerly (the ModelRunner's path); so do batches past the largest bucket.
Outputs (hidden states, logits, result) are the graph's static tensors: valid until the next step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from specdec.models.attention import AttnMetadata
from specdec.verifiers import DraftTree, SamplingPlan

from . import ragged
from .model_runner import StepInputs, StepOutput

NODE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then multiples of 8 up to 32, then of 16: padding stays under ~1/3."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b = b * 2 if b < 8 else b + (8 if b < 32 else 16)
    return tuple(out) + (max_batch,)


def bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= n), None)


class _Layout:
    """Where each field of a (B_g, T_g) step sits in the int64 / int32 / float32 buffers."""

    def __init__(self, bg: int, tg: int, table_width: int):
        ng = bg * tg
        self.i64 = _offsets([("ids", ng), ("pos", ng), ("slots", ng), ("bits", ng), ("tok", ng),
                             ("par", ng), ("kind", ng), ("rows", ng), ("num", bg), ("top_k", bg)])
        self.i32 = _offsets([("indptr", bg + 1), ("prefix", bg), ("tables", bg * table_width)])
        self.f32 = _offsets([("temp", bg), ("top_p", bg), ("unif", bg * (tg + 1))])
        self.sizes = tuple(max(e for _, e in d.values()) for d in (self.i64, self.i32, self.f32))


def _offsets(fields: list[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    out, at = {}, 0
    for name, n in fields:
        out[name] = (at, at + n)
        at += n
    return out


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph | None  # None: `body` runs eagerly on the staged buffers (tests)
    hidden: Tensor  # [N_g, H]
    captured: dict[int, Tensor]  # layer -> [N_g, H]
    logits: Tensor  # [B_g, T_g, V]
    result: object  # VerifyResult of [B_g] rows
    tree: DraftTree
    meta: AttnMetadata  # holds the attention plan, whose workspace the graph writes: keep it alive
    body: object = None

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        out, self.logits, self.result, self.tree = self.body()
        self.hidden, self.captured = out.hidden, out.captured


class StepGraphs:
    """Captures and replays decode/verify steps; `run` returns None when a step is not eligible."""

    def __init__(self, runner, verifier, max_batch: int, max_model_len: int, vocab_size: int,
                 capture: bool = True):
        """``capture=False`` runs each step's body eagerly on the staged buffers instead of
        replaying a graph: the bucketing, staging and padding logic, testable on the CPU."""
        self.runner, self.verifier, self.capture = runner, verifier, capture
        self.device, self.vocab = runner.device, vocab_size
        self.max_model_len = max_model_len
        self.batch_buckets = batch_buckets(max_batch)
        self.table_width = ragged.table_width(max_model_len + NODE_BUCKETS[-1], runner.block_size)
        big = _Layout(self.batch_buckets[-1], NODE_BUCKETS[-1], self.table_width).sizes
        pin = self.device.type == "cuda"
        self.host = [torch.zeros(n, dtype=dt, pin_memory=pin) for n, dt in
                     zip(big, (torch.long, torch.int32, torch.float32))]
        self.host_np = [h.numpy() for h in self.host]
        self.dev = [torch.zeros(n, dtype=dt, device=self.device) for n, dt in
                    zip(big, (torch.long, torch.int32, torch.float32))]
        self.probs: Tensor | None = None  # [max B, 64, V] draft probabilities, made on first use
        self.graphs: dict[tuple, _Graph] = {}
        self.layouts: dict[tuple[int, int], _Layout] = {}
        self.pool = None
        self.replays = 0

    # ---- eligibility and staging ------------------------------------------------------------
    def _padding(self, lay: _Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fill the bucket's staging with padding: no tokens stored (slot -1), root-only trees,
        greedy rows (top_p 1); returns the three host arrays to write the real rows into."""
        i64, i32, f32 = self.host_np
        i64[: lay.sizes[0]] = 0
        i64[slice(*lay.i64["slots"])] = -1
        i64[slice(*lay.i64["par"])] = -1
        i64[slice(*lay.i64["num"])] = 1
        i32[: lay.sizes[1]] = 0
        f32[: lay.sizes[2]] = 0
        f32[slice(*lay.f32["top_p"])] = 1
        return i64, i32, f32

    def _upload(self, lay: _Layout) -> None:
        """One host-to-device copy per dtype of the bucket's staging."""
        for host, dev, size in zip(self.host, self.dev, lay.sizes):
            dev[:size].copy_(host[:size], non_blocking=True)

    def key(self, inputs: StepInputs) -> tuple[int, int] | None:
        """(B_g, T_g) for a pure decode step that fits, else None."""
        host = inputs.host
        if any(host.is_prefill) or len(host.logit_rows) != len(host.is_prefill):
            return None
        bg, tg = bucket(len(host.is_prefill), self.batch_buckets), bucket(inputs.width, NODE_BUCKETS)
        if bg is None or tg is None or max(len(t) for t in host.tables) > self.table_width:
            return None
        return bg, tg

    def _stage(self, inputs: StepInputs, lay: _Layout, bg: int, tg: int, temp, top_p, top_k,
               uniforms) -> SamplingPlan:
        h = inputs.host
        b = len(h.is_prefill)
        i64, i32, f32 = self._padding(lay)
        put = lambda arr, lay_d, name, values, at=0: arr.__setitem__(  # noqa: E731
            slice(lay_d[name][0] + at, lay_d[name][0] + at + len(values)), values)
        for name, values in (("ids", h.ids), ("pos", h.pos), ("slots", h.slots), ("bits", h.bits)):
            put(i64, lay.i64, name, values)
        if h.tree_arrays is not None:  # [B, T] blocks (columns past the widest tree are padding)
            for name, arr in zip(("tok", "par", "kind", "rows"), h.tree_arrays):
                t = min(arr.shape[1], tg)
                i64[slice(*lay.i64[name])].reshape(bg, tg)[:b, :t] = arr[:, :t]
        else:
            for r, ((tok, par, kind), rows) in enumerate(zip(h.tree_rows, h.logit_rows)):
                for name, values in (("tok", tok), ("par", par), ("kind", kind), ("rows", rows)):
                    put(i64, lay.i64, name, values, r * tg)
        put(i64, lay.i64, "num", [len(t[0]) for t in h.tree_rows])
        put(i64, lay.i64, "top_k", top_k)
        indptr = np.zeros(bg + 1, dtype=np.int32)
        np.cumsum([len(r) for r in h.logit_rows], out=indptr[1:b + 1])
        indptr[b + 1:] = indptr[b]
        put(i32, lay.i32, "indptr", indptr)
        put(i32, lay.i32, "prefix", h.prefix_lens)
        t0 = lay.i32["tables"][0]
        for r, table in enumerate(h.tables):
            i32[t0 + r * self.table_width: t0 + r * self.table_width + len(table)] = table
        put(f32, lay.f32, "temp", temp)
        put(f32, lay.f32, "top_p", top_p)
        u0 = lay.f32["unif"][0]
        f32[u0:u0 + b * (tg + 1)].reshape(b, tg + 1)[:, : min(tg + 1, uniforms.shape[1])] = \
            uniforms[:, : tg + 1]
        self._upload(lay)
        if inputs.draft_probs is not None:
            t = inputs.draft_probs.shape[1]
            self.probs[:b, :t].copy_(inputs.draft_probs[:b])  # a graphed drafter's tree has padding rows
            self.probs[:b, t:tg].zero_()
        # the plan of the staged rows, padding (greedy) included
        return SamplingPlan.of(*(f[slice(*lay_d[name])] for f, lay_d, name in (
            (f32, lay.f32, "temp"), (f32, lay.f32, "top_p"), (i64, lay.i64, "top_k"))))

    def _layout(self, bg: int, tg: int) -> _Layout:
        if (bg, tg) not in self.layouts:
            self.layouts[(bg, tg)] = _Layout(bg, tg, self.table_width)
        return self.layouts[(bg, tg)]

    @torch.inference_mode()
    def warm_up(self, max_nodes: int) -> int:
        """Capture the greedy graph of every (batch, node) bucket up to ``max_nodes`` now, as
        vLLM does at start-up, so that no step pays a capture or a kernel compilation later.
        Dummy inputs: sequences of ``T_g`` new tokens with nothing cached, storing nothing.
        Returns the number of graphs captured."""
        plan = SamplingPlan(all_greedy=True, any_greedy=True, filter_cap=0)
        top = bucket(max_nodes, NODE_BUCKETS) or NODE_BUCKETS[-1]
        count = 0
        for bg in self.batch_buckets:
            for tg in (t for t in NODE_BUCKETS if t <= top):
                if (bg, tg, plan, False) in self.graphs:
                    continue
                lay = self._layout(bg, tg)
                _, i32, _ = self._padding(lay)
                a, _ = lay.i32["indptr"]
                i32[a:a + bg + 1] = np.arange(bg + 1, dtype=np.int32) * tg
                self._upload(lay)
                self.graphs[(bg, tg, plan, False)] = self._capture(lay, bg, tg, plan, False)
                count += 1
        torch.cuda.synchronize(self.device)
        # No gc.freeze() here (vLLM freezes after capturing): a frozen engine is never collected,
        # and processes that build several engines (benchmarks, sweeps, tests) ran out of GPU
        # memory. The step-time tail it was meant to cut came from Triton compiling the eager
        # prefill's kernels per prompt-length class (bench_e2e now prefills every prompt in its
        # warm-up: mean step 2.14 ms for a 1.95 ms median, BENCHMARKS.md).
        return count

    # ---- the step ---------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, inputs: StepInputs, temp: np.ndarray, top_p: np.ndarray, top_k: np.ndarray,
            uniforms: np.ndarray) -> tuple[StepOutput, object] | None:
        """Replay (capturing first if new) the step's graph; host (numpy) sampling parameters
        ``[B]`` and ``uniforms [B, U]``. None: not eligible, run it eagerly."""
        shape = self.key(inputs)
        if shape is None:
            return None
        bg, tg = shape
        lay = self._layout(bg, tg)
        has_probs = inputs.draft_probs is not None
        if has_probs and (self.probs is None or self.probs.shape[-1] != inputs.draft_probs.shape[-1]):
            self.probs = torch.zeros(self.batch_buckets[-1], NODE_BUCKETS[-1],
                                     inputs.draft_probs.shape[-1], device=self.device)
        plan = self._stage(inputs, lay, bg, tg, temp, top_p, top_k, uniforms)
        key = (bg, tg, plan, has_probs)
        g = self.graphs.get(key)
        if g is None:
            g = self.graphs[key] = self._capture(lay, bg, tg, plan, has_probs)
        g.replay()
        self.replays += 1
        n = len(inputs.host.ids)
        out = StepOutput(g.hidden[:n], {i: c[:n] for i, c in g.captured.items()}, g.logits)
        inputs.tree = g.tree
        return out, g.result

    def _views(self, lay: _Layout, bg: int, tg: int):
        i64, i32, f32 = self.dev
        v = {k: i64[a:b] for k, (a, b) in lay.i64.items()}
        v.update({k: i32[a:b] for k, (a, b) in lay.i32.items()})
        v.update({k: f32[a:b] for k, (a, b) in lay.f32.items()})
        v["tables"] = v["tables"].view(bg, self.table_width)
        for k in ("tok", "par", "kind", "rows"):
            v[k] = v[k].view(bg, tg)
        v["unif"] = v["unif"].view(bg, tg + 1)
        return v

    def _body(self, v: dict, bg: int, tg: int, plan: SamplingPlan, has_probs: bool, meta: AttnMetadata):
        runner, model = self.runner, self.runner.model
        out = model(v["ids"], v["pos"], meta, runner.k_cache, runner.v_cache,
                    capture_layers=runner.capture_layers)
        logits = model.compute_logits(out.hidden[v["rows"].reshape(-1)]).view(bg, tg, -1)
        probs = self.probs[:bg, :tg] if has_probs else None
        tree = DraftTree(v["tok"], v["par"], v["num"], kind=v["kind"].to(torch.int8),
                         draft_probs=probs, validate=False)
        result = self.verifier.verify(tree, logits, v["temp"], v["top_p"], v["top_k"], v["unif"],
                                      plan=plan, check=False)
        return out, logits, result, tree

    def _capture(self, lay: _Layout, bg: int, tg: int, plan: SamplingPlan, has_probs: bool) -> _Graph:
        v = self._views(lay, bg, tg)
        meta = AttnMetadata(v["indptr"], v["prefix"], v["tables"], v["slots"],
                            tree_mask=v["bits"] if tg > 1 else None, use_tree_mask=None,
                            max_q_len=tg, max_kv_len=self.max_model_len + tg)
        if not self.capture:  # a fresh metadata per call: the CPU attention plan reads the values
            body = lambda: self._body(v, bg, tg, plan, has_probs, AttnMetadata(  # noqa: E731
                v["indptr"], v["prefix"], v["tables"], v["slots"],
                tree_mask=v["bits"] if tg > 1 else None))
            return _Graph(None, None, {}, None, None, None, meta, body)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up: compiles kernels, allocates the plan's workspace
            for _ in range(2):
                self._body(v, bg, tg, plan, has_probs, meta)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out, logits, result, tree = self._body(v, bg, tg, plan, has_probs, meta)
        except RuntimeError as e:
            raise RuntimeError(
                f"capturing the decode/verify step (batch {bg}, {tg} nodes) in a CUDA graph failed: "
                f"the model or the verifier ({type(self.verifier).__name__}) did something a graph "
                f"cannot hold, such as reading a value back to the host. Make its verify(..., "
                f"check=False) sync-free, or run with engine.cuda_graphs=false.\n{e}") from e
        return _Graph(graph, out.hidden, out.captured, logits, result, tree, meta)
