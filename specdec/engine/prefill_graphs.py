"""CUDA graphs of the prefill step: the target forward over prefill chunks, the logits of each
chunk's last token and the sampling of the first token, replayed as one graph per (sequence
bucket, token bucket, sampling plan). On with CUDA graphs (``engine.prefill_graphs=auto``): the
greedy graphs are captured by `warm_up`, others on first use.

Why: eagerly, a prefill step launches the target's ~350 small kernels one by one from Python;
on an H200 a SmolLM2-135M prefill step took 17-38 ms whatever it held (one prompt or sixteen),
against 1.7-2.9 ms replayed from this graph (experiments/profile_prefill.py), and under
continuous batching each newly admitted prompt pays one (BENCHMARKS.md, 2026-12-02, third
session). The decode graphs (`cuda_graphs.StepGraphs`) cover trees only; this covers steps made
of prefill chunks only (``engine.split_mixed_steps`` splits mixed steps into those two kinds).

Layout: a step of B sequences with N new tokens in all runs in the bucket (B_g >= B, N_g >= N).
Rows are packed as the eager step packs them (sequence b's chunk at rows offsets[b] ..
offsets[b + 1] - 1), so drafters read the same hidden rows; rows past N are padding that store
nothing (slot -1), and padding sequences have no tokens. Host inputs go up in one host-to-device
copy per dtype; the attention plan comes from upper bounds (N_g new tokens, max_model_len). Every
one of the B_g rows samples from its chunk's last token (a root-only tree through the verifier,
``check=False``); rows whose chunk does not end the prompt ignore theirs. The step's one read is
the sampled token of each row. Outputs are the graph's static tensors: valid until its next replay.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from specdec.models.attention import AttnMetadata
from specdec.verifiers import DraftTree, SamplingPlan

from . import ragged
from .cuda_graphs import _Graph, _offsets, batch_buckets, bucket, capture_graph
from .model_runner import StepInputs, StepOutput, StepRead

TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


class _Layout:
    """Where each host-staged field of a (B_g, N_g) prefill sits in the int64 / int32 / float32
    staging buffers."""

    def __init__(self, bg: int, ng: int, table_width: int):
        self.i64 = _offsets([("ids", ng), ("pos", ng), ("slots", ng), ("last", bg), ("top_k", bg)])
        self.i32 = _offsets([("indptr", bg + 1), ("prefix", bg), ("tables", bg * table_width)])
        self.f32 = _offsets([("temp", bg), ("top_p", bg), ("unif", bg * 2)])  # a 1-node tree's 2 draws
        self.sizes = tuple(max(e for _, e in d.values()) for d in (self.i64, self.i32, self.f32))


@dataclass
class GraphedPrefill:
    """A replayed prefill step: inputs and outputs (static tensors) and `read`, its one transfer."""
    inputs: StepInputs
    out: StepOutput
    result: object
    samples: list[bool]  # [B] does row b's chunk end its prompt

    def read(self) -> StepRead:
        tokens = self.result.bonus_token[: len(self.samples)].tolist()
        return StepRead([[0] for _ in tokens], [[t] for t in tokens], [0] * len(tokens), [1] * len(tokens))


class PrefillGraphs:
    """Captures and replays prefill steps; `run` returns None when a step is not eligible."""

    def __init__(self, runner, verifier, max_batch: int, max_model_len: int, max_tokens: int,
                 capture: bool = True):
        """``max_tokens``: the most new tokens of one step (the scheduler's budget); steps above
        the largest token bucket run eagerly. ``capture=False`` runs each step's body eagerly
        on the staged buffers: the bucketing, staging and padding, testable on the CPU."""
        self.runner, self.verifier, self.capture = runner, verifier, capture
        self.device, self.max_model_len = runner.device, max_model_len
        self.batch_buckets = batch_buckets(max_batch)
        # the buckets below the step's token budget, then the budget itself (at most 2048)
        self.token_buckets = tuple(sorted({t for t in TOKEN_BUCKETS if t < max_tokens}
                                          | {min(max_tokens, TOKEN_BUCKETS[-1])}))
        self.table_width = ragged.table_width(max_model_len, runner.block_size)
        big = _Layout(self.batch_buckets[-1], self.token_buckets[-1], self.table_width).sizes
        pin = self.device.type == "cuda"
        dtypes = (torch.long, torch.int32, torch.float32)
        self.host = [torch.zeros(n, dtype=dt, pin_memory=pin) for n, dt in zip(big, dtypes)]
        self.host_np = [h.numpy() for h in self.host]
        self.dev = [torch.zeros(n, dtype=dt, device=self.device) for n, dt in zip(big, dtypes)]
        self.graphs: dict[tuple, _Graph] = {}
        self.layouts: dict[tuple[int, int], _Layout] = {}
        self.pool = None
        self.replays = 0

    def key(self, batch) -> tuple[int, int] | None:
        """(B_g, N_g) for a step of prefill chunks that fits, else None."""
        if not batch or not all(item.is_prefill for item in batch):
            return None
        bg = bucket(len(batch), self.batch_buckets)
        ng = bucket(sum(item.num_new for item in batch), self.token_buckets)
        if bg is None or ng is None or max(len(i.seq.block_table) for i in batch) > self.table_width:
            return None
        return bg, ng

    def _layout(self, bg: int, ng: int) -> _Layout:
        if (bg, ng) not in self.layouts:
            self.layouts[(bg, ng)] = _Layout(bg, ng, self.table_width)
        return self.layouts[(bg, ng)]

    def _stage(self, batch, lay: _Layout, bg: int, temp, top_p, top_k, uniforms) -> tuple[SamplingPlan, list[int]]:
        """Pack the chunks as the eager step does (padding: no tokens, slot -1, greedy rows) and
        upload; returns the sampling plan of the staged rows and the row offsets."""
        i64, i32, f32 = self.host_np
        i64[: lay.sizes[0]] = 0
        i32[: lay.sizes[1]] = 0
        f32[: lay.sizes[2]] = 0
        view = lambda arr, d, name: arr[slice(*d[name])]  # noqa: E731
        view(i64, lay.i64, "slots")[:] = -1
        view(f32, lay.f32, "top_p")[:] = 1
        ids, pos, slots = (view(i64, lay.i64, k) for k in ("ids", "pos", "slots"))
        tables = view(i32, lay.i32, "tables").reshape(bg, self.table_width)
        offsets, bs = [0], self.runner.block_size
        for r, item in enumerate(batch):
            seq, start, n = item.seq, item.seq.num_cached, item.num_new
            at = offsets[-1]
            ids[at:at + n] = seq.tokens[start:start + n]
            pos[at:at + n] = np.arange(start, start + n)
            slots[at:at + n] = ragged.slots(seq.block_table, start, n, bs)
            tables[r, : len(seq.block_table)] = seq.block_table
            offsets.append(at + n)
        b = len(batch)
        view(i64, lay.i64, "last")[:b] = np.asarray(offsets[1:]) - 1
        view(i32, lay.i32, "indptr")[1: b + 1] = offsets[1:]
        view(i32, lay.i32, "indptr")[b + 1:] = offsets[-1]
        view(i32, lay.i32, "prefix")[:b] = [item.seq.num_cached for item in batch]
        view(i64, lay.i64, "top_k")[:b] = top_k
        view(f32, lay.f32, "temp")[:b] = temp
        view(f32, lay.f32, "top_p")[:b] = top_p
        u = min(2, uniforms.shape[1])
        view(f32, lay.f32, "unif").reshape(bg, 2)[:b, :u] = uniforms[:, :u]
        for host, dev, size in zip(self.host, self.dev, lay.sizes):
            dev[:size].copy_(host[:size], non_blocking=True)
        plan = SamplingPlan.of(view(f32, lay.f32, "temp"), view(f32, lay.f32, "top_p"),
                               view(i64, lay.i64, "top_k"))
        return plan, offsets

    def _views(self, lay: _Layout, bg: int) -> dict[str, Tensor]:
        i64, i32, f32 = self.dev
        v = {k: i64[a:b] for k, (a, b) in lay.i64.items()}
        v.update({k: i32[a:b] for k, (a, b) in lay.i32.items()})
        v.update({k: f32[a:b] for k, (a, b) in lay.f32.items()})
        v["tables"] = v["tables"].view(bg, self.table_width)
        v["unif"] = v["unif"].view(bg, 2)
        return v

    def _body(self, v: dict, bg: int, plan: SamplingPlan, meta_of):
        """The step on static tensors: forward, the last rows' logits, the first tokens (the
        outputs of `cuda_graphs._Graph`; no readout: `GraphedPrefill.read` reads the result)."""
        model, runner = self.runner.model, self.runner
        out = model(v["ids"], v["pos"], meta_of(), runner.k_cache, runner.v_cache,
                    capture_layers=runner.capture_layers)
        logits = model.compute_logits(out.hidden[v["last"]]).view(bg, 1, -1)  # [B_g, 1, V]
        roots = v["ids"][v["last"]][:, None]  # [B_g, 1]
        tree = DraftTree(roots, torch.full_like(roots, -1), torch.ones_like(v["last"]),
                         kind=torch.zeros_like(roots, dtype=torch.int8), validate=False)
        result = self.verifier.verify(tree, logits, v["temp"], v["top_p"], v["top_k"], v["unif"],
                                      plan=plan, check=False)
        return out, logits, result, tree, None

    def _capture(self, lay: _Layout, bg: int, ng: int, plan: SamplingPlan) -> _Graph:
        v = self._views(lay, bg)
        make = lambda: AttnMetadata(v["indptr"], v["prefix"], v["tables"], v["slots"],  # noqa: E731
                                    max_q_len=ng, max_kv_len=self.max_model_len)
        meta = make()
        if not self.capture:  # a fresh metadata per call: the CPU attention plan reads the values
            return _Graph(None, None, {}, None, None, None, None, meta, lambda: self._body(v, bg, plan, make))
        what = f"the prefill step ({bg} sequences, {ng} tokens)"
        graph, self.pool, (out, logits, result, tree, _) = capture_graph(
            self.device, self.pool, lambda: self._body(v, bg, plan, lambda: meta), what, self.verifier)
        return _Graph(graph, out.hidden, out.captured, logits, result, tree, None, meta)

    @torch.inference_mode()
    def warm_up(self) -> int:
        """Capture the greedy graph of every (B_g, N_g) bucket that a step can reach (B_g <= N_g:
        every sequence brings a token) now, on padding only (no tokens, slot -1: nothing is
        stored), so that no prefill step pays a capture or a Triton compilation later (one such
        step took 1.7 s on the H200). Returns the number of graphs captured."""
        none_i, none_f = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        before = len(self.graphs)
        for ng in self.token_buckets:
            for bg in (b for b in self.batch_buckets if b <= ng):
                lay = self._layout(bg, ng)
                # the plan of greedy rows, as a step stages it
                plan, _ = self._stage([], lay, bg, none_f, none_f, none_i, np.zeros((0, 2), np.float32))
                self._graph(lay, bg, ng, plan)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return len(self.graphs) - before

    def _graph(self, lay: _Layout, bg: int, ng: int, plan: SamplingPlan) -> _Graph:
        """The graph of (B_g, N_g, plan), captured on the staged buffers if new."""
        key = (bg, ng, plan)
        if key not in self.graphs:
            self.graphs[key] = self._capture(lay, bg, ng, plan)
        return self.graphs[key]

    @torch.inference_mode()
    def run(self, batch, temp: np.ndarray, top_p: np.ndarray, top_k: np.ndarray,
            uniforms: np.ndarray) -> GraphedPrefill | None:
        """Replay (capturing first if new) the graph of a prefill step: the scheduled ``batch``
        and host (numpy) sampling rows of every item ``[B]``, ``uniforms [B, U]``. None: not
        eligible, run it eagerly."""
        shape = self.key(batch)
        if shape is None:
            return None
        bg, ng = shape
        lay = self._layout(bg, ng)
        plan, offsets = self._stage(batch, lay, bg, temp, top_p, top_k, uniforms)
        g = self._graph(lay, bg, ng, plan)
        g.replay()
        self.replays += 1
        samples = [item.samples for item in batch]
        n = offsets[-1]
        inputs = StepInputs(None, None, None, offsets, [r if s else -1 for r, s in enumerate(samples)],
                            None, g.tree, None, None, 1)
        out = StepOutput(g.hidden[:n], {i: c[:n] for i, c in g.captured.items()}, g.logits)
        return GraphedPrefill(inputs, out, g.result, samples)
