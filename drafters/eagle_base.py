"""What EAGLE-1/2 and EAGLE-3 drafters share: per-sequence target features, the draft's own paged
KV cache (``aux_tables['eagle']``), the catch-up, and static / dynamic tree growth.

Alignment (EAGLE, Li et al. 2024, sec. 3): draft pair i is (feature f_i of target position i,
token t_{i+1}); it sits at draft position i (rope position i) and predicts f_{i+1}, whose logits
score t_{i+2}. With ``L = len(seq)`` the root t_{L-1} is not yet in the target's cache, the
target has produced f_0 .. f_{L-2}, so the draft holds pairs 0 .. L-2 and the last one, pair
(f_{L-2}, root), scores the depth-1 children. A tree node at depth d >= 1 is the pair (feature
predicted for its parent, its token) at draft position L - 2 + d.

Per step: `update` keeps the target features of what the step settled (prefill rows; the accepted
path of a decode step), `propose` first runs the pairs not yet in the draft cache (the catch-up,
stored at their positions and kept), then grows the tree level by level. Tree nodes are scratch:
each level re-runs every expanded node as new tokens under its ancestor mask (the paged kernels
see any cached prefix whole, so sibling branches cannot live there) at draft positions from
L - 1 on, which the next catch-up overwrites. After preemption (`release`) everything restarts
from the recomputed prefill's features.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from specdec.engine import ragged
from specdec.verifiers import DraftTree

from .base import DrafterBase, StepResult
from .draft_attention import paged
from .eagle_tree import MAX_ROWS, StaticPlan, append_rows, expand_topk
from .tree_growth import Candidates, select

TABLE = "eagle"


class EagleDrafterBase(DrafterBase):
    """Subclasses set ``self.net`` in `load` and define `target_features` and `top_children`."""
    name = "eagle"
    shipped_as = "eagle"  # drafters/weights/<target>/<shipped_as> is `path: default`

    def __init__(self, path: str, total_tokens: int | str = 60, depth: int = 6, top_k: int = 10,
                 tree_choices: Optional[Sequence[Sequence[int]]] = None, pool_all: bool = True) -> None:
        from . import formats

        path = formats.expand_default(path, self.shipped_as)
        formats.check_path(path, f"drafter={self.name}")  # fail before the target loads
        self.path, self.pool_all = path, pool_all
        self.plan = StaticPlan.build(tree_choices) if tree_choices else None
        if self.plan is not None:
            self.max_nodes, self.depth, self.top_k = self.plan.choices.num_nodes, self.plan.choices.max_depth, 0
            self.max_rows = len(self.plan.rows)
            self.auto = False
        else:
            _check_dynamic(self.name, total_tokens, depth, top_k)
            self.depth, self.top_k = depth, top_k
            self.auto = total_tokens == "auto"
            self.max_nodes = 64 if self.auto else int(total_tokens)
            self.max_rows = (depth - 1) * top_k
        self.cached: dict[int, int] = {}  # seq_id -> draft pairs whose K/V are valid (0 .. n-1)
        self.pending: dict[int, tuple[int, Tensor]] = {}  # seq_id -> (first position, features [n, h])

    @property
    def static(self) -> bool:
        return self.plan is not None

    # ---- loading ------------------------------------------------------------------------------
    def attach(self, net) -> None:
        """Use ``net`` (loaded or built in memory) with the target in ``self.target``."""
        t = self.target
        self.net = net.to(t.device, t.dtype).eval().requires_grad_(False)
        cfg = net.config
        shape = (net.num_layers, t.blocks.num_blocks, t.blocks.block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=t.dtype, device=t.device)  # [L, nb, bs, Hkv, D]
        self.v_cache = torch.zeros_like(self.k_cache)
        if self.auto:
            from .auto_budget import choose_total_tokens

            self.max_nodes = choose_total_tokens(t, self.depth)

    def kv_demand(self, seq, lookahead: int) -> dict[str, int]:
        return {TABLE: len(seq) + self.max_rows}

    def release(self, seq) -> None:
        self.cached.pop(seq.seq_id, None)
        self.pending.pop(seq.seq_id, None)

    # ---- target features ----------------------------------------------------------------------
    def target_features(self, step: StepResult, rows: Tensor) -> Tensor:
        """The draft's input features ``[n, h]`` at hidden rows ``rows [n]`` of the step."""
        raise NotImplementedError

    @torch.inference_mode()
    def update(self, step: StepResult) -> None:
        """Keep the features of the positions this step settled, per sequence, in order."""
        rows, spans = self._settled_rows(step)
        if not spans:
            return
        feats = self.target_features(step, torch.tensor(rows, device=step.hidden.device))  # [n, h]
        offset = 0
        for seq, first, count in spans:
            self._append(seq.seq_id, first, feats[offset: offset + count])
            offset += count

    def _settled_rows(self, step: StepResult):
        """(hidden rows, [(seq, first position, count)]): a prefill's rows, a decode's accepted path."""
        paths = _accepted(step.result)
        rows, spans = [], []
        for b, seq in enumerate(step.seqs):
            start, prefix = step.row_offsets[b], step.prefix_lens[b]
            if step.is_prefill[b]:
                nodes = list(range(step.num_new[b]))
            elif step.sample_index[b] >= 0:
                nodes = paths[step.sample_index[b]]
            else:
                continue
            rows += [start + n for n in nodes]
            spans.append((seq, prefix, len(nodes)))
        return rows, spans

    def _append(self, seq_id: int, first: int, feats: Tensor) -> None:
        if seq_id in self.pending:
            start, old = self.pending[seq_id]
            if first != start + old.shape[0]:
                raise AssertionError(f"{self.name}: features of sequence {seq_id} arrive at position "
                                     f"{first}, expected {start + old.shape[0]}")
            self.pending[seq_id] = (start, torch.cat([old, feats]))
        else:
            self.pending[seq_id] = (first, feats)

    # ---- drafting -----------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        root_feat, top_lp, top_ids = self._catch_up(seqs)  # [B, h], [B, 1, k] x2
        if self.static:
            tokens, parents = self._grow_static(seqs, root_feat, top_ids)
        else:
            tokens, parents = self._grow_dynamic(seqs, root_feat, top_lp, top_ids, max(budgets))
        dev = tokens.device
        nodes = torch.tensor([min(b, tokens.shape[1]) for b in budgets], device=dev)
        parents = parents.masked_fill(torch.arange(tokens.shape[1], device=dev) >= nodes[:, None], -1)
        return DraftTree(tokens, parents, nodes)

    def top_children(self, out: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Draft log-probs and TARGET ids of the ``k`` best next tokens after draft outputs
        ``out [..., h]``: ``([..., k], [..., k])``."""
        raise NotImplementedError

    def _width(self) -> int:
        return self.plan.width if self.static else self.top_k

    def _catch_up(self, seqs):
        """Run every pair not yet in the draft cache; returns the last pair's output (the root's
        feature) and its best children."""
        ids, feats, pos, starts, counts = [], [], [], [], []
        for s in seqs:
            start, end = self.cached.get(s.seq_id, 0), len(s) - 1  # pairs start .. end - 1
            feats.append(self._take_features(s, start, end))
            ids += s.tokens[start + 1: end + 1]
            pos += range(start, end)
            starts.append(start)
            counts.append(end - start)
            self.cached[s.seq_id] = end
        out = self._forward(seqs, starts, counts, ids, pos, None, torch.cat(feats))  # [N, h]
        last = torch.tensor(counts, device=out.device).cumsum(0) - 1
        root = out[last]  # [B, h]
        lp, tid = self.top_children(root, self._width())
        return root, lp[:, None], tid[:, None]

    def _take_features(self, seq, start: int, end: int) -> Tensor:
        first, feats = self.pending.pop(seq.seq_id, (start, None))
        if feats is None or first != start or feats.shape[0] < end - start:
            have = "none" if feats is None else f"positions {first}..{first + feats.shape[0] - 1}"
            raise AssertionError(f"{self.name}: sequence {seq.request_id} needs target features for "
                                 f"positions {start}..{end - 1}, has {have}")
        return feats[: end - start]

    def _forward(self, seqs, prefix, counts, ids, positions, bits, feats) -> Tensor:
        """One ragged draft forward: new pair i of sequence b stored at draft position
        ``prefix[b] + i``; ``feats [N, h]`` are the pairs' input features. Returns ``[N, h]``."""
        bs, dev = self.target.blocks.block_size, self.target.device
        tables = [s.aux_tables[TABLE] for s in seqs]
        slots = [x for t, st, n in zip(tables, prefix, counts) for x in ragged.slots(t, st, n, bs)]
        use = None if bits is None else [True] * len(seqs)
        meta = ragged.attn_metadata(tables, prefix, counts, slots, dev, bits, use)
        emb = self.target.model.embed(torch.tensor(ids, dtype=torch.long, device=dev))
        attends = [paged(self.k_cache[i], self.v_cache[i], meta) for i in range(self.net.num_layers)]
        return self.net(emb, feats, torch.tensor(positions, device=dev), attends)

    def _forward_rows(self, seqs, tokens: Tensor, parent_row: Tensor, depth: Tensor, masks: Tensor,
                      root_feat: Tensor, prev: Optional[Tensor]) -> Tensor:
        """Run tree rows ``[B, R]`` (tokens, parent row or -1, depth >= 1, ancestor masks among
        rows); a row's input feature is its parent's output (``prev [B, R', h]``) or the root's.
        Returns ``[B, R, h]``."""
        b, r = tokens.shape
        feat = root_feat[:, None].expand(b, r, -1)
        if prev is not None:
            from_parent = prev.gather(1, parent_row.clamp(min=0)[:, :, None].expand(-1, -1, prev.shape[-1]))
            feat = torch.where((parent_row >= 0)[:, :, None], from_parent, feat)
        ctx = [len(s) - 1 for s in seqs]  # valid draft pairs; rows go after them
        pos = [c - 1 + d for c, row in zip(ctx, depth.tolist()) for d in row]
        out = self._forward(seqs, ctx, [r] * b, tokens.flatten().tolist(), pos,
                            masks.flatten().tolist(), feat.reshape(b * r, -1))
        return out.view(b, r, -1)

    def _grow_dynamic(self, seqs, root_feat, top_lp, top_ids, budget: int):
        b, dev = len(seqs), root_feat.device
        cands = Candidates.start(torch.tensor([s.tokens[-1] for s in seqs], device=dev))
        frontier = torch.zeros(b, 1, dtype=torch.long, device=dev)
        rows = _Rows.empty(b, dev)
        out = None
        for level in range(self.depth):
            cands, frontier, slot = expand_topk(cands, frontier, top_lp, top_ids, self.top_k, self.pool_all)
            if level + 1 == self.depth:
                break
            parent_row = slot + (level - 1) * self.top_k if level else torch.full_like(slot, -1)
            rows.add(cands.tokens.gather(1, frontier), parent_row, level + 1)
            out = self._forward_rows(seqs, rows.tokens, rows.parent, rows.depth, rows.masks, root_feat, out)
            top_lp, top_ids = self.top_children(out[:, -self.top_k:], self.top_k)  # [B, top_k, k]
        tokens, parents, _ = select(cands, min(self.max_nodes, budget))
        return tokens, parents

    def _grow_static(self, seqs, root_feat, root_ids):
        """Fill a static tree level by level; ``root_ids [B, 1, width]`` the root's best children."""
        plan, tc = self.plan, self.plan.choices
        b, dev = len(seqs), root_feat.device
        tokens = torch.zeros(b, tc.num_nodes, dtype=torch.long, device=dev)
        tokens[:, 0] = torch.tensor([s.tokens[-1] for s in seqs], device=dev)
        best = root_ids  # [B, 1 + rows so far, width]: index 0 = root, 1 + r = row r
        rows = _Rows.empty(b, dev)
        out = None
        for d, level in enumerate(plan.levels, start=1):
            par = torch.tensor([1 + plan.row_of(tc.parents[n]) for n in level], device=dev)
            rank = torch.tensor([tc.ranks[n] for n in level], device=dev)
            tokens[:, level] = best[:, par, rank]
            new = [n for n in plan.rows if tc.depths[n] == d]
            if not new or d == tc.max_depth:
                continue
            parent_row = torch.tensor([plan.row_of(tc.parents[n]) for n in new], device=dev).expand(b, -1)
            rows.add(tokens[:, new], parent_row, d)
            out = self._forward_rows(seqs, rows.tokens, rows.parent, rows.depth, rows.masks, root_feat, out)
            _, ids = self.top_children(out[:, -len(new):], plan.width)
            best = torch.cat([best, ids], 1)
        parents = torch.tensor(tc.parents, device=dev).expand(b, -1).clone()
        return tokens, parents


class _Rows:
    """The tree rows a draft forward runs (creation order)."""

    def __init__(self, tokens: Tensor, parent: Tensor, depth: Tensor, masks: Tensor) -> None:
        self.tokens, self.parent, self.depth, self.masks = tokens, parent, depth, masks  # [B, R] each

    @classmethod
    def empty(cls, b: int, device) -> "_Rows":
        z = torch.zeros(b, 0, dtype=torch.long, device=device)
        return cls(z, z, z, z)

    def add(self, tokens: Tensor, parent_row: Tensor, depth: int) -> None:
        self.masks = append_rows(self.masks, parent_row)
        self.tokens = torch.cat([self.tokens, tokens], 1)
        self.parent = torch.cat([self.parent, parent_row], 1)
        self.depth = torch.cat([self.depth, torch.full_like(tokens, depth)], 1)


def _accepted(result) -> list[list[int]]:
    if result is None:
        return []
    nodes, counts = result.accepted_nodes.tolist(), result.num_accepted.tolist()
    return [row[: n + 1] for row, n in zip(nodes, counts)]


def _check_dynamic(name: str, total_tokens, depth: int, top_k: int) -> None:
    if total_tokens != "auto" and not (isinstance(total_tokens, int) and 2 <= total_tokens <= 64):
        raise ValueError(f"{name}: total_tokens (tree budget incl. the root) must be an int in "
                         f"[2, 64] or 'auto'; got {total_tokens!r}")
    if depth < 1 or top_k < 1:
        raise ValueError(f"{name}: depth and top_k must be >= 1; got depth={depth}, top_k={top_k}")
    if (depth - 1) * top_k > MAX_ROWS:
        raise ValueError(f"{name}: depth {depth} and top_k {top_k} run (depth - 1) * top_k = "
                         f"{(depth - 1) * top_k} tree nodes through the draft; at most {MAX_ROWS} fit "
                         f"an ancestor bitmask")


def static_choices(tree_choices) -> Optional[list[list[int]]]:
    """Hydra hands lists of lists as ListConfig: plain lists, or None."""
    if tree_choices is None:
        return None
    return [list(map(int, c)) for c in tree_choices]

