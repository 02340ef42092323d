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

import numpy as np
import torch
from torch import Tensor

from specdec.engine import ragged
from specdec.engine.graphs import batch_buckets, bucket
from specdec.engine.protocol import StepResult
from specdec.models.attention import AttnMetadata
from specdec.verifiers import DraftTree

from .base import DrafterBase
from .draft_attention import paged
from .eagle_tree import (MAX_ROWS, StaticPlan, append_rows, expand_topk, next_frontier, pool_level,
                         pooled_candidates)
from .tree_growth import Candidates, select

TABLE = "eagle"


class EagleDrafterBase(DrafterBase):
    """Subclasses set ``self.net`` in `load` and define `target_features` and `top_children`."""
    name = "eagle"
    shipped_as = "eagle"  # drafters/weights/<target>/<shipped_as> is `path: default`
    fuse_on_cuda = True  # False: the plain draft layers on CUDA (profile_draft.py times both)
    # False: EAGLE-2 trees (pool_all) grow through the reference bookkeeping (`expand_topk`,
    # `_Rows`, all rows re-run at exact sizes) instead of `_grow_pooled`; tests compare the two
    fast_growth = True

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
        # the fused kernels for the draft layer run per level; rope rows for tree rows up to
        # max_rows past the context
        self.net = net.prepare(t.device, t.dtype, t.max_model_len + self.max_rows + 1, self.fuse_on_cuda)
        cfg = net.config
        shape = (net.num_layers, t.blocks.num_blocks, t.blocks.block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=t.dtype, device=t.device)  # [L, nb, bs, Hkv, D]
        self.v_cache = torch.zeros_like(self.k_cache)
        rows = torch.arange(self.max_rows, device=t.device)  # the fixed row layout of `_grow_pooled`
        self.row_depth = rows // max(self.top_k, 1) + 1  # [R] the tree depth of row r
        self.row_bits = torch.ones((), dtype=torch.long, device=t.device) << rows  # [R] own bits
        if self.static:
            depths = range(1, self.plan.choices.max_depth + 1)
            self.levels = [_Level(self.plan, d, t.device) for d in depths]
            self.static_parents = torch.tensor(self.plan.choices.parents, device=t.device)  # [T]
        if self.auto:
            from .auto_budget import choose_total_tokens

            self.max_nodes = choose_total_tokens(t, self.depth)
        self._setup_graphs()

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
        paths = step.accepted
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
        """Host staging (`_stage`), then the device work (`_draft`): replayed from a CUDA graph
        per batch bucket when the engine allows graphs, else run eagerly on exact shapes."""
        keep = self.max_nodes if self.static else min(self.max_nodes, max(budgets))
        bg = bucket(len(seqs), self.buckets)
        if bg is not None and any(len(s.aux_tables[TABLE]) > self.table_width for s in seqs):
            bg = None
        if bg is not None:
            self._catch_up_long(seqs, self.graph_rows)
        return self.graphs.run(*self._inputs(seqs, budgets, keep, bg))

    def _inputs(self, seqs, budgets, keep: int, bg: Optional[int]):
        """``(key, host, body, dev)`` of a `GraphRunner.run` for ``bg`` sequence slots (None:
        eager, on exact shapes)."""
        rows = None if bg is None else self.graph_rows
        host, feats, max_q = self._stage(seqs, budgets, keep, bg or len(seqs), rows)
        if bg is None:
            bounds, key = (max_q, int(host["ctx"].max(initial=1))), None
        else:
            bounds, key = (self.graph_rows, self.target.max_model_len), (bg, keep)
        body = lambda v: self._draft(v, keep, *bounds, validate=bg is None)  # noqa: E731
        return key, host, body, {"feats": (feats, ((bg or 0) * self.graph_rows, feats.shape[-1]))}

    @torch.inference_mode()
    def warm_up(self) -> int:
        """Capture the graph of every batch bucket now (dummy all-padding inputs); returns the
        count. The engine calls it at start, with its own graphs."""
        return self.graphs.warm_up(self._inputs([], [], self.max_nodes, bg) for bg in self.buckets)

    def top_children(self, out: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Draft log-probs and TARGET ids of the ``k`` best next tokens after draft outputs
        ``out [..., h]``: ``([..., k], [..., k])``."""
        raise NotImplementedError

    def _width(self) -> int:
        return self.plan.width if self.static else self.top_k

    def _feature_width(self) -> int:
        return self.net.fc.out_features

    # ---- graphs -------------------------------------------------------------------------------
    def _setup_graphs(self) -> None:
        """CUDA graphs when the engine allows them (``TargetContext.graph_batch``). A graph's
        catch-up holds ``graph_rows`` pairs per sequence: after a decode step a sequence has as
        many new pairs as accepted nodes (root included), at most tree depth + 1."""
        t = self.target
        self.graph_rows = (self.plan.choices.max_depth if self.static else self.depth) + 1
        self.table_width = ragged.table_width(t.max_model_len + self.max_rows, t.blocks.block_size)
        self.graphs = t.graph_runner()
        self.buckets = batch_buckets(t.graph_batch) if t.graph_batch else ()


    def _catch_up_long(self, seqs, rows: int) -> None:
        """Eagerly run all but the last pair of sequences with more than ``rows`` pairs to catch
        up (the prompt after a prefill, the whole history after preemption), so that the graph's
        fixed catch-up width holds every sequence."""
        long = [s for s in seqs if len(s) - 1 - self.cached.get(s.seq_id, 0) > rows]
        if not long:
            return
        ids, feats, pos, starts, counts = [], [], [], [], []
        for s in long:
            start, end = self.cached.get(s.seq_id, 0), len(s) - 1
            f = self._take_features(s, start, end)  # [end - start, h]
            feats.append(f[:-1])
            self.pending[s.seq_id] = (end - 1, f[-1:])
            ids += s.tokens[start + 1: end]
            pos += range(start, end - 1)
            starts.append(start)
            counts.append(end - 1 - start)
            self.cached[s.seq_id] = end - 1
        self._forward(long, starts, counts, ids, pos, None, torch.cat(feats))

    # ---- host staging -------------------------------------------------------------------------
    def _stage(self, seqs, budgets, keep: int, bg: int, rows: Optional[int]):
        """Host inputs of `_draft` for ``bg`` sequence slots (``len(seqs)`` real ones, the rest
        padding that stores nothing), their features ``[n, h]`` and the catch-up's longest run.
        ``rows``: pairs per sequence slot in a graph (packed, trailing padding), None: exact."""
        n = len(seqs)
        starts = np.array([self.cached.get(s.seq_id, 0) for s in seqs], np.int64)  # pairs start ..
        ends = np.array([len(s) - 1 for s in seqs], np.int64)  # .. end - 1
        total = int((ends - starts).sum()) if rows is None else bg * rows
        width = max((len(s.aux_tables[TABLE]) for s in seqs), default=1) if rows is None else self.table_width
        tables = ragged.table_array([s.aux_tables[TABLE] for s in seqs], bg, width)  # [bg, W]
        indptr, pos, slots, real_rows = ragged.packed_runs(  # [bg + 1], [Nc] x2, [n, R]
            starts, ends, tables, self.target.blocks.block_size, total, self.max_rows)
        row_slots = np.full((bg, self.max_rows), -1, np.int64)  # [bg, R] tree rows' slots
        row_slots[:n] = real_rows
        ids = np.zeros(total, np.int64)  # [Nc] pair i of b: (feature at start_b + i, next token)
        start_lens, ctx, last = np.zeros(bg, np.int32), np.zeros(bg, np.int32), np.zeros(bg, np.int64)
        start_lens[:n], ctx[:n], last[:n] = starts, ends, indptr[1:n + 1] - 1
        roots, nodes = np.zeros(bg, np.int64), np.ones(bg, np.int64)  # [bg]
        nodes[:n] = np.minimum(np.asarray(budgets[:n], np.int64), keep)
        feats = []
        for b, (s, start, end) in enumerate(zip(seqs, starts.tolist(), ends.tolist())):
            feats.append(self._take_features(s, start, end))
            ids[indptr[b]:indptr[b + 1]] = s.tokens[start + 1: end + 1]
            roots[b] = s.tokens[-1]
            self.cached[s.seq_id] = end
        host = {"ids": ids, "pos": pos, "slots": slots, "indptr": indptr, "start": start_lens,
                "last": last, "ctx": ctx, "tables": tables, "row_slots": row_slots, "roots": roots,
                "nodes": nodes}
        dev, dt = self.target.device, self.target.dtype
        feats = torch.cat(feats) if feats else torch.zeros(0, self._feature_width(), dtype=dt, device=dev)
        return host, feats, int((ends - starts).max()) if n else 1

    def _take_features(self, seq, start: int, end: int) -> Tensor:
        first, feats = self.pending.pop(seq.seq_id, (start, None))
        if feats is None or first != start or feats.shape[0] < end - start:
            have = "none" if feats is None else f"positions {first}..{first + feats.shape[0] - 1}"
            raise AssertionError(f"{self.name}: sequence {seq.request_id} needs target features for "
                                 f"positions {start}..{end - 1}, has {have}")
        return feats[: end - start]

    # ---- device work (no host reads: it is what a graph replays) ------------------------------
    def _draft(self, v: dict[str, Tensor], keep: int, max_q: int, kv_bound: int, validate: bool) -> DraftTree:
        """Catch up, then grow the tree. ``v``: `_stage`'s inputs as tensors plus ``feats``;
        ``max_q`` bounds the pairs per sequence, ``kv_bound`` the context lengths."""
        meta = AttnMetadata(v["indptr"], v["start"], v["tables"], v["slots"], max_q_len=max_q,
                            max_kv_len=kv_bound)
        out = self._run(meta, v["ids"], v["pos"], v["feats"])  # [Nc, h]
        root_feat = out[v["last"]]  # [B, h] the last pair's output: the root's feature
        lp, tid = self.top_children(root_feat, self._width())  # [B, k] x2
        rows_fn = lambda rows, prev: self._forward_rows(v, kv_bound, rows, root_feat, prev)  # noqa: E731
        if self.static:
            tokens, parents = self._grow_static(v["roots"], tid[:, None], rows_fn)
        elif self.pool_all and self.fast_growth:
            tokens, parents = self._grow_pooled(v, kv_bound, root_feat, lp, tid, keep)
        else:
            tokens, parents = self._grow_dynamic(v["roots"], lp[:, None], tid[:, None], keep, rows_fn)
        nodes = v["nodes"]  # [B]
        parents = parents.masked_fill(torch.arange(tokens.shape[1], device=tokens.device) >= nodes[:, None], -1)
        depth = self.plan.choices.max_depth if self.static else self.depth
        return DraftTree(tokens, parents, nodes, validate=validate, depth_bound=None if validate else depth)

    def _run(self, meta: AttnMetadata, ids: Tensor, pos: Tensor, feats: Tensor, rope=None) -> Tensor:
        """The draft net over new pairs ``ids, pos [N]``, input features ``feats [N, h]``;
        ``rope``: their (cos, sin) when already at hand."""
        emb = self.target.model.embed(ids)  # [N, h]
        attends = [paged(self.k_cache[i], self.v_cache[i], meta) for i in range(self.net.num_layers)]
        return self.net(emb, feats, pos, attends, rope)  # [N, h]

    def _forward(self, seqs, prefix, counts, ids, positions, bits, feats) -> Tensor:
        """One ragged draft forward from host lists: new pair i of sequence b stored at draft
        position ``prefix[b] + i``; ``feats [N, h]``. Returns ``[N, h]``."""
        bs, dev = self.target.blocks.block_size, self.target.device
        tables = [s.aux_tables[TABLE] for s in seqs]
        slots = [x for t, st, n in zip(tables, prefix, counts) for x in ragged.slots(t, st, n, bs)]
        use = None if bits is None else [True] * len(seqs)
        meta = ragged.attn_metadata(tables, prefix, counts, slots, dev, bits, use)
        return self._run(meta, torch.tensor(ids, dtype=torch.long, device=dev),
                         torch.tensor(positions, device=dev), feats)

    def _forward_rows(self, v: dict[str, Tensor], kv_bound: int, rows: "_Rows", root_feat: Tensor,
                      prev: Optional[Tensor]) -> Tensor:
        """Run tree rows ``[B, R]`` (tokens, parent row or -1, depth >= 1, ancestor masks among
        rows) after each sequence's ``ctx`` valid pairs, at draft positions ``ctx - 1 + depth``
        and slots ``row_slots[:, :R]``; a row's input feature is its parent's output
        (``prev [B, R', h]``) or the root's (``root_feat [B, h]``). Returns ``[B, R, h]``."""
        b, r = rows.tokens.shape
        feat = root_feat[:, None].expand(b, r, -1)
        if prev is not None:
            from_parent = prev.gather(1, rows.parent.clamp(min=0)[:, :, None].expand(-1, -1, prev.shape[-1]))
            feat = torch.where((rows.parent >= 0)[:, :, None], from_parent, feat)
        pos = v["ctx"].long()[:, None] - 1 + rows.depth  # [B, R]
        indptr = torch.arange(b + 1, dtype=torch.int32, device=pos.device) * r  # [B + 1]
        meta = AttnMetadata(indptr, v["ctx"], v["tables"], v["row_slots"][:, :r].reshape(-1),
                            tree_mask=rows.masks.reshape(-1), max_q_len=r, max_kv_len=kv_bound + r)
        out = self._run(meta, rows.tokens.reshape(-1), pos.reshape(-1), feat.reshape(b * r, -1))
        return out.view(b, r, -1)

    def _grow_dynamic(self, roots: Tensor, top_lp: Tensor, top_ids: Tensor, keep: int, rows_fn):
        """EAGLE-2: ``top_lp, top_ids [B, 1, k]`` the root's best children; ``rows_fn(rows,
        prev)`` runs the draft over the rows so far."""
        b, dev = roots.shape[0], roots.device
        cands = Candidates.start(roots)
        frontier = torch.zeros(b, 1, dtype=torch.long, device=dev)
        rows = _Rows.empty(b, dev)
        out = None
        for level in range(self.depth):
            cands, frontier, slot = expand_topk(cands, frontier, top_lp, top_ids, self.top_k, self.pool_all)
            if level + 1 == self.depth:
                break
            parent_row = slot + (level - 1) * self.top_k if level else torch.full_like(slot, -1)
            rows.add(cands.tokens.gather(1, frontier), parent_row, level + 1)
            out = rows_fn(rows, out)
            top_lp, top_ids = self.top_children(out[:, -self.top_k:], self.top_k)  # [B, top_k, k]
        tokens, parents, _ = select(cands, keep, check=False)
        return tokens, parents

    def _grow_pooled(self, v: dict[str, Tensor], kv_bound: int, root_feat: Tensor, root_lp: Tensor,
                     root_ids: Tensor, keep: int) -> tuple[Tensor, Tensor]:
        """EAGLE-2 with every proposed child pooled, in few kernels per level (a speculative step
        of a small target is launch-bound; `_grow_dynamic` is the reference, tested equal):

          * the rows live in fixed ``[B, R]`` buffers (R = ``max_rows``), filled level by level,
            and every level runs the draft over all R of them, so each forward has one shape and
            positions and rope rows are computed once per tree. A row not grown yet (token 0,
            zero feature, only its own mask bit) is in no grown row's mask, and what it stores
            at its scratch position is overwritten when it grows or by the next catch-up, so it
            changes nothing;
          * the candidate pool is assembled once at the end (`pooled_candidates`) instead of
            growing four tensors per level.

        ``root_lp, root_ids [B, k]``: the root's best children. Returns kept (tokens, parents)."""
        b, w, r, h = root_feat.shape[0], self.top_k, self.max_rows, root_feat.shape[-1]
        dev = root_feat.device
        joints, child_tokens, bests = [], [], []
        score = torch.zeros(b, 1, dtype=root_lp.dtype, device=dev)  # [B, K] frontier joint log-probs
        masks = torch.zeros(b, 1, dtype=torch.long, device=dev)  # [B, K] frontier rows' ancestor masks
        top_lp, top_ids = root_lp[:, None], root_ids[:, None]  # [B, K, w]
        if r:
            row_tokens = torch.zeros(b, r, dtype=torch.long, device=dev)  # [B, R]
            row_masks = self.row_bits.expand(b, r).clone()  # [B, R] ancestor masks among rows
            row_feats = torch.zeros(b, r, h, dtype=root_feat.dtype, device=dev)  # [B, R, h]
            pos = (v["ctx"].long()[:, None] - 1 + self.row_depth).reshape(-1)  # [B * R]
            rope = self.net.rotary(pos, root_feat.dtype)
            indptr = torch.arange(b + 1, dtype=torch.int32, device=dev) * r  # [B + 1]
            slots = v["row_slots"][:, :r].reshape(-1)  # [B * R]
        out = None
        for level in range(self.depth):
            joint, tokens = pool_level(score, top_lp, top_ids)  # [B, K * w] x2
            joints.append(joint)
            child_tokens.append(tokens)
            if level + 1 == self.depth:
                break
            cols = slice(level * w, (level + 1) * w)  # this level's rows
            best, score, new_tokens, slot, masks = next_frontier(joint, tokens, masks, self.row_bits[cols], w)
            bests.append(best)
            row_tokens[:, cols] = new_tokens
            row_masks[:, cols] = masks
            if out is None:
                row_feats[:, cols] = root_feat[:, None]
            else:  # a row's input feature is its parent row's output
                parent_out = out[:, (level - 1) * w: level * w]  # [B, w, h]
                row_feats[:, cols] = parent_out.gather(1, slot[:, :, None].expand(-1, -1, h))
            meta = AttnMetadata(indptr, v["ctx"], v["tables"], slots,
                                tree_mask=row_masks.reshape(-1), max_q_len=r, max_kv_len=kv_bound + r)
            out = self._run(meta, row_tokens.reshape(-1), pos, row_feats.reshape(b * r, h), rope).view(b, r, h)
            top_lp, top_ids = self.top_children(out[:, cols], w)  # [B, w, w] x2
        cands = pooled_candidates(v["roots"], joints, child_tokens, bests, w)
        tokens, parents, _ = select(cands, keep, check=False)
        return tokens, parents

    def _grow_static(self, roots: Tensor, root_ids: Tensor, rows_fn):
        """Fill a static tree level by level; ``root_ids [B, 1, width]`` the root's best children."""
        b, num_nodes = roots.shape[0], self.plan.choices.num_nodes
        tokens = torch.zeros(b, num_nodes, dtype=torch.long, device=roots.device)
        tokens[:, 0] = roots
        best = root_ids  # [B, 1 + rows so far, width]: index 0 = root, 1 + r = row r
        rows = _Rows.empty(b, roots.device)
        out = None
        for d, lv in enumerate(self.levels, start=1):
            tokens[:, lv.nodes] = best[:, lv.parent_index, lv.rank]
            if lv.rows is None:
                continue
            rows.add(tokens[:, lv.rows], lv.parent_row.expand(b, -1), d)
            out = rows_fn(rows, out)
            _, ids = self.top_children(out[:, -lv.rows.shape[0]:], self.plan.width)
            best = torch.cat([best, ids], 1)
        return tokens, self.static_parents.expand(b, -1).clone()


class _Level:
    """A static tree's depth as device index tensors (built once: a graph cannot build them)."""

    def __init__(self, plan: StaticPlan, depth: int, device) -> None:
        tc = plan.choices
        level = plan.levels[depth - 1]
        as_t = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
        self.nodes = as_t(level)  # [n] the nodes at this depth
        self.parent_index = as_t([1 + plan.row_of(tc.parents[n]) for n in level])  # [n] into `best`
        self.rank = as_t([tc.ranks[n] for n in level])  # [n]
        new = [n for n in plan.rows if tc.depths[n] == depth]
        run = bool(new) and depth != tc.max_depth
        self.rows = as_t(new) if run else None  # [r] nodes run through the draft at this depth
        self.parent_row = as_t([plan.row_of(tc.parents[n]) for n in new]) if run else None  # [r]


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

