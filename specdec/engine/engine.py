"""Engine: requests in, tokens out. One `step`, for every drafter and every kind of step:

    batch = scheduler.schedule()                  # which sequences run, prefill chunk or tree
    for part in runner.forwards(batch):           # one part, or a mixed step's trees then chunks
        part = policy.plan(part, room)            # node budgets; trees within the token budget
                                                  # (speculation/; 1: plain decoding)
        tree = drafter.propose(part's decoding sequences)     # skipped when no one drafts
        run  = runner.run(part, tree)             # forward, verify, commit, one read-back:
                                                  # the bucket's CUDA graph, or eagerly
        policy.observe(run)                       # step time, and what the trees got accepted
        drafter.update(run.step_result())         # e.g. EAGLE keeps the accepted nodes' features
        postprocess(run)                          # append tokens, finish, free blocks

Autoregressive decoding is the drafter ``none`` (a tree of one node): one code path, not two.
ARCHITECTURE.md describes the step and the drafter protocol.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence as Seq

import torch
from tqdm.auto import tqdm

from specdec.verifiers import MAX_NODES, exact_verifier

from .block_manager import BlockManager
from .config import EngineConfig
from .model_runner import ModelRunner, StepRun
from .protocol import TargetContext
from .scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from .sequence import SamplingParams, Sequence, Status
from .speculation import FixedPolicy
from .speculation.acceptance import tree_statistics
from .tensor_parallel import check_split


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
                 tokenizer=None, stop_token_ids: Iterable[int] = (), max_model_len: int | None = None,
                 policy=None, ranks=None):
        """``policy``: the speculation policy (specdec.engine.speculation); None: `FixedPolicy`,
        every decoding sequence drafts the drafter's whole budget. ``ranks``: a tensor-parallel
        target's other ranks (`tensor_parallel.start`, which shards ``model``)."""
        self.config = config or EngineConfig()
        self.device = self.config.torch_device()
        self.dtype = self.config.torch_dtype(self.device)
        self.tokenizer = tokenizer
        if self.config.exact and self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"engine.exact=true runs on the CPU or a CUDA GPU; got {self.device}")
        # exact mode: each token the target's own draw, which a drafted node must match
        verifier = exact_verifier(verifier) if self.config.exact else verifier
        self.drafter, self.verifier = drafter, verifier
        self.stop_token_ids = set(stop_token_ids)
        if self.config.max_num_batched_tokens < drafter.max_nodes:
            raise ValueError(f"engine.max_num_batched_tokens ({self.config.max_num_batched_tokens}) "
                             f"must be >= the drafter's tree budget ({drafter.max_nodes} nodes): a "
                             f"draft tree is never cut to fit a step")
        check_split(self.config.tensor_parallel_size, model, ranks)
        limit = max_model_len or model.config.max_position_embeddings
        self.max_model_len = min(limit, self.config.max_model_len or limit)
        # tree nodes sit up to MAX_NODES past the last cached position
        exact = self.config.exact
        self.model = model.prepare(self.device, self.dtype, self.max_model_len + MAX_NODES, exact=exact)
        self.blocks = BlockManager(self._num_blocks(drafter), self.config.block_size)
        mode = self.config.graph_mode(self.device)  # capture | emulate | None
        graph_batch = min(self.config.max_num_seqs, self.config.max_graph_batch) if mode else 0
        ctx = TargetContext(model=self.model, tokenizer=tokenizer, vocab_size=model.config.vocab_size,
                            device=self.device, dtype=self.dtype, blocks=self.blocks,
                            max_model_len=self.max_model_len, graph_batch=graph_batch, graph_mode=mode)
        drafter.load(ctx)  # may set ctx.capture_layers (target features it needs)
        self.policy = policy = policy if policy is not None else FixedPolicy()
        sched = SchedulerConfig(self.config.max_num_seqs, self.config.max_num_batched_tokens,
                                self.max_model_len, drafter.max_nodes, self.config.admit_count(),
                                reserve=1 if policy.fits_budget else None)
        self.scheduler = Scheduler(sched, self.blocks, drafter.kv_demand)
        # (no reference to the engine here: a cycle would keep its KV cache alive until the
        # garbage collector's next full pass)
        self.scheduler.on_release = lambda seq: (drafter.release(seq), policy.release(seq))
        steps = None if exact else mode  # an exact step reads its key lists' sizes: eager
        runner = dict(num_blocks=self.blocks.num_blocks, block_size=self.config.block_size, dtype=self.dtype,
                      max_model_len=self.max_model_len, capture_layers=ctx.capture_layers, graph_mode=steps,
                      graph_batch=graph_batch if steps else 0,
                      prefill_graphs=self.config.graph_prefills(steps is not None),
                      split_mixed=self.config.split_mixed(steps is not None),
                      max_tokens=self.config.max_num_batched_tokens, exact=exact)
        self.runner = ModelRunner(self.model, verifier, device=self.device, **runner)
        if ranks is not None:  # the other ranks build the same runner on their shares
            ranks.mirror(self.runner, verifier, (self.dtype, self.max_model_len + MAX_NODES), runner)
        self.num_uniforms = drafter.max_nodes + 1  # per sampling event, fixed per request
        self.stats = EngineStats()
        self.sequences: dict[str, Sequence] = {}
        self.observation = None  # a forward's outcome, for the policy once the next one is launched
        self.policy.attach(self)
        ctx.budget_levels = tuple(getattr(self.policy, "levels", ()))

    def warm_up(self) -> int:
        """Capture the greedy graphs of every decode and prefill bucket and the drafter's, now
        (seconds), so that timed runs pay no capture or kernel compilation; then let the policy
        time the steps it will choose between (the adaptive one, where steps replay graphs: on
        timing requests, forgotten after). Returns the graphs captured."""
        graphs = self.drafter.warm_up() + self.runner.warm_up(self.drafter.max_nodes)
        before = dict(self.sequences)
        self.policy.warm_up(self)
        if len(self.sequences) > len(before):  # its timing requests: forgotten
            self.sequences, self.stats, self.scheduler.num_preemptions = before, EngineStats(), 0
        return graphs

    def _num_blocks(self, drafter) -> int:
        """The target's KV pool: K and V of every layer per token (drafters' own caches, which
        index the same block ids, come on top)."""
        layers, _, _, heads, dim = self.model.kv_cache_shape(0, 0)  # this rank's share
        per_token = 2 * layers * heads * dim * torch.finfo(self.dtype).bits // 8
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
        if self.config.exact and self.device.type == "cuda" and params.temperature > 0:
            raise RequestError(f"request {rid}: engine.exact=true on a GPU serves greedy requests only "
                               f"(temperature 0): its sampling's softmax and scan run in torch's "
                               f"shape-dependent order; sample exactly on the CPU (engine.device=cpu)")
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
        if any(i.is_prefill for i in batch) and any(not i.is_prefill for i in batch):
            self.stats.mixed_steps += 1
        for part in self.runner.forwards(batch):
            finished += self._run(part)
        self.stats.steps += 1
        self.stats.step_times.append(time.perf_counter() - t0)
        return finished

    def _run(self, part: list[ScheduledSeq]) -> list[Sequence]:
        """Plan, propose, run, update and postprocess one forward; returns what finished."""
        t1 = time.perf_counter()
        part = self.policy.plan(part, self.scheduler.tree_tokens(part))  # decode items' node budgets
        decode = [i for i in part if not i.is_prefill]
        drafts = any(i.num_new > 1 for i in decode)
        # no one drafts: no tree (the runner stages root-only trees with the host inputs)
        tree = self.drafter.propose([i.seq for i in decode], [i.num_new for i in decode]) if drafts else None
        # the policy's copy of the trees' node statistics leaves with the drafter's work
        stats = tree_statistics(tree, len(decode)) if drafts and self.policy.wants_trees else None
        t2 = time.perf_counter()
        launched = self.runner.launch(part, tree, self.num_uniforms)
        self._observed()  # the previous forward's outcome, while this one runs on the device
        run = self.runner.finish(*launched)
        t3 = time.perf_counter()
        stats = stats(run.read.num_nodes[: len(decode)]) if stats else None
        self.drafter.update(run.step_result())
        t4 = time.perf_counter()
        finished = self._postprocess(run, t4)
        t5 = time.perf_counter()
        # the policy weighs the whole forward (update and bookkeeping grow with the budget too),
        # but not one that released a finished sequence (a request's last step, plain: its cap is
        # one token): NaN leaves its time out, not what it accepted
        seconds = float("nan") if finished else t5 - t1
        self.observation = (run.items, seconds, stats, run.read.accepted[: len(decode)])
        self.stats.draft_s += (t2 - t1) + (t4 - t3)
        self.stats.verify_s += t3 - t2
        self.stats.other_s += t5 - t4
        return finished

    def _postprocess(self, run: StepRun, now: float) -> list[Sequence]:
        finished = []
        for item, r in zip(run.items, run.sample_index):
            seq = item.seq
            if item.is_prefill:
                seq.num_cached += item.num_new
            if r < 0:
                continue
            path = run.read.accepted[r]
            if not item.is_prefill:
                seq.num_cached += len(path)
                seq.accept_lengths.append(len(path) - 1)
                seq.draft_depths.append(run.read.depths[r])
            if self._append(seq, run.read.tokens[r], now):
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
        self.close()
        return seqs

    def close(self) -> None:
        """End of a run of requests: the policy learns from the last forward and saves what it
        keeps (e.g. the measured step costs, for the next run). The engine stays usable."""
        self._observed()
        self.policy.close()

    def _observed(self) -> None:
        """Hand the policy the last forward's outcome (time, trees, accepted paths)."""
        if self.observation is not None:
            self.policy.observe(*self.observation)
            self.observation = None

    def submit(self, prompt, params: SamplingParams) -> Sequence:
        try:
            return self.add_request(prompt, params)
        except RequestError as err:
            seq = Sequence([], params, request_id=f"rejected-{len(self.sequences)}")
            seq.status, seq.finish_reason = Status.FINISHED, f"rejected: {err}"
            self.sequences[seq.request_id] = seq
            return seq

