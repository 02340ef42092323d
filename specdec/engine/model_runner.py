"""ModelRunner: the target's side of a step. It owns the paged KV cache and runs the step body
(step.py) for a scheduled part of a batch: replayed from the CUDA graph of the part's bucket when
there is one, else eagerly on the part's exact shapes (nano-vllm's `run_model`, one branch).

Which steps have a bucket: decode steps (draft trees only) and, with ``engine.prefill_graphs``,
prefill steps (chunks only), up to ``max_graph_batch`` sequences, ``NODE_BUCKETS`` nodes and
``TOKEN_BUCKETS`` tokens. A mixed step (trees beside chunks) has none: `forwards` splits it into
its trees and its chunks where ``engine.split_mixed_steps`` says so (by default, where graphs
are on), each part then finding its bucket; otherwise it runs as one eager forward. Outputs do
not change either way: each sequence's step is the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from specdec.verifiers import DraftTree, SamplingPlan

from . import ragged
from .graphs import GraphRunner, batch_buckets, bucket
from .protocol import StepResult
from .scheduler import ScheduledSeq
from .step import NODE_BUCKETS, TOKEN_BUCKETS, StepOutputs, StepShape, Target, bounds_of, step_body
from .step_inputs import SamplingRows, StepRead, exact_shape, sampling_plan, stage


@dataclass
class StepRun:
    """One forward of a step: its order of sequences, outputs, and what the host read back."""
    items: list[ScheduledSeq]  # trees first, then chunks (slot order)
    out: StepOutputs
    read: StepRead
    sample_index: list[int]  # [B] sampling row of each item, -1 when it does not sample
    row_offsets: list[int]  # [B + 1] hidden rows of each item

    def step_result(self) -> StepResult:
        num_new = [i.num_new if i.is_prefill else self.read.num_nodes[r]
                   for i, r in zip(self.items, self.sample_index)]
        n = self.row_offsets[-1]  # the real rows (a graph's padding slots come after)
        return StepResult(
            seqs=[i.seq for i in self.items], is_prefill=[i.is_prefill for i in self.items],
            num_new=num_new, prefix_lens=[i.seq.num_cached for i in self.items],
            row_offsets=self.row_offsets, hidden=self.out.hidden[:n],
            captured={i: c[:n] for i, c in self.out.captured.items()},
            sample_index=self.sample_index, result=self.out.result, tree=self.out.tree,
            accepted=self.read.accepted)


class ModelRunner:
    def __init__(self, model, verifier, num_blocks: int, block_size: int, device, dtype,
                 max_model_len: int, capture_layers: tuple[int, ...] = (),
                 graph_mode: Optional[str] = None, graph_batch: int = 0,
                 prefill_graphs: bool = False, split_mixed: bool = False,
                 max_tokens: int = TOKEN_BUCKETS[-1], exact: bool = False) -> None:
        shape = model.kv_cache_shape(num_blocks, block_size)
        k_cache = torch.zeros(shape, dtype=dtype, device=device)  # [L, nb, bs, Hkv, D]
        self.target = Target(model, k_cache, torch.zeros_like(k_cache), block_size,
                             tuple(capture_layers), verifier, exact)
        self.device, self.max_model_len = torch.device(device), max_model_len
        self.graphs = GraphRunner(device, graph_mode if graph_batch else None)
        self.batch_buckets = batch_buckets(graph_batch) if graph_batch else ()
        # the buckets below the step's token budget, then the budget itself (at most 2048)
        self.token_buckets = (tuple(sorted({t for t in TOKEN_BUCKETS if t < max_tokens}
                                           | {min(max_tokens, TOKEN_BUCKETS[-1])}))
                              if prefill_graphs else ())
        self.split_mixed = split_mixed
        self.tree_table_width = ragged.table_width(max_model_len + NODE_BUCKETS[-1], block_size)
        self.chunk_table_width = ragged.table_width(max_model_len, block_size)
        # tensor parallelism on rank 0 (`Ranks.mirror`): sends each staged step to the other
        # ranks, which run the same body on their shares of the model; id: this runner's there
        self.mirror: Optional[Callable[..., None]] = None
        self.id: Optional[int] = None

    @property
    def k_cache(self):
        return self.target.k_cache

    @property
    def v_cache(self):
        return self.target.v_cache

    def forwards(self, batch: list[ScheduledSeq]) -> list[list[ScheduledSeq]]:
        """The forwards of one step: a mixed batch as its trees, then its chunks (``split_mixed``),
        else the batch as it is."""
        trees = [i for i in batch if not i.is_prefill]
        chunks = [i for i in batch if i.is_prefill]
        return [trees, chunks] if (self.split_mixed and trees and chunks) else [batch]

    def run(self, items: list[ScheduledSeq], tree: Optional[DraftTree], num_uniforms: int) -> StepRun:
        """The step body for ``items`` (``tree``: the drafter's, rows in the order of the decode
        items; None: root-only trees, no one drafts), from the graph of its bucket when there is
        one, else eagerly; then its read."""
        return self.finish(*self.launch(items, tree, num_uniforms))

    @torch.inference_mode()
    def launch(self, items: list[ScheduledSeq], tree: Optional[DraftTree], num_uniforms: int):
        """Stage and run (replay) the step; a graphed step reads nothing back (the drafter's
        kernels may still be running). Returns what `finish` reads."""
        trees = [i for i in items if not i.is_prefill]
        chunks = [i for i in items if i.is_prefill]
        sampling = SamplingRows.of([i.seq for i in trees + chunks], num_uniforms, self.target.exact)
        shape = self._bucket(trees, chunks, tree)
        kept = []
        if shape is None:  # eager: the trees packed, their node counts read first
            if trees:
                kept = (np.minimum(tree.num_nodes[: len(trees)].tolist(), [i.num_new for i in trees]).tolist()
                        if tree is not None else [1] * len(trees))
            shape = exact_shape(trees, chunks, tree, kept)
        host, dev = stage(trees, chunks, tree, shape, self.target.block_size, sampling, kept)
        plan = sampling_plan(host)
        if self.mirror is not None:
            self.mirror(("step", self.id, shape, plan, host), dev)
        return trees, chunks, shape, host, self.execute(shape, plan, host, dev)

    def execute(self, shape: StepShape, plan: SamplingPlan, host: dict[str, np.ndarray],
                dev: dict[str, tuple[torch.Tensor, tuple]]) -> StepOutputs:
        """The step body on staged inputs: the bucket's graph, or eagerly for a packed step."""
        key = None if shape.packed else (shape, plan, "probs" in dev)
        return self.graphs.run(key, host, self._body(shape, plan, host), dev)

    def _bucket(self, trees, chunks, tree) -> Optional[StepShape]:
        """The graph bucket of a step, None when it has none (it then runs eagerly)."""
        if not self.graphs.enabled or (trees and chunks):
            return None
        n = len(trees) + len(chunks)
        bg = bucket(n, self.batch_buckets)
        if trees:  # the tree's columns past every budget are never verified: not staged
            drafted = tree.max_nodes if tree is not None else 1  # (no tree: root-only trees)
            tg = bucket(min(drafted, max(i.num_new for i in trees)), NODE_BUCKETS)
            width = self.tree_table_width
            shape = None if bg is None or tg is None else StepShape(bg, tg, 0, 0, bg * tg, width, False)
        else:
            ng = bucket(sum(i.num_new for i in chunks), self.token_buckets)
            width = self.chunk_table_width
            shape = None if bg is None or ng is None else StepShape(0, 0, bg, ng, 0, width, False)
        if shape is None or any(len(i.seq.block_table) > width for i in trees + chunks):
            return None
        return shape

    def _body(self, shape: StepShape, plan: SamplingPlan, host: dict[str, np.ndarray]):
        """The step body for ``shape``; an eager step's attention bounds are its exact sizes."""
        if shape.packed:
            counts = np.diff(host["indptr"])
            bounds = (int(counts.max()), int((host["prefix"] + counts).max()))
        else:
            bounds = bounds_of(shape, self.max_model_len)
        return lambda v: step_body(self.target, v, shape, bounds, plan, validate=shape.packed)

    def finish(self, trees, chunks, shape: StepShape, host, out: StepOutputs) -> StepRun:
        """Read the step back (its one device read); the items in slot order, with their sampling
        rows and hidden rows."""
        items = trees + chunks
        slots = list(range(len(trees))) + [shape.trees + c for c in range(len(chunks))]
        sample_index, rows = [], []
        for slot, item in zip(slots, items):
            sample_index.append(len(rows) if item.samples else -1)
            if item.samples:
                rows.append((slot, item.seq, 1 if item.is_prefill else item.num_new))
        offsets = host["indptr"].tolist()
        return StepRun(items, out, StepRead.parse(out.readout, rows), sample_index,
                       [offsets[s] for s in slots] + [offsets[slots[-1] + 1]])

    @torch.inference_mode()
    def warm_up(self, max_nodes: int) -> int:
        """Capture now the greedy graph of every decode bucket up to ``max_nodes`` nodes and of
        every prefill bucket a step can reach (at least one token per sequence), on padding only
        (no rows stored), so that no step pays a capture or a Triton compilation later (seconds
        each on a cold cache). Returns the number of graphs captured."""
        if self.mirror is not None:
            self.mirror(("warm_up", self.id, max_nodes))
        top = bucket(max_nodes, NODE_BUCKETS) or NODE_BUCKETS[-1]
        shapes = [StepShape(bg, tg, 0, 0, bg * tg, self.tree_table_width, False)
                  for bg in self.batch_buckets for tg in NODE_BUCKETS if tg <= top]
        shapes += [StepShape(0, 0, bg, ng, 0, self.chunk_table_width, False)
                   for ng in self.token_buckets for bg in self.batch_buckets if bg <= ng]
        return self.graphs.warm_up(self._case(shape) for shape in shapes)

    def _case(self, shape: StepShape):
        """A padding-only step of ``shape`` (a warm-up case of `GraphRunner.warm_up`)."""
        # one node: root-only trees (tree None), staged from the host as the steps of no draft are
        z = torch.zeros(0, shape.nodes, dtype=torch.long, device=self.device)
        tree = DraftTree(z, z - 1, z[:, 0] + 1, validate=False) if shape.trees and shape.nodes > 1 else None
        none = SamplingRows.of([], 1)
        host, dev = stage([], [], tree, shape, self.target.block_size, none)
        plan = sampling_plan(host)
        return (shape, plan, False), host, self._body(shape, plan, host), dev
