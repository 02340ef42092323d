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

import torch
from torch import Tensor

from specdec.verifiers import DraftTree, TreeChoices

from . import formats
from .base import DrafterBase, StepResult, TargetContext
from .eagle_base import _accepted, static_choices
from .medusa_net import MedusaHeads, load_medusa


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
        self.last: dict[int, tuple[int, Tensor]] = {}  # seq_id -> (position, target hidden [h])

    def load(self, target: TargetContext) -> None:
        super().load(target)
        cfg = target.model.config
        self.attach(load_medusa(self.path, cfg.hidden_size, cfg.vocab_size, target.dtype, target.device))

    def attach(self, heads: MedusaHeads) -> None:
        if heads.num_heads < self.choices.max_depth:
            raise ValueError(f"drafter=medusa: the tree is {self.choices.max_depth} deep but the "
                             f"checkpoint has {heads.num_heads} heads (one per depth)")
        self.heads = heads.to(self.target.device, self.target.dtype).eval().requires_grad_(False)

    def release(self, seq) -> None:
        self.last.pop(seq.seq_id, None)

    @torch.inference_mode()
    def update(self, step: StepResult) -> None:
        """Keep the hidden state of the last position each sequence settled this step."""
        paths = _accepted(step.result)
        for b, seq in enumerate(step.seqs):
            if step.is_prefill[b]:
                node = depth = step.num_new[b] - 1
            elif step.sample_index[b] >= 0:
                path = paths[step.sample_index[b]]
                node, depth = path[-1], len(path) - 1  # accepted node j lands at prefix + j
            else:
                continue
            self.last[seq.seq_id] = (step.prefix_lens[b] + depth, step.hidden[step.row_offsets[b] + node])

    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        hidden = torch.stack([self._hidden_before_root(s) for s in seqs])  # [B, h]
        logits = self.heads(hidden, self.target.model.compute_logits)  # [B, heads, V]
        top = logits.topk(self.width, dim=-1).indices  # [B, heads, width]
        tc, dev = self.choices, hidden.device
        depth = torch.tensor(tc.depths[1:], device=dev)
        rank = torch.tensor(tc.ranks[1:], device=dev)
        roots = torch.tensor([s.tokens[-1] for s in seqs], device=dev)
        tokens = torch.cat([roots[:, None], top[:, depth - 1, rank]], 1)  # [B, T]
        nodes = torch.tensor([min(b, tc.num_nodes) for b in budgets], device=dev)
        parents = torch.tensor(tc.parents, device=dev).expand(len(seqs), -1)
        parents = parents.masked_fill(torch.arange(tc.num_nodes, device=dev) >= nodes[:, None], -1)
        return DraftTree(tokens, parents, nodes)

    def _hidden_before_root(self, seq) -> Tensor:
        pos, h = self.last.get(seq.seq_id, (None, None))
        if pos != len(seq) - 2:
            raise AssertionError(f"drafter=medusa: request {seq.request_id} needs the target's hidden "
                                 f"state at position {len(seq) - 2}; it has {pos}")
        return h
