"""VerifyResult: what a verifier returns for a batch of draft trees (ARCHITECTURE.md "The step")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .tree import DraftTree


@dataclass
class VerifyResult:
    """Per row b of the batch (D = the tree batch's max depth):

    * ``accepted_nodes[b, :num_accepted[b] + 1]`` is the accepted path, root first; -1 after;
    * ``num_accepted[b]`` counts the accepted DRAFT tokens (root excluded): 0..D;
    * ``bonus_token[b]`` is the token sampled after the last accepted node (from the residual
      distribution in lossless sampling), so a step emits ``num_accepted + 1`` tokens;
    * ``accepted_tokens[b, j]`` is the token of the accepted node at depth j + 1 (-1 padded);
    * ``depth_attempted[b, d]``: the path reached depth d and that node had children to try;
      ``depth_accepted[b, d]``: one of them was accepted. The acceptance rate at depth d + 1 is
      ``depth_accepted[:, d].sum() / depth_attempted[:, d].sum()``.
    """
    accepted_nodes: Tensor  # [B, D + 1] int64
    num_accepted: Tensor  # [B] int64
    bonus_token: Tensor  # [B] int64
    accepted_tokens: Tensor  # [B, D] int64
    depth_attempted: Tensor  # [B, D] bool
    depth_accepted: Tensor  # [B, D] bool

    @property
    def output_tokens(self) -> Tensor:  # [B, D + 1] int64
        """The tokens a step emits, in order (accepted draft tokens, then the bonus), -1 padded."""
        out = torch.cat([self.accepted_tokens, torch.full_like(self.bonus_token[:, None], -1)], 1)
        return out.scatter_(1, self.num_accepted[:, None], self.bonus_token[:, None])

    @property
    def last_node(self) -> Tensor:  # [B] int64
        """The deepest accepted node (the root when nothing was accepted)."""
        return self.accepted_nodes.gather(1, self.num_accepted[:, None])[:, 0]

    def acceptance_per_depth(self) -> tuple[Tensor, Tensor]:
        """``(accepted [D], attempted [D])`` counts over the batch, for metrics."""
        return self.depth_accepted.sum(0), self.depth_attempted.sum(0)


def build_result(tree: DraftTree, path: Tensor, bonus: Tensor) -> VerifyResult:
    """Fill the derived fields from the accepted path ``path [B, D + 1]`` (-1 padded) and the
    bonus tokens ``[B]``."""
    on_path = path >= 0  # [B, D + 1]
    nodes = path.clamp(min=0)
    toks = torch.where(on_path[:, 1:], tree.tokens.gather(1, nodes[:, 1:]), -1)  # [B, D]
    attempted = on_path[:, :-1] & (tree.num_children.gather(1, nodes[:, :-1]) > 0)  # [B, D]
    accepted = on_path[:, 1:]
    return VerifyResult(path, accepted.sum(1), bonus, toks, attempted, accepted)
