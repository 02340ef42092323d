"""Engine: requests in, tokens out. One `step` is DESIGN.md's step, for every drafter:

    batch  = scheduler.schedule()
    tree   = drafter.propose(decoding sequences)
    out    = runner.forward(batch, tree)          # K/V of every node written to its own slot
    result = verifier.verify(tree, out.logits)    # accepted path + bonus token per sequence
    runner.commit(batch, result)                  # accepted K/V slid into place (in the graph
                                                  # of a graphed step)
    drafter.update(step)
    postprocess(batch, result)                    # append tokens, finish, free blocks

Autoregressive decoding is the drafter ``none`` (a tree of one node): one code path, not two.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence as Seq

import numpy as np
import torch
from tqdm.auto import tqdm

from specdec.drafters.base import StepResult, TargetContext
from specdec.models.llama import fuse_projections
from specdec.verifiers import MAX_NODES, SamplingPlan

from .block_manager import BlockManager
from .config import EngineConfig
from .cuda_graphs import StepGraphs
from .model_runner import ModelRunner, StepInputs, StepRead
from .prefill_graphs import PrefillGraphs
from .scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from .sequence import SamplingParams, Sequence, Status


class RequestError(ValueError):
    """A request the engine cannot serve; the others are unaffected."""


@dataclass
class EngineStats:
    steps: int = 0
    draft_s: float = 0.0  # drafter propose + update
    verify_s: float = 0.0  # target forward + verification + commit
    other_s: float = 0.0  # scheduling and bookkeeping
    mixed_steps: int = 0  # steps with prefill chunks beside decode trees
    step_times: list[float] = field(default_factory=list)


class Engine:
    def __init__(self, model, drafter, verifier, config: EngineConfig | None = None,
                 tokenizer=None, stop_token_ids: Iterable[int] = (), max_model_len: int | None = None):
        self.config = config or EngineConfig()
        self.device = self.config.torch_device()
        self.dtype = self.config.torch_dtype(self.device)
        self.model, self.tokenizer = model.to(self.device, self.dtype).eval(), tokenizer
        self.drafter, self.verifier = drafter, verifier
        self.stop_token_ids = set(stop_token_ids)
        if self.config.max_num_batched_tokens < drafter.max_nodes:
            raise ValueError(f"engine.max_num_batched_tokens ({self.config.max_num_batched_tokens}) "
                             f"must be >= the drafter's tree budget ({drafter.max_nodes} nodes): a "
                             f"draft tree is never cut to fit a step")
        limit = max_model_len or model.config.max_position_embeddings
        self.max_model_len = min(limit, self.config.max_model_len or limit)
        self.blocks = BlockManager(self._num_blocks(drafter), self.config.block_size)
        graphs_on = self.device.type == "cuda" and self.config.cuda_graphs
        graph_batch = min(self.config.max_num_seqs, self.config.max_graph_batch) if graphs_on else 0
        ctx = TargetContext(model=self.model, tokenizer=tokenizer, vocab_size=model.config.vocab_size,
                            device=self.device, dtype=self.dtype, blocks=self.blocks,
                            max_model_len=self.max_model_len, graph_batch=graph_batch)
        drafter.load(ctx)  # may set ctx.capture_layers (target features it needs)
        sched = SchedulerConfig(self.config.max_num_seqs, self.config.max_num_batched_tokens,
                                self.max_model_len, drafter.max_nodes, self.config.admit_count())
        self.scheduler = Scheduler(sched, self.blocks, drafter.kv_demand)
        self.scheduler.on_release = drafter.release
        if self.device.type == "cuda" and hasattr(self.model, "_forward_fused"):
            fuse_projections(self.model)  # fused qkv / gate-up and the Triton layer ops
            # rope from a table: tree nodes sit up to MAX_NODES past the last cached position
            self.model.model.rotary_emb.use_table(self.max_model_len + MAX_NODES, self.device, self.dtype)
        self.runner = ModelRunner(self.model, self.blocks.num_blocks, self.config.block_size,
                                  self.device, self.dtype, ctx.capture_layers)
        self.graphs = self.prefill_graphs = None
        if graph_batch:
            self.graphs = StepGraphs(self.runner, verifier, graph_batch, self.max_model_len,
                                     model.config.vocab_size)
        if graph_batch and self.config.graph_prefills(graphs_on):
            self.prefill_graphs = PrefillGraphs(self.runner, verifier, graph_batch, self.max_model_len,
                                                self.config.max_num_batched_tokens)
        self.split_mixed_steps = self.config.split_mixed(graphs_on)
        self.num_uniforms = drafter.max_nodes + 1  # per sampling event, fixed per request
        self.stats = EngineStats()
        self.sequences: dict[str, Sequence] = {}

    def warm_up_graphs(self) -> int:
        """CUDA: capture the greedy decode/verify graphs of every batch and tree bucket, the
        greedy prefill graphs of every (sequence, token) bucket (``engine.prefill_graphs``) and
        the drafter's graphs, now (seconds), so that timed runs pay no capture or kernel
        compilation. Returns the count."""
        if self.graphs is None:
            return 0
        drafted = getattr(self.drafter, "warm_up", lambda: 0)()  # optional in the protocol
        prefilled = self.prefill_graphs.warm_up() if self.prefill_graphs is not None else 0
        return drafted + prefilled + self.graphs.warm_up(self.drafter.max_nodes)

    def _num_blocks(self, drafter) -> int:
        """The target's KV pool: K and V of every layer per token (drafters' own caches, which
        index the same block ids, come on top)."""
        cfg = self.model.config
        per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
        per_token *= torch.finfo(self.dtype).bits // 8
        # the most one sequence holds: max_model_len positions in the target's table, and what
        # the drafter's tables need for it (kv_demand reads the drafter's settings, not its load)
        longest = Sequence([0] * (self.max_model_len - 1), SamplingParams(), request_id="sizing")
        demand = [self.max_model_len, *drafter.kv_demand(longest, drafter.max_nodes).values()]
        per_seq = sum(-(-n // self.config.block_size) for n in demand)
        return self.config.resolve_num_blocks(per_token, self.device, per_seq)

    # ---- requests -------------------------------------------------------------------------
    def add_request(self, prompt: Seq[int] | str, params: SamplingParams | None = None,
                    request_id: str | None = None) -> Sequence:
        """Queue a request; raises RequestError (naming it) when it can never be served."""
        params = params or SamplingParams()
        ids = self._encode(prompt)
        rid = request_id or f"req-{len(self.sequences)}"
        if rid in self.sequences:
            raise RequestError(f"request id {rid!r} is already in use")
        if not ids:
            raise RequestError(f"request {rid}: the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise RequestError(f"request {rid}: prompt of {len(ids)} tokens leaves no room to "
                               f"generate within max_model_len={self.max_model_len}")
        vocab = self.model.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise RequestError(f"request {rid}: token ids must lie in [0, {vocab}); got "
                               f"{min(ids)}..{max(ids)}")
        seq = Sequence(list(ids), params, request_id=rid)
        self.sequences[rid] = seq
        self.scheduler.add(seq)
        return seq

    def abort(self, request_id: str) -> None:
        seq = self.sequences[request_id]
        if not seq.finished:
            self.scheduler.finish(seq, "abort")

    def _encode(self, prompt: Seq[int] | str) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("a text prompt needs a tokenizer; pass token ids instead")
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return [int(t) for t in prompt]

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- the step -------------------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """Run one step; returns the sequences that finished during it (rejections included)."""
        t0 = time.perf_counter()
        before = {s.request_id for s in self.scheduler.waiting}
        batch = self.scheduler.schedule()
        finished = [self.sequences[r] for r in before if self.sequences[r].finished]
        if not batch:
            if self.scheduler.waiting and not self.scheduler.running and not finished:
                raise RuntimeError(f"scheduler admitted nothing with {self.blocks.num_free} of "
                                   f"{self.blocks.num_blocks} KV blocks free: engine bug")
            return finished
        self.stats.other_s += time.perf_counter() - t0
        for part in self._parts(batch):
            finished += self._run(part)
        self.stats.steps += 1
        self.stats.step_times.append(time.perf_counter() - t0)
        return finished

    def _parts(self, batch: list[ScheduledSeq]) -> list[list[ScheduledSeq]]:
        """The forwards of one step. With ``engine.split_mixed_steps`` a mixed batch (prefill
        chunks beside decode trees) runs as two: the decode trees first, through their CUDA
        graphs, then the prefill chunks (eagerly, or from a prefill graph with
        ``engine.prefill_graphs``). One mixed forward runs eagerly, trees included. Outputs do not
        change: each sequence's step is the same either way. (Measured on an H200, BENCHMARKS.md
        2026-12-02b: the split alone saves little, as the eager prefill forward is most of a
        mixed step's ~35 ms; it is what lets prefill graphs apply.)"""
        decode = [item for item in batch if not item.is_prefill]
        prefill = [item for item in batch if item.is_prefill]
        if not (decode and prefill):
            return [batch]
        self.stats.mixed_steps += 1
        return [decode, prefill] if self.split_mixed_steps else [batch]

    def _run(self, batch: list[ScheduledSeq]) -> list[Sequence]:
        """Draft, forward, verify, commit, update and postprocess ``batch``; returns the sequences
        that finished."""
        t1 = time.perf_counter()
        decode = [item for item in batch if not item.is_prefill]
        tree = self.drafter.propose([i.seq for i in decode], [i.num_new for i in decode]) if decode else None
        t2 = time.perf_counter()
        graphed = None
        if self.graphs is not None and len(decode) == len(batch):
            graphed = self.graphs.run(batch, tree, *self._sampling([i.seq for i in batch]))
        elif self.prefill_graphs is not None and not decode:
            graphed = self.prefill_graphs.run(batch, *self._sampling([i.seq for i in batch]))
        if graphed is None:
            inputs = self.runner.prepare(batch, tree)
            out = self.runner.forward(inputs)
            result = self._verify(batch, inputs, out.logits)
            read = StepRead.of(result, inputs.host)  # the step's one device read
            self.runner.commit(batch, inputs, read.accepted)
        else:  # a graph ran the step (decode: staged while the drafter's kernels ran, and committed)
            inputs, out, result = graphed.inputs, graphed.out, graphed.result
            read = graphed.read()
        t3 = time.perf_counter()
        self.drafter.update(self._step_result(batch, inputs, out, result, read))
        t4 = time.perf_counter()
        finished = self._postprocess(batch, inputs, read, t4)
        t5 = time.perf_counter()
        self.stats.draft_s += (t2 - t1) + (t4 - t3)
        self.stats.verify_s += t3 - t2
        self.stats.other_s += t5 - t4
        return finished

    def _verify(self, batch: list[ScheduledSeq], inputs: StepInputs, logits):
        if inputs.tree is None:
            return None
        seqs = [item.seq for item, r in zip(batch, inputs.sample_index) if r >= 0]
        temp, top_p, top_k, uniforms = self._sampling(seqs)
        plan = SamplingPlan.of(temp, top_p, top_k)  # host facts: no device read to pick the path
        dev, width = logits.device, inputs.tree.max_nodes
        to = lambda x: torch.from_numpy(x).to(dev)  # noqa: E731
        # check=False: the drafters built the trees and SamplingParams validated the values, so
        # verification reads nothing back from the device (the accepted counts are read after)
        return self.verifier.verify(inputs.tree, logits, to(temp), to(top_p), to(top_k),
                                    to(uniforms[:, : width + 1]), plan=plan, check=False)

    def _sampling(self, seqs: list[Sequence]) -> tuple[np.ndarray, ...]:
        """Host (numpy: a few microseconds where torch's small ops cost tens) arrays of the
        sampling rows: temperature, top_p float32, top_k int64 ``[Bs]``, uniforms float32 ``[Bs, U]``."""
        temp = np.array([s.params.temperature for s in seqs], dtype=np.float32)
        top_p = np.array([s.params.top_p for s in seqs], dtype=np.float32)
        top_k = np.array([s.params.top_k for s in seqs], dtype=np.int64)
        uniforms = np.zeros((len(seqs), self.num_uniforms), dtype=np.float32)
        for r, seq in enumerate(seqs):
            if seq.samples:  # greedy rows draw nothing
                uniforms[r] = self._uniforms(seq).numpy()
        return temp, top_p, top_k, uniforms

    def _uniforms(self, seq: Sequence) -> torch.Tensor:
        """A fixed number of draws per sampling event from the request's own counter-based
        generator, so sampled outputs do not depend on the batch or the schedule."""
        return torch.rand(self.num_uniforms, generator=seq.generator(stream=0))

    def _step_result(self, batch, inputs: StepInputs, out, result, read: StepRead) -> StepResult:
        num_new = [item.num_new if item.is_prefill else read.num_nodes[r]
                   for item, r in zip(batch, inputs.sample_index)]
        return StepResult(
            seqs=[i.seq for i in batch], is_prefill=[i.is_prefill for i in batch], num_new=num_new,
            prefix_lens=[i.seq.num_cached for i in batch], row_offsets=inputs.row_offsets,
            hidden=out.hidden, captured=out.captured, sample_index=inputs.sample_index,
            result=result, tree=inputs.tree, accepted=read.accepted)

    def _postprocess(self, batch, inputs: StepInputs, read: StepRead, now: float) -> list[Sequence]:
        finished = []
        for item, r in zip(batch, inputs.sample_index):
            seq = item.seq
            if item.is_prefill:
                seq.num_cached += item.num_new
            if r < 0:
                continue
            path = read.accepted[r]
            if not item.is_prefill:
                seq.num_cached += len(path)
                seq.accept_lengths.append(len(path) - 1)
                seq.draft_depths.append(read.depths[r])
            if self._append(seq, read.tokens[r], now):
                self.scheduler.finish(seq, seq.finish_reason)
                finished.append(seq)
        return finished

    def _append(self, seq: Sequence, new: list[int], now: float) -> bool:
        """Append sampled tokens up to the first stop condition; True when the sequence is done."""
        if seq.first_token_time is None:
            seq.first_token_time = now
        count = 0
        for tok in new:
            seq.tokens.append(tok)
            count += 1
            if tok in self.stop_token_ids and not seq.params.ignore_eos:
                seq.finish_reason = "stop"
            elif len(seq.output) >= seq.params.max_new_tokens or len(seq) >= self.max_model_len:
                seq.finish_reason = "length"
            if seq.finish_reason:
                break
        seq.token_times.append((now, count))
        seq.num_cached = min(seq.num_cached, len(seq) - 1)
        return seq.finish_reason is not None

    # ---- convenience ------------------------------------------------------------------------
    def generate(self, prompts: Seq[Seq[int] | str], params: SamplingParams | Seq[SamplingParams] | None = None,
                 progress: bool = False) -> list[Sequence]:
        """Run prompts to completion; bad requests come back finished with ``rejected: why``."""
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        seqs = [self.submit(p, sp) for p, sp in zip(prompts, params)]
        bar = tqdm(total=len(seqs), desc="generating", unit="req", disable=not progress)
        bar.update(sum(s.finished for s in seqs))
        while self.has_work():
            bar.update(len(self.step()))
        bar.close()
        return seqs

    def submit(self, prompt, params: SamplingParams) -> Sequence:
        try:
            return self.add_request(prompt, params)
        except RequestError as err:
            seq = Sequence([], params, request_id=f"rejected-{len(self.sequences)}")
            seq.status, seq.finish_reason = Status.FINISHED, f"rejected: {err}"
            self.sequences[seq.request_id] = seq
            return seq

