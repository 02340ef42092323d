"""ModelRunner: turns a scheduled batch into one ragged target forward over the paged cache.

Every sequence contributes its new tokens to one flat batch of N rows:
  * a prefill chunk: tokens ``num_cached .. num_cached + n - 1``, causal;
  * a draft tree: node i is stored at position ``num_cached + i`` (node order) and attends with the
    tree's ancestor bitmask; its rotary position is ``num_cached + depth[i]``.
After verification, `commit` moves the K/V of each accepted path to consecutive positions
(``num_cached + j`` for the j-th accepted node) with one `compact_kv` call over all layers; the
rejected nodes' slots are simply overwritten by later steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from specdec.kernels import compact_kv
from specdec.models.attention import AttnMetadata
from specdec.verifiers import DraftTree

from . import ragged
from .scheduler import ScheduledSeq


@dataclass
class HostBatch:
    """The flat batch as host lists (what a CUDA-graphed step stages in one copy per dtype)."""
    ids: list[int]  # [N]
    pos: list[int]  # [N]
    slots: list[int]  # [N]
    bits: list[int]  # [N] ancestor bitmasks (0 for prefill rows)
    tables: list[list[int]]  # [B] block tables
    prefix_lens: list[int]  # [B]
    logit_rows: list[list[int]]  # [Bs] rows in N of each sampled node
    tree_rows: list[tuple[list[int], list[int], list[int]]]  # [Bs] (tokens, parents, kinds)
    tree_depths: list[int]  # [Bs] depth of each sampled tree
    is_prefill: list[bool]  # [B]
    # all-decode batches: (tokens, parents, kinds, logit rows) as [B, T] arrays (padding: 0, -1,
    # 0, 0), which a CUDA graph stages as blocks instead of row by row
    tree_arrays: Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = None


@dataclass
class StepInputs:
    input_ids: Tensor | None  # [N] (None when a CUDA graph runs the step from `host`)
    positions: Tensor | None  # [N]
    meta: AttnMetadata | None
    row_offsets: list[int]  # [B + 1] rows of each batch item
    sample_index: list[int]  # [B] row in the sampling batch, -1 when the item does not sample
    logit_rows: Tensor | None  # [Bs, T] row in N of each sampled tree node, -1 for padding
    tree: DraftTree | None  # [Bs, T] the trees to verify (prefills that end have a root only)
    host: HostBatch | None = None
    draft_probs: Tensor | None = None  # [Bd, T, V] the drafter's tree's, rows of decode items
    width: int = 0  # T: the most nodes of a sampled tree this step


@dataclass
class StepOutput:
    hidden: Tensor  # [N, H]
    captured: dict[int, Tensor]  # layer -> [N, H]
    logits: Tensor | None  # [Bs, T, V] float32


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, device, dtype,
                 capture_layers: tuple[int, ...] = ()) -> None:
        cfg = model.config
        shape = (cfg.num_hidden_layers, num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.model, self.block_size, self.device = model, block_size, torch.device(device)
        self.capture_layers = tuple(capture_layers)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)  # [L, nb, bs, Hkv, D]
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def prepare(self, batch: list[ScheduledSeq], tree: DraftTree | None,
                device_tensors: bool = True) -> StepInputs:
        """Host-side assembly of the flat batch. ``tree`` rows follow the decode items in order.
        With ``device_tensors=False`` only the host lists are built (a CUDA graph stages them)."""
        if not device_tensors and tree is not None and not any(i.is_prefill for i in batch):
            return self._prepare_decode(batch, tree)
        ids, pos, slots, bits, use, offsets = [], [], [], [], [], [0]
        sample_index, logit_rows, roots, tree_rows, depths = [], [], [], [], []
        t_list = _tree_lists(tree)
        decode_row = 0
        for item in batch:
            seq, start = item.seq, item.seq.num_cached
            if item.is_prefill:
                n = item.num_new
                ids += seq.tokens[start:start + n]
                pos += range(start, start + n)
                bits += [0] * n
                use.append(False)
                rows = [offsets[-1] + n - 1] if item.samples else []
                if rows:
                    tree_rows.append(([seq.tokens[-1]], [-1], [0]))
                    depths.append(0)
            else:
                tok, depth, mask, par, kind = (x[decode_row] for x in t_list)
                if tok[0] != seq.tokens[-1] or len(tok) > item.num_new:
                    raise AssertionError(f"drafter tree for request {seq.request_id} has root "
                                         f"{tok[0]} / {len(tok)} nodes; expected root "
                                         f"{seq.tokens[-1]} and at most {item.num_new} nodes")
                n = len(tok)
                ids += tok
                pos += [start + d for d in depth]
                bits += mask
                use.append(True)
                rows = [offsets[-1] + i for i in range(n)]
                roots.append((len(logit_rows), decode_row))  # (sampling row, tree row)
                tree_rows.append((tok, par, kind))
                depths.append(max(depth))
                decode_row += 1
            slots += ragged.slots(seq.block_table, start, n, self.block_size)
            offsets.append(offsets[-1] + n)
            sample_index.append(len(logit_rows) if rows else -1)
            if rows:
                logit_rows.append(rows)
        host = HostBatch(ids, pos, slots, bits, [i.seq.block_table for i in batch],
                         [i.seq.num_cached for i in batch], logit_rows, tree_rows, depths,
                         [i.is_prefill for i in batch])
        width = max([len(r) for r in logit_rows], default=1)
        if not device_tensors:
            probs = None if tree is None else tree.draft_probs
            return StepInputs(None, None, None, offsets, sample_index, None, None, host, probs, width)
        inputs = self._tensors(batch, ids, pos, slots, bits, use, offsets, sample_index,
                               logit_rows, tree, roots)
        inputs.host, inputs.width = host, width
        return inputs

    def _prepare_decode(self, batch: list[ScheduledSeq], tree: DraftTree) -> StepInputs:
        """`prepare` of an all-decode batch for a CUDA graph, with numpy over ``[B, T]`` arrays
        instead of Python loops over nodes (what the host spends most of a large batch's step
        on); builds the same HostBatch as the general path (tested against it)."""
        b, bs = len(batch), self.block_size
        tok, depth, mask, par, kind, num = _tree_arrays(tree, b)  # [B, T] x5, [B]
        seqs = [item.seq for item in batch]
        budget = np.array([item.num_new for item in batch])
        bad = np.flatnonzero((tok[:, 0] != np.array([s.tokens[-1] for s in seqs])) | (num > budget))
        if bad.size:
            r = int(bad[0])
            raise AssertionError(f"drafter tree for request {seqs[r].request_id} has root {tok[r, 0]} / "
                                 f"{num[r]} nodes; expected root {seqs[r].tokens[-1]} and at most "
                                 f"{budget[r]} nodes")
        t = tok.shape[1]
        node = np.arange(t)
        valid = node < num[:, None]  # [B, T]
        tok, par, kind = np.where(valid, tok, 0), np.where(valid, par, -1), np.where(valid, kind, 0)
        start = np.array([s.num_cached for s in seqs], dtype=np.int64)
        tables = [s.block_table for s in seqs]
        padded = ragged.table_array(tables, b, max(len(x) for x in tables), np.int64)
        # node i is stored at position num_cached + i: the valid nodes, packed row after row
        indptr, _, slots, _ = ragged.packed_runs(start, start + num, padded, bs, int(num.sum()))
        offsets = indptr.astype(np.int64)
        rows = np.where(valid, offsets[:-1, None] + node, 0)  # [B, T] row in N of each node
        counts = num.tolist()
        trim = lambda a: [row[:n] for row, n in zip(a.tolist(), counts)]  # noqa: E731
        host = HostBatch(tok[valid], (start[:, None] + depth)[valid], slots, mask[valid],
                         tables, start.tolist(), trim(rows), list(zip(trim(tok), trim(par), trim(kind))),
                         depth.max(1).tolist(), [False] * b, (tok, par, kind, rows))
        return StepInputs(None, None, None, offsets.tolist(), list(range(b)), None, None, host,
                          tree.draft_probs, int(num.max()))

    def _tensors(self, batch, ids, pos, slots, bits, use, offsets, sample_index, logit_rows,
                 tree, roots) -> StepInputs:
        dev = self.device
        width = max([len(r) for r in logit_rows], default=1)
        rows = torch.full((len(logit_rows), width), -1, dtype=torch.long)
        for r, lr in enumerate(logit_rows):
            rows[r, : len(lr)] = torch.tensor(lr)
        meta = ragged.attn_metadata([item.seq.block_table for item in batch],
                                    [item.seq.num_cached for item in batch],
                                    [offsets[b + 1] - offsets[b] for b in range(len(batch))],
                                    slots, dev, bits, use)
        sample_tree = _sampling_tree(batch, sample_index, tree, roots, width, dev)
        return StepInputs(torch.tensor(ids, dtype=torch.long, device=dev),
                          torch.tensor(pos, dtype=torch.long, device=dev), meta, offsets,
                          sample_index, rows.to(dev), sample_tree)

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> StepOutput:
        out = self.model(inputs.input_ids, inputs.positions, inputs.meta, self.k_cache,
                         self.v_cache, capture_layers=self.capture_layers)
        if inputs.tree is None:
            return StepOutput(out.hidden, out.captured, None)
        rows = inputs.logit_rows  # [Bs, T]
        valid = rows >= 0
        flat = self.model.compute_logits(out.hidden[rows[valid]])  # [M, V]
        logits = flat.new_zeros(*rows.shape, flat.shape[-1])
        logits[valid] = flat
        return StepOutput(out.hidden, out.captured, logits)

    def commit(self, batch: list[ScheduledSeq], inputs: StepInputs, accepted: list[list[int]]) -> None:
        """Slide each decode item's accepted nodes to consecutive positions. ``accepted[r]`` is
        the accepted path (node indices, root first) of sampling row r."""
        src, dst = [], []
        for item, r in zip(batch, inputs.sample_index):
            if item.is_prefill or r < 0:
                continue
            table, start = item.seq.block_table, item.seq.num_cached
            for j, node in enumerate(accepted[r]):
                if node != j:
                    src += ragged.slots(table, start + node, 1, self.block_size)
                    dst += ragged.slots(table, start + j, 1, self.block_size)
        if src:
            compact_kv(self.k_cache, self.v_cache,
                       torch.tensor(src, dtype=torch.long, device=self.device),
                       torch.tensor(dst, dtype=torch.long, device=self.device))


def _tree_lists(tree: DraftTree | None) -> list[list[list[int]]]:
    """Per-row lists (tokens, depth, ancestor bits, parents, kinds) of the valid nodes: one host
    transfer."""
    if tree is None:
        return [[], [], [], [], []]
    b, t = tree.tokens.shape
    flat = torch.cat([torch.stack([tree.tokens, tree.depth, tree.ancestor_mask, tree.parents,
                                   tree.kind.long()]).flatten(), tree.num_nodes]).tolist()
    n = flat[5 * b * t:]
    return [[flat[(c * b + r) * t:(c * b + r) * t + n[r]] for r in range(b)] for c in range(5)]


def _tree_arrays(tree: DraftTree, rows: int) -> list[np.ndarray]:
    """(tokens, depth, ancestor bits, parents, kinds) ``[rows, T]`` and num_nodes ``[rows]`` of
    the first ``rows`` trees, in one host transfer."""
    stacked = torch.stack([tree.tokens, tree.depth, tree.ancestor_mask, tree.parents, tree.kind.long()])
    num = tree.num_nodes[None, :rows, None].expand(1, rows, stacked.shape[2])
    host = torch.cat([stacked[:, :rows], num]).cpu().numpy()  # [6, rows, T]
    tok, depth, mask, par, kind, n = host
    return [tok, depth, mask, par, kind, n[:, 0]]


def _sampling_tree(batch, sample_index, tree, roots, width, device) -> DraftTree | None:
    """The verifier's batch: decode rows copied from the drafter's tree, roots for prefills that end."""
    num_rows = sum(1 for i in sample_index if i >= 0)
    if num_rows == 0:
        return None
    tokens = torch.zeros(num_rows, width, dtype=torch.long)
    for item, r in zip(batch, sample_index):
        if r >= 0 and item.is_prefill:
            tokens[r, 0] = item.seq.tokens[-1]
    parents = torch.full_like(tokens, -1)
    num_nodes = torch.ones(num_rows, dtype=torch.long)
    kind = torch.zeros(num_rows, width, dtype=torch.int8)
    tokens, parents, num_nodes, kind = (x.to(device) for x in (tokens, parents, num_nodes, kind))
    probs = None
    if roots:
        dst = torch.tensor([r for r, _ in roots], device=device)
        src = torch.tensor([d for _, d in roots], device=tree.tokens.device)
        t = min(width, tree.max_nodes)
        tokens[dst, :t] = tree.tokens[src, :t].to(device)
        parents[dst, :t] = tree.parents[src, :t].to(device)
        num_nodes[dst] = tree.num_nodes[src].to(device)
        kind[dst, :t] = tree.kind[src, :t].to(device)
        if tree.draft_probs is not None:
            probs = tree.draft_probs.new_zeros(num_rows, width, tree.draft_probs.shape[-1])
            probs[dst, :t] = tree.draft_probs[src, :t]
    return DraftTree(tokens, parents, num_nodes, kind=kind, draft_probs=probs)
