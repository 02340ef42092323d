"""What the EAGLE-1/2 and EAGLE-3 drafters share: the drafter protocol over the package's parts.

A step: `update` keeps the target features of what the step settled (features.py); `propose`
stages the host inputs (staging.py) and runs the device work (draft.py), replayed from a CUDA graph
per batch bucket when the engine allows graphs: the catch-up over the pairs not yet in the draft's
KV cache, stored at their positions and kept, then the tree, grown level by level (growth/). Tree
nodes are scratch: a node at depth d >= 1 is the pair (feature predicted for its parent, its
token) at draft position L - 2 + d, which the next catch-up overwrites; each level re-runs the
grown nodes as new tokens under their ancestor masks (the paged kernels see any cached prefix
whole, so sibling branches cannot live there).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from specdec.engine.graphs import batch_buckets, bucket
from specdec.engine.protocol import StepResult
from specdec.engine.ragged import table_width, warm_up_run
from specdec.verifiers import DraftTree

from .. import formats
from ..base import DrafterBase
from ..rows import row_index
from .draft import TABLE, DraftForward, draft
from .features import FeatureStore, settled_rows
from .growth import make_growth
from .growth.static import StaticGrowth
from .staging import Stager


LEVELS = (8, 16, 24, 32)  # node budgets below the configured one that a policy may choose


class EagleDrafterBase(DrafterBase):
    """Subclasses set the net in `load` (through `attach`) and define `target_features` and
    `top_children`."""
    name = "eagle"
    shipped_as = "eagle"  # drafters/weights/<target>/<shipped_as> is `path: default`
    fuse_on_cuda = True  # False: the plain draft layers on CUDA (profile_draft.py times both)

    def __init__(self, path: str, total_tokens: int | str = 60, depth: int = 6, top_k: int = 10,
                 tree_choices: Optional[Sequence[Sequence[int]]] = None, pool_all: bool = True) -> None:
        path = formats.expand_default(path, self.shipped_as)
        formats.check_path(path, f"drafter={self.name}")  # fail before the target loads
        self.path, self.pool_all = path, pool_all
        self.growth = make_growth(self.name, total_tokens, depth, top_k, tree_choices, pool_all)
        self.depth = self.growth.depth
        self.top_k = 0 if self.static else top_k
        self.auto = total_tokens == "auto" and not self.static
        if self.static:
            self.max_nodes = self.growth.plan.choices.num_nodes
        else:
            self.max_nodes = 64 if self.auto else int(total_tokens)
        self.max_rows = self.growth.max_rows
        self.features = FeatureStore(self.name)

    @property
    def static(self) -> bool:
        return isinstance(self.growth, StaticGrowth)

    # ---- loading ------------------------------------------------------------------------------
    def attach(self, net) -> None:
        """Use ``net`` (loaded or built in memory) with the target in ``self.target``."""
        t = self.target
        # the fused kernels for the draft layer run per level; rope rows for tree rows up to
        # max_rows past the context
        self.net = net.prepare(t.device, t.dtype, t.max_model_len + self.max_rows + 1, self.fuse_on_cuda)
        self.forward = DraftForward(self.net, t.model.embed, t.blocks.num_blocks, t.blocks.block_size,
                                    t.dtype, t.device)
        if self.auto:
            from .auto_budget import choose_total_tokens

            self.max_nodes = choose_total_tokens(t, self.depth)
        self.growths = self._growths()
        for growth in self.growths.values():
            growth.prepare(t.device)
        # a graph's catch-up holds ``graph_rows`` pairs per sequence: after a decode step a
        # sequence has as many new pairs as accepted nodes (root included), at most depth + 1
        self.graph_rows = self.depth + 1
        self.stager = Stager(self.features, t.blocks.block_size, self.max_rows,
                             table_width(t.max_model_len + self.max_rows, t.blocks.block_size),
                             self.net.fc.out_features, t.dtype, t.device)
        self.graphs = t.graph_runner()  # CUDA graphs when the engine allows them
        self.buckets = batch_buckets(t.graph_batch) if t.graph_batch else ()

    def _growths(self) -> dict:
        """A grower per budget level: a smaller tree is grown shallower (fewer draft forwards;
        depth about log2 of the nodes, as EAGLE's 60 nodes at depth 6), within the configured
        depth and top-k. A static tree has one shape."""
        if self.static:
            return {self.max_nodes: self.growth}
        self.budget_levels = tuple(sorted({n for n in LEVELS if n < self.max_nodes} | {self.max_nodes}))
        growths = {}
        for n in self.budget_levels:
            depth = min(self.depth, max(2, round(math.log2(n))))
            while True:
                try:
                    growths[n] = self.growth if depth == self.depth else make_growth(
                        self.name, n, depth, self.top_k, None, self.pool_all)
                    break
                except ValueError:  # too few candidates that shallow: one level more
                    depth += 1
        return growths

    def growth_for(self, keep: int):
        """The grower of the smallest level the engine's policy uses that holds ``keep`` nodes
        (the configured one when the policy uses none below it)."""
        used = [n for n in self.growths if n >= keep and n in self.target.budget_levels]
        return self.growths[min(used, default=self.max_nodes)]

    def kv_demand(self, seq, lookahead: int) -> dict[str, int]:
        return {TABLE: len(seq) + self.max_rows}

    def release(self, seq) -> None:
        self.features.release(seq.seq_id)

    # ---- what subclasses define ---------------------------------------------------------------
    def target_features(self, step: StepResult, rows: slice | Tensor) -> Tensor:
        """The draft's input features ``[n, h]`` at hidden rows ``rows`` of the step (a slice or
        an index ``[n]``: `rows.row_index`), a tensor of their own (not a view of the step's)."""
        raise NotImplementedError

    def top_children(self, out: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Draft log-probs and TARGET ids of the ``k`` best next tokens after draft outputs
        ``out [..., h]``: ``([..., k], [..., k])``."""
        raise NotImplementedError

    # ---- the step -----------------------------------------------------------------------------
    @torch.inference_mode()
    def update(self, step: StepResult) -> None:
        """Keep the features of the positions this step settled, per sequence, in order."""
        rows, spans = settled_rows(step)
        if spans:
            self.features.keep(spans, self.target_features(step, row_index(rows, step.hidden.device)))

    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        """Host staging, then the device work (`draft`): replayed from a CUDA graph per batch
        bucket when the engine allows graphs, else run eagerly on exact shapes."""
        keep = self.max_nodes if self.static else min(self.max_nodes, max(budgets))
        bg = bucket(len(seqs), self.buckets)
        if bg is not None and any(len(s.aux_tables[TABLE]) > self.stager.table_width for s in seqs):
            bg = None
        if bg is not None:  # what the graph's catch-up width cannot hold runs first, eagerly
            runs = self.features.take_long(seqs, self.graph_rows)
            if runs:
                self.forward.catch_up(runs, self.buckets, self.target.max_model_len, self.max_rows)
        return self.graphs.run(*self._inputs(seqs, budgets, keep, bg))

    @torch.inference_mode()
    def warm_up(self) -> int:
        """Capture the graph of every batch bucket now (dummy all-padding inputs); returns the
        count. The engine calls it at start, with its own graphs."""
        levels = [n for n in self.growths if n in self.target.budget_levels] or [self.max_nodes]
        count = self.graphs.warm_up(self._inputs([], [], n, bg) for bg in self.buckets for n in levels)
        if self.graphs.mode == "capture":
            self.warm_up_catch_up()
        return count

    def warm_up_catch_up(self) -> None:
        """Compile the eager catch-up's kernels: one shape per batch bucket."""
        t = self.target
        table, start, ids = warm_up_run(t.max_model_len)
        dummy = (table, start, ids, torch.zeros(len(ids), self.stager.feature_width, dtype=t.dtype, device=t.device))
        for bg in self.buckets:
            self.forward.catch_up([dummy] * bg, self.buckets, t.max_model_len, self.max_rows, store=False)

    def _inputs(self, seqs, budgets, keep: int, bg: Optional[int]):
        """``(key, host, body, dev)`` of a `GraphRunner.run` for ``bg`` sequence slots (None:
        eager, on exact shapes)."""
        rows = None if bg is None else self.graph_rows
        host, feats, max_q = self.stager.stage(seqs, budgets, keep, bg or len(seqs), rows)
        if bg is None:
            bounds, key = (max_q, int(host["ctx"].max(initial=1))), None
        else:
            bounds, key = (self.graph_rows, self.target.max_model_len), (bg, keep)

        def body(v: dict[str, Tensor]) -> DraftTree:
            return draft(self.forward, self.growth_for(keep), self.top_children, v, keep, *bounds,
                         validate=bg is None)
        return key, host, body, {"feats": (feats, ((bg or 0) * self.graph_rows, feats.shape[-1]))}
