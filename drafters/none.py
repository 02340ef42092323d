"""drafter=none: autoregressive decoding as a tree of one node, through the same step."""
from __future__ import annotations

from specdec.verifiers import DraftTree

from specdec.engine.protocol import last_tokens

from .base import DrafterBase


class NoDrafter(DrafterBase):
    name = "none"
    max_nodes = 1

    def propose(self, seqs, budgets) -> DraftTree:
        return DraftTree.roots(last_tokens(seqs))
