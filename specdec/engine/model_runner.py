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

import torch
from torch import Tensor

from specdec.kernels import compact_kv
from specdec.models.attention import AttnMetadata
from specdec.verifiers import DraftTree

from . import ragged
from .scheduler import ScheduledSeq


@dataclass
class HostBatch:
    """What an eager step keeps on the host of its sampled trees, to turn the verification's
    accepted nodes into tokens (a CUDA-graphed step reads them back instead, `StepGraphs`)."""
    tree_tokens: list[list[int]]  # [Bs] tokens of each sampled tree's nodes
    tree_depths: list[int]  # [Bs] depth of each sampled tree


@dataclass
class StepRead:
    """What the host reads back after verification (the step's one device read), per sampling
    row: the accepted path, the tokens it emits, and tree facts for the statistics."""
    accepted: list[list[int]]  # accepted node indices, root first
    tokens: list[list[int]]  # emitted: the accepted draft tokens, then the bonus token
    depths: list[int]  # depth of the verified tree
    num_nodes: list[int]  # nodes of the verified tree

    @classmethod
    def of(cls, result, host: "HostBatch") -> "StepRead":
        """From an eager step's result (read in one transfer) and the host copy of its trees."""
        if result is None:
            return cls([], [], [], [])
        rows = torch.cat([result.accepted_nodes, result.num_accepted[:, None],
                          result.bonus_token[:, None]], 1).tolist()  # [Bs, D + 3]
        accepted = [row[: row[-2] + 1] for row in rows]
        tokens = [[toks[n] for n in path[1:]] + [row[-1]]
                  for path, row, toks in zip(accepted, rows, host.tree_tokens)]
        return cls(accepted, tokens, list(host.tree_depths), [len(t) for t in host.tree_tokens])


@dataclass
class StepInputs:
    input_ids: Tensor | None  # [N] (None when a CUDA graph runs the step)
    positions: Tensor | None  # [N]
    meta: AttnMetadata | None
    row_offsets: list[int]  # [B + 1] rows of each batch item (a graphed step: T_g per tree)
    sample_index: list[int]  # [B] row in the sampling batch, -1 when the item does not sample
    logit_rows: Tensor | None  # [Bs, T] row in N of each sampled tree node, -1 for padding
    tree: DraftTree | None  # [Bs, T] the trees to verify (prefills that end have a root only)
    host: HostBatch | None = None  # eager steps
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

    def prepare(self, batch: list[ScheduledSeq], tree: DraftTree | None) -> StepInputs:
        """Host-side assembly of the flat batch, then its device tensors (the eager step; a
        CUDA-graphed step takes the tree from the device instead, `StepGraphs.run`). ``tree``
        rows follow the decode items in order."""
        ids, pos, slots, bits, use, offsets = [], [], [], [], [], [0]
        sample_index, logit_rows, roots, tree_tokens, depths = [], [], [], [], []
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
                    tree_tokens.append([seq.tokens[-1]])
                    depths.append(0)
            else:
                tok, depth, mask = (x[decode_row] for x in t_list)
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
                tree_tokens.append(tok)
                depths.append(max(depth))
                decode_row += 1
            slots += ragged.slots(seq.block_table, start, n, self.block_size)
            offsets.append(offsets[-1] + n)
            sample_index.append(len(logit_rows) if rows else -1)
            if rows:
                logit_rows.append(rows)
        host = HostBatch(tree_tokens, depths)
        width = max([len(r) for r in logit_rows], default=1)
        inputs = self._tensors(batch, ids, pos, slots, bits, use, offsets, sample_index,
                               logit_rows, tree, roots)
        inputs.host, inputs.width = host, width
        return inputs

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


def accepted_moves(slots: Tensor, accepted: Tensor) -> tuple[Tensor, Tensor]:
    """The commit on the device (no host read): with ``slots [B, T]`` the cache slot of node i's
    position num_cached + i and ``accepted [B, T]`` the accepted path (node indices, root first,
    -1 after), the ``(src, dst) [B * T]`` pairs for `compact_kv` that move the j-th accepted
    node to position num_cached + j; -1 (skip) where nothing moves."""
    j = torch.arange(accepted.shape[1], device=accepted.device)  # [T]
    move = (accepted >= 0) & (accepted != j)  # [B, T]
    src = slots.gather(1, accepted.clamp(min=0)).masked_fill(~move, -1)
    return src.reshape(-1), slots.masked_fill(~move, -1).reshape(-1)


def _tree_lists(tree: DraftTree | None) -> list[list[list[int]]]:
    """Per-row lists (tokens, depth, ancestor bits) of the valid nodes: one host transfer."""
    if tree is None:
        return [[], [], []]
    b, t = tree.tokens.shape
    flat = torch.cat([torch.stack([tree.tokens, tree.depth, tree.ancestor_mask]).flatten(),
                      tree.num_nodes]).tolist()
    n = flat[3 * b * t:]
    return [[flat[(c * b + r) * t:(c * b + r) * t + n[r]] for r in range(b)] for c in range(3)]


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
