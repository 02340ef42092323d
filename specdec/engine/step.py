"""The step body: one target forward over a step's rows (draft trees and prefill chunks alike), the
logits of its sampling rows, the verifier, the KV commit and the one read-back, on tensors only.
The same function runs eagerly on a step's exact shapes or, captured per bucket, from a CUDA
graph (`ModelRunner`); step_inputs.py stages its inputs.

Rows. Tree rows come first, then chunk rows:
  * sequence slot b < B_t holds a draft tree of up to T nodes (the drafter's, taken from the
    DEVICE: the host never waits for the drafter). Node i is stored at position ``num_cached + i``
    and attends through its ancestor bitmask; its rotary position is ``num_cached + depth[i]``.
    *Padded* layout (graphs): node i of slot b is row ``b * T + i``; nodes past a tree's budget
    store nothing (slot -1) and see only themselves. *Packed* layout (eager): a tree's nodes are
    consecutive rows, ``src`` names the (b, i) of each row and ``row_of`` the row of each node;
  * chunk slot c holds ``num_new`` prompt tokens at their positions, causal.
Sampling rows (the verifier's batch) are the B_t trees, then one root-only tree per chunk slot
(the chunk's last token; only a chunk that ends its prompt uses it). After verification each
accepted node's K/V slides to ``num_cached + j`` (`accepted_moves`); the rejected nodes' slots
are overwritten by later steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from specdec.kernels import compact_kv
from specdec.models.attention import AttnMetadata
from specdec.verifiers import DraftTree, SamplingPlan

NODE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # T of a graphed step
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)  # N_c of a graphed prefill step


@dataclass(frozen=True)
class StepShape:
    """The sizes of one step's forward: a CUDA graph's bucket, or an eager step's exact sizes."""
    trees: int  # B_t: sequence slots holding a draft tree
    nodes: int  # T: node slots per tree
    chunks: int  # B_c: sequence slots holding a prefill chunk
    tokens: int  # N_c: rows of the packed chunks
    tree_rows: int  # N_t: rows of the trees (padded: B_t * T)
    table_width: int  # W: block-table entries per slot
    packed: bool  # trees packed (eager) or padded to T rows each (graphs)

    @property
    def slots(self) -> int:  # B_s = B_t + B_c: sequence slots, one sampling row each
        return self.trees + self.chunks

    @property
    def width(self) -> int:  # T_s: node columns of the verifier's batch
        return self.nodes if self.trees else 1


@dataclass
class StepOutputs:
    """What a step leaves on the device (a graph's static tensors: valid until its next run)."""
    hidden: Tensor  # [N_t + N_c, H] after the final norm
    captured: dict[int, Tensor]  # layer -> [N_t + N_c, H]
    result: Any  # VerifyResult over the B_s sampling rows
    tree: DraftTree  # [B_s, T_s] the verified trees
    readout: Tensor  # [B_s, 2 A + 4] int64: what the host reads (step_inputs.StepRead.parse)
    meta: AttnMetadata  # holds the attention plan, whose workspace a graph writes: keep it alive


@dataclass(frozen=True)
class Target:
    """What the body runs: the model, its paged KV cache and the verifier."""
    model: Any
    k_cache: Tensor  # [L, num_blocks, block_size, Hkv, D]
    v_cache: Tensor
    block_size: int
    capture_layers: tuple[int, ...]
    verifier: Any
    exact: bool = False  # batch-invariant forward and logits (engine.exact)


def step_body(t: Target, v: dict[str, Tensor], shape: StepShape, bounds: tuple[int, int],
              plan: SamplingPlan, validate: bool) -> StepOutputs:
    """One step on the inputs ``v`` (step_inputs.stage's names). ``bounds``: host upper bounds of
    new rows per sequence and of ``num_cached + new`` (the attention plan). ``validate``: read
    the verified trees' facts (eager steps only: a graph reads nothing back)."""
    bt, t_, bc = shape.trees, shape.nodes, shape.chunks
    dev = v["prefix"].device
    prefix = v["prefix"].long()  # [B_s]
    masked = bt > 0 and t_ > 1  # tree rows attend through ancestor masks (one node: causal)
    valid = num = None
    if bt:
        num = torch.minimum(v["num"], v["budget"])  # [B_t] nodes stored and verified
        node = torch.arange(t_, device=dev)
        valid = node < num[:, None]  # [B_t, T] (padding slots: none)
    tree = _verified_trees(v, shape, num, valid, validate)  # [B_s, T_s]
    ids, pos, slots, bits = [], [], [], []
    if bt:
        stored = torch.where(valid, prefix[:bt, None] + node, 0)  # [B_t, T] node i's position
        bs = t.block_size
        tree_slots = v["tables"][:bt].gather(1, stored // bs).long() * bs + stored % bs
        tree_slots = tree_slots.masked_fill(~valid, -1)
        rows = [(ids, tree.tokens[:bt]), (pos, prefix[:bt, None] + tree.depth[:bt]), (slots, tree_slots)]
        if masked:  # a node past the budget sees only itself
            own_bit = torch.ones((), dtype=torch.long, device=dev) << node
            rows.append((bits, torch.where(valid, tree.ancestor_mask[:bt], own_bit)))
        for out, x in rows:
            out.append(x.reshape(-1)[v["src"]] if shape.packed else x.reshape(-1))
    if bc:
        ids.append(v["ids"])
        pos.append(v["pos"])
        slots.append(v["slots"])
        if masked:
            bits.append(torch.zeros_like(v["ids"]))
    use = None
    if masked and bc:
        use = torch.arange(shape.slots, device=dev) < bt  # [B_s] trees masked, chunks causal
    meta = AttnMetadata(v["indptr"], v["prefix"], v["tables"], _cat(slots),
                        tree_mask=_cat(bits) if masked else None, use_tree_mask=use,
                        max_q_len=bounds[0], max_kv_len=bounds[1])
    out = t.model(_cat(ids), _cat(pos), meta, t.k_cache, t.v_cache,
                  capture_layers=t.capture_layers, exact=t.exact)
    logits = _sampling_logits(t.model, out.hidden, v, shape, t.exact)  # [B_s, T_s, V]
    result = t.verifier.verify(tree, logits, v["temp"], v["top_p"], v["top_k"], v["unif"],
                               plan=plan, check=False)
    if bt:  # the commit: each accepted node's K/V slides to num_cached + j
        compact_kv(t.k_cache, t.v_cache, *accepted_moves(tree_slots, result.accepted_nodes[:bt]))
    if not bt:  # [B_s] nodes each row drafted (a chunk's root-only tree: 1)
        drafted = tree.num_nodes
    else:
        drafted = _cat([v["num"]] + ([torch.ones(bc, dtype=torch.long, device=dev)] if bc else []))
    readout = torch.cat([result.accepted_nodes, result.num_accepted[:, None],  # [B_s, A + 2]
                         result.bonus_token[:, None], result.accepted_tokens,  # + A - 1
                         drafted[:, None], tree.tokens[:, :1], tree.depth.amax(1, keepdim=True)], 1)  # + 3
    return StepOutputs(out.hidden, out.captured, result, tree, readout, meta)


def _verified_trees(v: dict[str, Tensor], shape: StepShape, num, valid, validate: bool) -> DraftTree:
    """The verifier's batch ``[B_s, T_s]``: each tree cut to ``num [B_t]`` nodes (``valid [B_t,
    T]``), its budget (the nodes past it are neither stored nor verified), then a root-only tree
    per chunk slot."""
    bt, bc, width = shape.trees, shape.chunks, shape.width
    parts = []
    if bt:
        parts.append((v["tok"].masked_fill(~valid, 0), v["par"].masked_fill(~valid, -1),
                      num.clamp(min=1), v["kind"].masked_fill(~valid, 0)))
    if bc:
        roots = F.pad(v["ids"][v["last"]][:, None], (0, width - 1))  # [B_c, T_s]
        parts.append((roots, torch.full_like(roots, -1), torch.ones_like(v["last"]),
                      torch.zeros_like(roots, dtype=torch.int8)))
    tokens, parents, num, kind = (_cat(list(x)) for x in zip(*parts))
    probs = v.get("probs")
    if probs is not None and bc:
        probs = torch.cat([probs, probs.new_zeros(bc, *probs.shape[1:])])
    return DraftTree(tokens, parents, num, kind=kind, draft_probs=probs, validate=validate)


def _cat(xs: list[Tensor]) -> Tensor:
    """``torch.cat``, without the copy (a kernel in every replay) when there is one part."""
    return xs[0] if len(xs) == 1 else torch.cat(xs)


def _sampling_logits(model, hidden: Tensor, v: dict[str, Tensor], shape: StepShape,
                     exact: bool) -> Tensor:
    """Logits ``[B_s, T_s, V]`` float32 of the sampling rows: every tree node, each chunk's last
    token (its other columns zero)."""
    parts = []
    if shape.trees:
        tree_rows = hidden[: shape.tree_rows]
        logits = model.compute_logits(tree_rows, exact=exact)  # [N_t, V]
        if shape.packed:
            logits = logits[v["row_of"].reshape(-1)]
        parts.append(logits.view(shape.trees, shape.nodes, -1))
    if shape.chunks:
        last = model.compute_logits(hidden[shape.tree_rows + v["last"]], exact=exact)  # [B_c, V]
        parts.append(F.pad(last[:, None], (0, 0, 0, shape.width - 1)))
    return _cat(parts)


def accepted_moves(slots: Tensor, accepted: Tensor) -> tuple[Tensor, Tensor]:
    """The commit, on the device: with ``slots [B, T]`` the cache slot of node i's position
    num_cached + i and ``accepted [B, A]`` (A <= T) the accepted path (node indices, root first,
    -1 after), the ``(src, dst) [B * A]`` pairs for `compact_kv` that move the j-th accepted node
    to position num_cached + j; -1 (skip) where nothing moves."""
    j = torch.arange(accepted.shape[1], device=accepted.device)  # [A]
    move = (accepted >= 0) & (accepted != j)  # [B, A]
    src = slots.gather(1, accepted.clamp(min=0)).masked_fill(~move, -1)
    dst = slots[:, : accepted.shape[1]].masked_fill(~move, -1)
    return src.reshape(-1), dst.reshape(-1)


def bounds_of(shape: StepShape, max_model_len: int) -> tuple[int, int]:
    """A graph's attention bounds: new rows per sequence, and cached + new positions."""
    nodes = shape.nodes if shape.trees else 0
    return max(nodes, shape.tokens), max_model_len + nodes
