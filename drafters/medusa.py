"""drafter=medusa: Medusa heads on the target's last hidden state fill a static tree (Cai et al.
2024, "Medusa"). Head k scores the token k + 1 steps after the root, so a node at depth d with
rank r takes the r-th best token of head d - 1 (the reference's ``generate_candidates``). Every
node is a top-k pick (DETERMINISTIC): verification is lossless with verifier=lossless, or
Medusa-2's typical acceptance with verifier=typical (lossy by design).

The drafter keeps, per sequence, the target's hidden state at the position before the root
(position len - 2): the step that settled it hands it over in `update`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from specdec.engine.graphs import batch_buckets, bucket
from specdec.engine.protocol import StepResult, TargetContext
from specdec.kernels import wide_topk
from specdec.verifiers import DraftTree, TreeChoices

from . import formats
from .base import DrafterBase, static_choices
from .medusa_net import MedusaHeads, load_medusa
from .rows import Piece, copy_rows, gather, row_index


class MedusaDrafter(DrafterBase):
    name = "medusa"

    def __init__(self, path: str, tree_choices: Sequence[Sequence[int]]) -> None:
        path = formats.expand_default(path, "medusa")
        formats.check_path(path, "drafter=medusa")
        if not tree_choices:
            raise ValueError("drafter=medusa needs tree_choices (e.g. the mc_sim_7b_63 preset)")
        self.path = path
        self.choices = TreeChoices(static_choices(tree_choices))
        self.max_nodes = self.choices.num_nodes
        self.width = max(self.choices.ranks[1:]) + 1
        self.last: dict[int, tuple[int, Piece]] = {}  # seq_id -> (position, its target hidden: a row)

    def load(self, target: TargetContext) -> None:
        super().load(target)
        cfg = target.model.config
        self.attach(load_medusa(self.path, cfg.hidden_size, cfg.vocab_size, target.dtype, target.device))

    def attach(self, heads: MedusaHeads) -> None:
        if heads.num_heads < self.choices.max_depth:
            raise ValueError(f"drafter=medusa: the tree is {self.choices.max_depth} deep but the "
                             f"checkpoint has {heads.num_heads} heads (one per depth)")
        t, tc = self.target, self.choices
        self.heads = heads.to(t.device, t.dtype).eval().requires_grad_(False)
        as_t = lambda xs: torch.tensor(xs, dtype=torch.long, device=t.device)  # noqa: E731
        self.node_head, self.node_rank = as_t(tc.depths[1:]) - 1, as_t(tc.ranks[1:])  # [T - 1] each
        self.parents = as_t(tc.parents)  # [T]
        # [T, T]: path[i, j] = 1 when node j (not the root) is node i or one of its ancestors
        path = torch.zeros(tc.num_nodes, tc.num_nodes)
        for i in range(1, tc.num_nodes):
            j = i
            while j > 0:
                path[i, j] = 1.0
                j = tc.parents[j]
        self.path = path.to(t.device)
        self.graphs = t.graph_runner()
        self.buckets = batch_buckets(t.graph_batch) if t.graph_batch else ()

    @torch.inference_mode()
    def warm_up(self) -> int:
        """Capture the graph of every batch bucket now (dummy inputs); returns the count."""
        hidden = torch.zeros(0, self.heads.hidden, dtype=self.target.dtype, device=self.target.device)
        return self.graphs.warm_up(self._inputs(bg, hidden, [], []) for bg in self.buckets)

    def release(self, seq) -> None:
        self.last.pop(seq.seq_id, None)

    @torch.inference_mode()
    def update(self, step: StepResult) -> None:
        """Keep the hidden state of the last position each sequence settled this step: one gather
        for the batch, and per sequence a reference to its row (a slice per sequence costs more
        host time than the work)."""
        paths = step.accepted
        keep, rows = [], []
        for seq, prefill, start, prefix, new, r in zip(step.seqs, step.is_prefill, step.row_offsets,
                                                       step.prefix_lens, step.num_new, step.sample_index):
            if prefill:
                node = depth = new - 1
            elif r >= 0:
                path = paths[r]
                node, depth = path[-1], len(path) - 1  # accepted node j lands at prefix + j
            else:
                continue
            keep.append((seq.seq_id, prefix + depth))
            rows.append(start + node)
        if rows:
            hidden = copy_rows(step.hidden, row_index(rows, step.hidden.device))  # [n, h]
            last = self.last
            for i, (seq_id, position) in enumerate(keep):
                last[seq_id] = (position, (hidden, i, 1))  # [n, h], row i

    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        """The heads' device work (`_draft`), replayed from a CUDA graph per batch bucket when the
        engine allows graphs."""
        t = self.target
        hidden = gather([self._hidden_before_root(s) for s in seqs], self.heads.hidden, t.dtype, t.device)  # [B, h]
        bg = bucket(len(seqs), self.buckets)
        return self.graphs.run(*self._inputs(bg, hidden, [s.tokens[-1] for s in seqs], budgets))

    def _inputs(self, bg: int | None, hidden: Tensor, roots: list[int], budgets: list[int]):
        """``(key, host, body, dev)`` of a `GraphRunner.run`: ``bg`` sequence slots (None:
        eager, exactly ``len(roots)``); padding slots are root-only trees."""
        n = bg or len(roots)
        host = {"roots": np.zeros(n, np.int64), "nodes": np.ones(n, np.int64)}  # [B_g] each
        host["roots"][: len(roots)] = roots
        host["nodes"][: len(roots)] = np.minimum(budgets, self.choices.num_nodes)
        dev = {"hidden": (hidden, (n, hidden.shape[-1]))}
        return (None if bg is None else (bg,)), host, lambda v: self._draft(v, validate=bg is None), dev

    def _draft(self, v: dict[str, Tensor], validate: bool) -> DraftTree:
        """``hidden [B, h]`` (the target's state before each root), ``roots, nodes [B]`` -> the
        static tree filled with each head's best tokens. Reads nothing back."""
        logits = self.heads(v["hidden"], self.target.model.compute_logits)  # [B, heads, V]
        top_logits, top = wide_topk(logits, self.width)  # [B, heads, width] x2
        top_lp = top_logits.float() - logits.float().logsumexp(-1, keepdim=True)  # their log-probs
        tokens = torch.cat([v["roots"][:, None], top[:, self.node_head, self.node_rank]], 1)  # [B, T]
        node_lp = F.pad(top_lp[:, self.node_head, self.node_rank], (1, 0))  # [B, T], root 0
        scores = node_lp @ self.path.T  # [B, T] the heads' log-probs summed along each path
        nodes = v["nodes"]
        t = self.choices.num_nodes
        parents = self.parents.expand(tokens.shape[0], -1)
        parents = parents.masked_fill(torch.arange(t, device=tokens.device) >= nodes[:, None], -1)
        return DraftTree(tokens, parents, nodes, scores=scores, validate=validate,
                         depth_bound=None if validate else self.choices.max_depth)

    def _hidden_before_root(self, seq) -> Piece:
        pos, h = self.last.get(seq.seq_id, (None, None))
        if pos != len(seq) - 2:
            raise AssertionError(f"drafter=medusa: request {seq.request_id} needs the target's hidden "
                                 f"state at position {len(seq) - 2}; it has {pos}")
        return h
