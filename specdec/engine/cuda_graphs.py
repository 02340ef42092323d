"""CUDA graphs of the decode/verify step: target forward, logits of the tree nodes and the
verifier, replayed as one graph per (batch bucket, node bucket, sampling plan).

A small model's step is host-bound: eagerly, SmolLM2-135M issues ~350 launches plus the verifier's
dozens, each a few microseconds of Python and driver time, while the GPU work is ~1 ms. Captured
once per shape bucket (as vLLM and SGLang capture their decode steps), a step costs one replay.

What a graph needs, and how it gets it:
  * fixed shapes: a batch of B sequences with trees of at most T nodes runs in the bucket
    (B_g >= B, T_g >= T) with N_g = B_g * T_g token rows, T_g per sequence: node i of sequence
    b is row b * T_g + i. Rows past a tree's nodes and padding sequences store nothing (slot -1)
    and see only themselves;
  * fixed addresses: host inputs (cached lengths, node budgets, block tables, sampling
    parameters) live in static device buffers, filled each step by ONE host-to-device copy per
    dtype from pinned staging memory, laid out per bucket (`_Layout`);
  * no host read, before or inside: the draft tree is taken from the DEVICE (the drafter's
    tensors, copied into static buffers), and the graph derives the target's inputs from it
    (ids, positions from the tree depths, cache slots from the block tables, ancestor masks), so
    the host never waits for the drafter: it stages while the drafter's kernels run. The graph
    also commits (slides the accepted nodes' K/V into place, `accepted_moves`), so the step's
    one read is the verification's result (`GraphedStep.read`), tree facts included;
  * the attention plan comes from upper bounds (T_g, max_model_len), the tree is built with
    ``validate=False`` and the verifier runs with ``check=False`` and a `SamplingPlan` decided
    on the host (part of the key: greedy and sampled batches are different graphs).
A tree that breaks its budget cannot write past its sequence's blocks (nodes past the budget are
not stored); the read-back then raises, naming the request.
Steps with prefill chunks run eagerly (the ModelRunner's path), unless ``engine.prefill_graphs``
replays them (prefill_graphs.py; ``engine.split_mixed_steps`` first splits a mixed step into its
trees, graphed here, and its chunks); so do batches past the largest bucket.
Outputs (hidden states, logits, result) are the graph's static tensors: valid until the next step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from specdec.kernels import compact_kv
from specdec.models.attention import AttnMetadata
from specdec.verifiers import DraftTree, SamplingPlan

from . import ragged
from .model_runner import StepInputs, StepOutput, StepRead, accepted_moves

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
    """Where each host-staged field of a (B_g, T_g) step sits in the int64 / int32 / float32
    buffers (the tree itself comes from the device)."""

    def __init__(self, bg: int, tg: int, table_width: int):
        self.i64 = _offsets([("budget", bg), ("top_k", bg)])
        self.i32 = _offsets([("prefix", bg), ("tables", bg * table_width)])
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
    readout: Tensor | None  # [B_g, 2 T_g + 4] int64: what the host reads after a decode step
    meta: AttnMetadata  # holds the attention plan, whose workspace the graph writes: keep it alive
    body: object = None

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        out, self.logits, self.result, self.tree, self.readout = self.body()
        self.hidden, self.captured = out.hidden, out.captured


@dataclass
class GraphedStep:
    """A replayed step: its inputs and outputs (the graph's static tensors), and `read`, the
    step's one device-to-host transfer."""
    inputs: StepInputs
    out: StepOutput
    result: object  # VerifyResult of the real rows' bucket (rows past B are padding)
    readout: Tensor  # [B_g, 2 T_g + 4]
    seqs: list
    budgets: list[int]  # [B] the scheduler's node budget per sequence

    def read(self) -> StepRead:
        """Accepted paths, emitted tokens and tree facts, in one transfer; raises when a
        drafter's tree broke its contract (its root is not the last token, or it holds more
        nodes than its budget: those nodes were not stored)."""
        tg = self.inputs.width
        rows = self.readout[: len(self.seqs)].tolist()
        read = StepRead([], [], [], [])
        for seq, budget, row in zip(self.seqs, self.budgets, rows):
            num_acc, bonus = row[tg], row[tg + 1]
            num, root, depth = row[2 * tg + 1: 2 * tg + 4]
            if root != seq.tokens[-1] or not 1 <= num <= budget:
                raise AssertionError(f"drafter tree for request {seq.request_id} has root {root} / "
                                     f"{num} nodes; expected root {seq.tokens[-1]} and 1 to "
                                     f"{budget} nodes")
            read.accepted.append(row[: num_acc + 1])
            read.tokens.append(row[tg + 2: tg + 2 + num_acc] + [bonus])
            read.depths.append(depth)
            read.num_nodes.append(num)
        return read


def capture_graph(device, pool, body, what: str, verifier):
    """Run ``body`` twice on a side stream (kernel compilation, the attention plan's workspace),
    then capture one call of it in a CUDA graph on ``pool`` (a new pool when None). Returns the
    graph, the pool and the captured call's outputs (the static tensors a replay rewrites)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            body()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()
    try:
        with torch.cuda.graph(graph, pool=pool):
            outputs = body()
    except RuntimeError as e:
        raise RuntimeError(
            f"capturing {what} in a CUDA graph failed: the model or the verifier "
            f"({type(verifier).__name__}) did something a graph cannot hold, such as reading a value "
            f"back to the host. Make its verify(..., check=False) sync-free, or run with "
            f"engine.cuda_graphs=false.\n{e}") from e
    return graph, pool, outputs


class StepGraphs:
    """Captures and replays decode steps; `run` returns None when a step is not eligible."""

    def __init__(self, runner, verifier, max_batch: int, max_model_len: int, vocab_size: int,
                 capture: bool = True):
        """``capture=False`` runs each step's body eagerly on the staged buffers instead of
        replaying a graph: the bucketing, staging and padding logic, testable on the CPU."""
        self.runner, self.verifier, self.capture = runner, verifier, capture
        self.device, self.vocab = runner.device, vocab_size
        self.max_model_len = max_model_len
        self.batch_buckets = batch_buckets(max_batch)
        self.table_width = ragged.table_width(max_model_len + NODE_BUCKETS[-1], runner.block_size)
        mb, mt = self.batch_buckets[-1], NODE_BUCKETS[-1]
        big = _Layout(mb, mt, self.table_width).sizes
        pin = self.device.type == "cuda"
        self.host = [torch.zeros(n, dtype=dt, pin_memory=pin) for n, dt in
                     zip(big, (torch.long, torch.int32, torch.float32))]
        self.host_np = [h.numpy() for h in self.host]
        self.dev = [torch.zeros(n, dtype=dt, device=self.device) for n, dt in
                    zip(big, (torch.long, torch.int32, torch.float32))]
        dev = self.device
        # the drafter's tree, copied device to device each step: [max B_g, 64] / [max B_g]
        self.tree_in = {"tok": torch.zeros(mb, mt, dtype=torch.long, device=dev),
                        "par": torch.full((mb, mt), -1, dtype=torch.long, device=dev),
                        "kind": torch.zeros(mb, mt, dtype=torch.int8, device=dev),
                        "num": torch.ones(mb, dtype=torch.long, device=dev)}
        self.node = torch.arange(mt, device=dev)  # [64]
        self.own_bit = torch.ones((), dtype=torch.long, device=dev) << self.node  # [64]
        self.probs: Tensor | None = None  # [max B, 64, V] draft probabilities, made on first use
        self.graphs: dict[tuple, _Graph] = {}
        self.layouts: dict[tuple[int, int], _Layout] = {}
        self.pool = None
        self.replays = 0

    # ---- eligibility and staging ------------------------------------------------------------
    def _padding(self, lay: _Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fill the bucket's staging with padding (no nodes, nothing cached, greedy rows with
        top_p 1); returns the three host arrays to write the real rows into."""
        i64, i32, f32 = self.host_np
        i64[: lay.sizes[0]] = 0
        i32[: lay.sizes[1]] = 0
        f32[: lay.sizes[2]] = 0
        f32[slice(*lay.f32["top_p"])] = 1
        return i64, i32, f32

    def _upload(self, lay: _Layout) -> None:
        """One host-to-device copy per dtype of the bucket's staging."""
        for host, dev, size in zip(self.host, self.dev, lay.sizes):
            dev[:size].copy_(host[:size], non_blocking=True)

    def key(self, batch, tree: DraftTree) -> tuple[int, int] | None:
        """(B_g, T_g) for a decode step that fits, else None."""
        bg, tg = bucket(len(batch), self.batch_buckets), bucket(tree.max_nodes, NODE_BUCKETS)
        if (bg is None or tg is None or any(item.is_prefill for item in batch)
                or tree.batch_size < len(batch)
                or max(len(item.seq.block_table) for item in batch) > self.table_width):
            return None
        return bg, tg

    def _stage(self, batch, tree: DraftTree, lay: _Layout, bg: int, tg: int, temp, top_p, top_k,
               uniforms) -> tuple[SamplingPlan, list[int]]:
        """Host fields through the pinned staging; the tree device to device. Returns the plan
        and the node budget of each sequence."""
        b, t = len(batch), tree.max_nodes
        i64, i32, f32 = self._padding(lay)
        view = lambda arr, lay_d, name: arr[slice(*lay_d[name])]  # noqa: E731
        budgets = [item.num_new for item in batch]
        view(i64, lay.i64, "budget")[:b] = np.minimum(budgets, t)
        view(i64, lay.i64, "top_k")[:b] = top_k
        view(i32, lay.i32, "prefix")[:b] = [item.seq.num_cached for item in batch]
        tables = view(i32, lay.i32, "tables").reshape(bg, self.table_width)
        for r, item in enumerate(batch):
            tables[r, : len(item.seq.block_table)] = item.seq.block_table
        view(f32, lay.f32, "temp")[:b] = temp
        view(f32, lay.f32, "top_p")[:b] = top_p
        u = min(tg + 1, uniforms.shape[1])
        view(f32, lay.f32, "unif").reshape(bg, tg + 1)[:b, :u] = uniforms[:, :u]
        self._upload(lay)
        # columns past t and rows past b hold stale values: the graph masks them by the budgets
        self.tree_in["tok"][:b, :t].copy_(tree.tokens[:b], non_blocking=True)
        self.tree_in["par"][:b, :t].copy_(tree.parents[:b], non_blocking=True)
        self.tree_in["kind"][:b, :t].copy_(tree.kind[:b], non_blocking=True)
        self.tree_in["num"][:b].copy_(tree.num_nodes[:b], non_blocking=True)
        if tree.draft_probs is not None:
            self.probs[:b, :t].copy_(tree.draft_probs[:b])  # a graphed drafter's tree has padding rows
            self.probs[:b, t:tg].zero_()
        # the plan of the staged rows, padding (greedy) included
        plan = SamplingPlan.of(view(f32, lay.f32, "temp"), view(f32, lay.f32, "top_p"),
                               view(i64, lay.i64, "top_k"))
        return plan, budgets

    def _layout(self, bg: int, tg: int) -> _Layout:
        if (bg, tg) not in self.layouts:
            self.layouts[(bg, tg)] = _Layout(bg, tg, self.table_width)
        return self.layouts[(bg, tg)]

    @torch.inference_mode()
    def warm_up(self, max_nodes: int) -> int:
        """Capture the greedy graph of every (batch, node) bucket up to ``max_nodes`` now, as
        vLLM does at start-up, so that no step pays a capture or a kernel compilation later.
        Dummy inputs: padding sequences (no nodes, storing nothing). Returns the number of
        graphs captured."""
        plan = SamplingPlan(all_greedy=True, any_greedy=True, filter_cap=0)
        top = bucket(max_nodes, NODE_BUCKETS) or NODE_BUCKETS[-1]
        count = 0
        for bg in self.batch_buckets:
            for tg in (t for t in NODE_BUCKETS if t <= top):
                if (bg, tg, plan, False) in self.graphs:
                    continue
                lay = self._layout(bg, tg)
                self._padding(lay)
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
    def run(self, batch, tree: DraftTree, temp: np.ndarray, top_p: np.ndarray, top_k: np.ndarray,
            uniforms: np.ndarray) -> GraphedStep | None:
        """Replay (capturing first if new) the graph of a decode step: the scheduled ``batch``,
        the drafter's ``tree`` (its first ``len(batch)`` rows, on the device), host (numpy)
        sampling parameters ``[B]`` and ``uniforms [B, U]``. Nothing is read from the device.
        None: not eligible, run it eagerly."""
        shape = self.key(batch, tree)
        if shape is None:
            return None
        bg, tg = shape
        lay = self._layout(bg, tg)
        has_probs = tree.draft_probs is not None
        if has_probs and (self.probs is None or self.probs.shape[-1] != tree.draft_probs.shape[-1]):
            self.probs = torch.zeros(self.batch_buckets[-1], NODE_BUCKETS[-1],
                                     tree.draft_probs.shape[-1], device=self.device)
        plan, budgets = self._stage(batch, tree, lay, bg, tg, temp, top_p, top_k, uniforms)
        key = (bg, tg, plan, has_probs)
        g = self.graphs.get(key)
        if g is None:
            g = self.graphs[key] = self._capture(lay, bg, tg, plan, has_probs)
        g.replay()
        self.replays += 1
        b = len(batch)
        n = b * tg
        inputs = StepInputs(None, None, None, list(range(0, n + 1, tg)), list(range(b)), None,
                            g.tree, None, tree.draft_probs, tg)
        out = StepOutput(g.hidden[:n], {i: c[:n] for i, c in g.captured.items()}, g.logits)
        return GraphedStep(inputs, out, g.result, g.readout, [item.seq for item in batch], budgets)

    def _views(self, lay: _Layout, bg: int, tg: int):
        i64, i32, f32 = self.dev
        v = {k: i64[a:b] for k, (a, b) in lay.i64.items()}
        v.update({k: i32[a:b] for k, (a, b) in lay.i32.items()})
        v.update({k: f32[a:b] for k, (a, b) in lay.f32.items()})
        v["tables"] = v["tables"].view(bg, self.table_width)
        v["unif"] = v["unif"].view(bg, tg + 1)
        for k in ("tok", "par", "kind"):
            v[k] = self.tree_in[k][:bg, :tg]
        v["num"] = self.tree_in["num"][:bg]
        ng = bg * tg
        v["slots"] = torch.full((ng,), -1, dtype=torch.long, device=self.device)  # [N_g] written by the body
        v["bits"] = torch.ones(ng, dtype=torch.long, device=self.device)  # [N_g]
        v["indptr"] = torch.arange(0, ng + 1, tg, dtype=torch.int32, device=self.device)  # [B_g + 1]
        return v

    def _body(self, v: dict, bg: int, tg: int, plan: SamplingPlan, has_probs: bool, meta_of):
        """The step on static tensors: the target's inputs derived from the tree on the device,
        forward, logits, verification, and the read-back row of every sequence."""
        runner, model = self.runner, self.runner.model
        bs, node = runner.block_size, self.node[:tg]
        num = torch.minimum(v["num"], v["budget"])  # [B_g] nodes stored and verified
        valid = node < num[:, None]  # [B_g, T_g]
        probs = self.probs[:bg, :tg] if has_probs else None
        tree = DraftTree(v["tok"].masked_fill(~valid, 0), v["par"].masked_fill(~valid, -1),
                         num.clamp(min=1), kind=v["kind"].masked_fill(~valid, 0),
                         draft_probs=probs, validate=False)
        prefix = v["prefix"].long()[:, None]  # [B_g, 1]
        position = prefix + node  # [B_g, T_g] node i is stored at num_cached + i
        slots = v["tables"].gather(1, position // bs).long() * bs + position % bs
        v["slots"].copy_(slots.masked_fill(~valid, -1).reshape(-1))
        if tg > 1:
            v["bits"].copy_(torch.where(valid, tree.ancestor_mask, self.own_bit[:tg]).reshape(-1))
        out = model(tree.tokens.reshape(-1), (prefix + tree.depth).reshape(-1), meta_of(),
                    runner.k_cache, runner.v_cache, capture_layers=runner.capture_layers)
        logits = model.compute_logits(out.hidden).view(bg, tg, -1)
        result = self.verifier.verify(tree, logits, v["temp"], v["top_p"], v["top_k"], v["unif"],
                                      plan=plan, check=False)
        # the commit, in the graph: each accepted node's K/V slides to num_cached + j
        src, dst = accepted_moves(slots, result.accepted_nodes)
        compact_kv(runner.k_cache, runner.v_cache, src, dst)
        depth = tree.depth.amax(1, keepdim=True)  # [B_g, 1] (0 past a tree's nodes)
        readout = torch.cat([result.accepted_nodes, result.num_accepted[:, None],  # [B_g, T_g + 2]
                             result.bonus_token[:, None], result.accepted_tokens,  # + T_g - 1
                             v["num"][:, None], v["tok"][:, :1], depth], 1)  # + 3 (drafter's own)
        return out, logits, result, tree, readout

    def _capture(self, lay: _Layout, bg: int, tg: int, plan: SamplingPlan, has_probs: bool) -> _Graph:
        v = self._views(lay, bg, tg)
        meta = AttnMetadata(v["indptr"], v["prefix"], v["tables"], v["slots"],
                            tree_mask=v["bits"] if tg > 1 else None, use_tree_mask=None,
                            max_q_len=tg, max_kv_len=self.max_model_len + tg)
        if not self.capture:  # a fresh metadata per call: the CPU attention plan reads the values
            fresh = lambda: AttnMetadata(v["indptr"], v["prefix"], v["tables"], v["slots"],  # noqa: E731
                                         tree_mask=v["bits"] if tg > 1 else None)
            body = lambda: self._body(v, bg, tg, plan, has_probs, fresh)  # noqa: E731
            return _Graph(None, None, {}, None, None, None, None, meta, body)
        what = f"the decode/verify step (batch {bg}, {tg} nodes)"
        graph, self.pool, (out, logits, result, tree, readout) = capture_graph(
            self.device, self.pool, lambda: self._body(v, bg, tg, plan, has_probs, lambda: meta),
            what, self.verifier)
        return _Graph(graph, out.hidden, out.captured, logits, result, tree, readout, meta)
