"""drafter=hybrid: the trees of several drafters merged under one budget (cf. SAM-Decoding, Hu et al.
2024: suffix-automaton lookup beside EAGLE). Each sub-drafter drafts its own tree; a token path
proposed by two of them becomes one node; every node is ranked by its calibrated probability of
being accepted, the larger of its proposers', and the best ``max_nodes`` are verified
(tree_merge.py).

Calibration: per sub-drafter, acceptance counts in bins of (depth, its own score), learned from
what verification accepted of the nodes it proposed (`update`), with a Beta(1, 1) prior per bin;
so an n-gram match that keeps being right outranks a draft head's guess, and the other way round
where the text is new. The sub-drafters' nodes must be DETERMINISTIC candidates (top-k or lookup
picks): a sampled candidate's law would not survive the merge, and hybrid refuses it.
"""
from __future__ import annotations

import numpy as np
import torch

from specdec.engine.protocol import StepResult, TargetContext
from specdec.engine.speculation.acceptance import BINS, DEPTHS, SCORE_STEP, Acceptance
from specdec.verifiers import CandidateKind, DraftTree

from .base import DrafterBase
from .tree_merge import best_first, merge


class HybridDrafter(DrafterBase):
    name = "hybrid"

    def __init__(self, drafters: list, max_nodes: int = 32, max_depth: int = 16) -> None:
        if len(drafters) < 2:
            raise ValueError(f"drafter=hybrid merges at least two drafters; got {len(drafters)}")
        if not 2 <= max_nodes <= 64:
            raise ValueError(f"drafter=hybrid: max_nodes must lie in [2, 64]; got {max_nodes}")
        self.drafters, self.max_nodes, self.max_depth = list(drafters), max_nodes, max_depth
        self.accepted = np.ones((len(drafters), DEPTHS, BINS))  # per source: Beta(1, 1) prior
        self.verified = np.full((len(drafters), DEPTHS, BINS), 2.0)
        self.last = None  # the last merged tree's bookkeeping, for `update`

    def load(self, target: TargetContext) -> None:
        super().load(target)
        for d in self.drafters:
            d.load(target)

    def kv_demand(self, seq, lookahead: int) -> dict[str, int]:
        demand = {}
        for d in self.drafters:
            demand.update(d.kv_demand(seq, d.max_nodes))
        return demand

    def release(self, seq) -> None:
        for d in self.drafters:
            d.release(seq)

    def warm_up(self) -> int:
        return sum(d.warm_up() for d in self.drafters)

    # ---- drafting ---------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        # (a lookup drafter's tree of a small batch is made on the host: merged on the device)
        trees = [d.propose(seqs, [min(b, d.max_nodes) for b in budgets]).to(self.target.device)
                 for d in self.drafters]
        if any(t.draft_probs is not None for t in trees):
            raise ValueError("drafter=hybrid merges deterministic candidates only; a sub-drafter "
                             "sampled its tree (use its greedy setting, or leave it out)")
        n, dev = len(seqs), trees[0].tokens.device
        table = torch.from_numpy(self.accepted / self.verified).float().to(dev)  # [S, DEPTHS, BINS]
        state, where = None, []  # the merged tree (tokens, parents, valid, prob, depth), per source
        for s, t in enumerate(trees):
            node = torch.arange(t.max_nodes, device=dev)
            valid = node < t.num_nodes[:n, None]
            src = (t.tokens[:n], t.parents[:n], valid, self._probability(table[s], t.depth[:n], t, n),
                   t.depth[:n])
            if state is None:
                state = src
                where.append(torch.where(valid, node, -1))
            else:
                *state, w = merge(*state, *src, self.max_depth)
                where.append(w)
        tokens, parents, num, prob, kept = best_first(*state, min(max(budgets), self.max_nodes), self.max_depth)
        num = torch.minimum(num, torch.tensor(budgets, device=dev))
        parents = parents.masked_fill(torch.arange(tokens.shape[1], device=dev) >= num[:, None], -1)
        self.last = (kept, num, where, trees, n, state[0].shape[1])
        kind = torch.full_like(tokens, int(CandidateKind.DETERMINISTIC), dtype=torch.int8)
        return DraftTree(tokens, parents, num, kind=kind, scores=prob.clamp(min=1e-6).log(),
                         validate=False, depth_bound=self.max_depth)

    @staticmethod
    def _probability(table, depth, tree, n):
        """Calibrated P(accepted) ``[B, T]`` of a source's nodes from their (depth, score) bins."""
        d = depth.clamp(1, DEPTHS) - 1
        if tree.scores is None:
            return table[d, torch.zeros_like(d)]
        s = (-tree.scores[:n] / SCORE_STEP).nan_to_num(nan=BINS, posinf=BINS, neginf=BINS)
        return table[d, s.clamp(0, BINS - 1).long()]

    # ---- calibration --------------------------------------------------------------------------
    def update(self, step: StepResult) -> None:
        """Count, per source, which of its verified nodes were accepted; then the sub-drafters'
        own updates."""
        if self.last is not None and step.tree is not None and any(not p for p in step.is_prefill):
            self._calibrate(step)
        self.last = None
        for d in self.drafters:
            d.update(step)

    def _calibrate(self, step: StepResult) -> None:
        kept, num, where, trees, n, width = self.last
        rows = [step.sample_index[b] for b in range(len(step.seqs)) if not step.is_prefill[b]][:n]
        if len(rows) != n:
            return
        final = _host(kept, num, width)  # [B, T_m] final node of each merged node, -1 if not verified
        for s, (w, t) in enumerate(zip(where, trees)):
            w_host = w.cpu().numpy()
            depth = t.depth[:n].cpu().numpy()
            score = t.scores[:n].float().cpu().numpy() if t.scores is not None else np.zeros(depth.shape)
            pos = np.where(w_host >= 0, np.take_along_axis(final, np.clip(w_host, 0, None), 1), -1)
            hit = np.zeros(pos.shape, dtype=bool)
            for b, r in enumerate(rows):
                on_path = set(step.accepted[r][1:])
                hit[b] = [p in on_path for p in pos[b].tolist()]
            seen = (pos > 0)  # verified non-root nodes this source proposed
            d, sc = Acceptance.bins(depth, score)
            flat = (d * BINS + sc)[seen]
            self.verified[s] += np.bincount(flat, minlength=DEPTHS * BINS).reshape(DEPTHS, BINS)
            self.accepted[s] += np.bincount(flat, weights=hit[seen], minlength=DEPTHS * BINS).reshape(DEPTHS, BINS)


def _host(kept, num, width: int) -> np.ndarray:
    """``[B, T_m]``: the final-tree index of each merged node kept and verified, else -1."""
    kept, num = kept.cpu().numpy(), num.cpu().numpy()
    out = np.full((kept.shape[0], width), -1, dtype=np.int64)
    for b in range(kept.shape[0]):
        out[b, kept[b, : num[b]]] = np.arange(num[b])
    return out
