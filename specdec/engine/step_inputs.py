"""The host side of a step: the step body's named inputs (step.py) from the scheduled sequences and
the drafter's tree, and `StepRead`, what the host reads back after it.

Slots: the trees' sequences take slots 0 .. B_t - 1 (``trees[b]`` at slot b), the chunks' take
B_t .. B_s - 1; slots past the real ones are a graph bucket's padding: no rows, nothing stored,
greedy sampling rows that nobody reads.

Inputs (host arrays unless noted; shapes per `StepShape`):
  prefix [B_s] int32 (num_cached), tables [B_s, W] int32, indptr [B_s + 1] int32 (rows of each
  slot), temp, top_p [B_s] float32, top_k [B_s] int64, unif [B_s, T_s + 1] float32;
  trees: budget [B_t] int64 (nodes the scheduler reserved); as the drafter made them (on the
  device, or on the host: staged with the host inputs) or, when no one drafts, root-only trees
  made here: tok, par [B_t, T] int64, kind [B_t, T] int8, num [B_t] int64 and, for a drafter
  that samples, probs [B_t, T, V];
  packed trees: src [N_t] int64 (flat b * T + i of each row), row_of [B_t, T] int64;
  chunks: ids, pos, slots [N_c] int64 (padding: slot -1), last [B_c] int64 (each chunk's last row).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from specdec.verifiers import DraftTree, SamplingPlan

from . import ragged
from .scheduler import ScheduledSeq
from .sequence import Sequence
from .step import StepShape


@dataclass
class SamplingRows:
    """Host arrays of sampling parameters, one row per sequence: ``[n]`` each, ``unif [n, U]``."""
    temp: np.ndarray
    top_p: np.ndarray
    top_k: np.ndarray
    unif: np.ndarray

    @classmethod
    def of(cls, seqs: list[Sequence], num_uniforms: int, per_position: bool = False) -> "SamplingRows":
        """Numpy (a few microseconds, where torch's small ops cost tens). The uniforms are a fixed
        number per sampling event from the request's own counter-based generator, so sampled
        outputs do not depend on the batch or the schedule; greedy rows draw nothing.
        ``per_position`` (exact mode, `verify_match`): column d is the first draw of the event at
        position current + d, the uniform autoregressive decoding would draw that token with."""
        unif = np.zeros((len(seqs), num_uniforms), dtype=np.float32)
        for r, seq in enumerate(seqs):
            if seq.samples and per_position:
                unif[r] = [torch.rand(1, generator=seq.generator(0, ahead=d)).item()
                           for d in range(num_uniforms)]
            elif seq.samples:
                unif[r] = torch.rand(num_uniforms, generator=seq.generator(stream=0)).numpy()
        return cls(np.array([s.params.temperature for s in seqs], dtype=np.float32),
                   np.array([s.params.top_p for s in seqs], dtype=np.float32),
                   np.array([s.params.top_k for s in seqs], dtype=np.int64), unif)


def exact_shape(trees: list[ScheduledSeq], chunks: list[ScheduledSeq], tree: Optional[DraftTree],
                kept: list[int]) -> StepShape:
    """An eager step's shape: packed trees of ``kept[b]`` nodes, the chunks as they are."""
    tables = [len(i.seq.block_table) for i in trees + chunks]
    width = tree.max_nodes if tree is not None else 1
    nodes = min(width, max(i.num_new for i in trees)) if trees else 0
    return StepShape(trees=len(trees), nodes=nodes, chunks=len(chunks),
                     tokens=sum(i.num_new for i in chunks), tree_rows=sum(kept),
                     table_width=max(tables, default=1) or 1, packed=True)


def stage(trees: list[ScheduledSeq], chunks: list[ScheduledSeq], tree: Optional[DraftTree],
          shape: StepShape, block_size: int, sampling: SamplingRows, kept: list[int] = ()
          ) -> tuple[dict[str, np.ndarray], dict[str, tuple[Tensor, tuple]]]:
    """The body's inputs for ``shape``: host arrays, and device tensors ``{name: (tensor, static
    shape)}`` (`GraphRunner.run`). ``sampling``: rows of ``trees + chunks``; ``kept``: packed
    layout only, the nodes each tree keeps (its node count cut to its budget)."""
    bt, t, bc, s = shape.trees, shape.nodes, shape.chunks, shape.slots
    nt, items = len(trees), trees + chunks
    slot_of = list(range(nt)) + list(range(bt, bt + len(chunks)))  # slot of each item

    def place(out: np.ndarray, values) -> np.ndarray:  # per-item values into their slots
        out[:nt], out[bt: bt + len(chunks)] = values[:nt], values[nt:]
        return out

    prefix = place(np.zeros(s, np.int32), [i.seq.num_cached for i in items])
    tables = np.zeros((s, shape.table_width), np.int32)
    for slot, item in zip(slot_of, items):
        tables[slot, : len(item.seq.block_table)] = item.seq.block_table
    counts = place(np.zeros(s, np.int32), (list(kept) if shape.packed else [t] * nt)
                   + [i.num_new for i in chunks])  # rows per slot
    indptr = np.zeros(s + 1, np.int32)
    np.cumsum(counts, out=indptr[1:])
    u = min(shape.width + 1, sampling.unif.shape[1])
    unif = np.zeros((s, shape.width + 1), np.float32)
    unif[:nt, :u], unif[bt: bt + len(chunks), :u] = sampling.unif[:nt, :u], sampling.unif[nt:, :u]
    host = {"prefix": prefix, "tables": tables, "indptr": indptr, "unif": unif,  # padding: greedy
            "temp": place(np.zeros(s, np.float32), sampling.temp),
            "top_p": place(np.ones(s, np.float32), sampling.top_p),
            "top_k": place(np.zeros(s, np.int64), sampling.top_k)}
    dev = {}
    if bt:
        host["budget"] = np.zeros(bt, np.int64)
        host["budget"][:nt] = [min(i.num_new, t) for i in trees]
        cols = min(t, tree.max_nodes) if tree is not None and nt else 1
        if tree is None:  # no one drafts: root-only trees of each sequence's last token
            host.update(_host_tree(bt, t))
            host["tok"][:nt, 0], host["num"][:nt] = [i.seq.tokens[-1] for i in trees], 1
        elif tree.tokens.device.type == "cpu":  # a host tree (lookups at small batches)
            host.update(_host_tree(bt, t))
            for name, x in (("tok", tree.tokens), ("par", tree.parents), ("kind", tree.kind)):
                host[name][:nt, :cols] = x[:nt, :cols].numpy()
            host["num"][:nt] = tree.num_nodes[:nt].numpy()
        else:  # the drafter's tensors, copied on the device: the host never waits for them
            for name, x in (("tok", tree.tokens), ("par", tree.parents), ("kind", tree.kind)):
                dev[name] = (x[:nt, :cols], (bt, t))
            dev["num"] = (tree.num_nodes[:nt], (bt,))
        if tree is not None and tree.draft_probs is not None:
            dev["probs"] = (tree.draft_probs[:nt, :cols], (bt, t, tree.draft_probs.shape[-1]))
        if shape.packed:
            host["src"] = np.concatenate([b * t + np.arange(k) for b, k in enumerate(kept)])
            start = indptr[:nt, None].astype(np.int64)
            host["row_of"] = start + np.minimum(np.arange(t), np.asarray(kept)[:, None] - 1)
    if bc:
        ids, pos = np.zeros(shape.tokens, np.int64), np.zeros(shape.tokens, np.int64)
        slots, last = np.full(shape.tokens, -1, np.int64), np.zeros(bc, np.int64)
        at = 0
        for c, item in enumerate(chunks):
            seq, start, n = item.seq, item.seq.num_cached, item.num_new
            ids[at: at + n] = seq.tokens[start: start + n]
            pos[at: at + n] = np.arange(start, start + n)
            slots[at: at + n] = ragged.slots(seq.block_table, start, n, block_size)
            at += n
            last[c] = at - 1
        host.update(ids=ids, pos=pos, slots=slots, last=last)
    return host, dev


def _host_tree(bt: int, t: int) -> dict[str, np.ndarray]:
    """Empty host arrays of ``bt`` trees of ``t`` node slots (padding: no node)."""
    return {"tok": np.zeros((bt, t), np.int64), "par": np.full((bt, t), -1, np.int64),
            "kind": np.zeros((bt, t), np.int8), "num": np.zeros(bt, np.int64)}


def sampling_plan(host: dict[str, np.ndarray]) -> SamplingPlan:
    """The verifier's plan for the staged rows, padding included (host facts: no device read)."""
    if not host["temp"].any():  # greedy rows only (the common case: ~1 us instead of ~5)
        return GREEDY
    return SamplingPlan.of(host["temp"], host["top_p"], host["top_k"])


GREEDY = SamplingPlan(all_greedy=True, any_greedy=True, filter_cap=0)


@dataclass
class StepRead:
    """What the host reads back after a step (its one device read), per sampling row: the
    accepted path, the tokens it emits, and tree facts for the statistics."""
    accepted: list[list[int]]  # accepted node indices, root first
    tokens: list[list[int]]  # emitted: the accepted draft tokens, then the bonus token
    depths: list[int]  # depth of the verified tree
    num_nodes: list[int]  # nodes of the verified tree

    @classmethod
    def parse(cls, readout: Tensor, rows: list[tuple[int, Sequence, int]]) -> "StepRead":
        """``readout [B_s, 2 A + 4]`` (step.step_body) in one transfer; ``rows``: (slot,
        sequence, node budget) of each sampling row. Raises when a drafter broke the tree
        contract (its root is not the last token, or it holds more nodes than its budget:
        those nodes were not stored)."""
        table = readout.tolist()
        a = (readout.shape[1] - 4) // 2  # A: accepted-path columns
        read = cls([], [], [], [])
        for slot, seq, budget in rows:
            row = table[slot]
            num_acc, bonus = row[a], row[a + 1]
            num, root, depth = row[2 * a + 1: 2 * a + 4]
            if root != seq.tokens[-1] or not 1 <= num <= budget:
                raise AssertionError(f"drafter tree for request {seq.request_id} has root {root} / "
                                     f"{num} nodes; expected root {seq.tokens[-1]} and 1 to "
                                     f"{budget} nodes")
            read.accepted.append(row[: num_acc + 1])
            read.tokens.append(row[a + 2: a + 2 + num_acc] + [bonus])
            read.depths.append(depth)
            read.num_nodes.append(num)
        return read
