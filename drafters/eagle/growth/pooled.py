"""Dynamic trees that pool every proposed child (``pool_all``, the default; EAGLE-2, Li et al.
2024, sec. 4, as the reference implementation's ``topK_genrate``, whose ``scores_list`` keeps all
``K * top_k`` children of a level): the ``top_k`` best children become the next frontier, every
child stays a candidate for the final rerank (`tree_growth.select`).

In few kernels per level (a speculative step of a small target is launch-bound):

  * the rows live in fixed ``[B, R]`` buffers (R = ``max_rows``), filled level by level, and every
    level runs the draft over all R of them, so each forward has one shape and positions and rope
    rows are computed once per tree. A row not grown yet (token 0, zero feature, only its own
    mask bit) is in no grown row's mask, and what it stores at its scratch position is
    overwritten when it grows or by the next catch-up, so it changes nothing;
  * the candidate pool is assembled once at the end (`pooled_candidates`) instead of growing four
    tensors per level.

tests/drafters/eagle_reference.py grows the same trees the plain way (pool and rows grown level
by level, at exact sizes); test_eagle_growth.py checks that both propose the same trees.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...tree_growth import Candidates, select


def pool_level(score: Tensor, top_lp: Tensor, top_ids: Tensor) -> tuple[Tensor, Tensor]:
    """The children a level pools: frontier joint log-probs ``score [B, K]`` and each frontier
    node's best children ``top_lp, top_ids [B, K, k]`` -> the children's joint log-probs and tokens
    ``[B, K * k]`` (frontier-major)."""
    b = score.shape[0]
    return (score[:, :, None] + top_lp).reshape(b, -1), top_ids.reshape(b, -1)


def next_frontier(joint: Tensor, tokens: Tensor, masks: Tensor, own: Tensor, width: int):
    """The ``width`` best pooled children become the next frontier, and draft rows: from a level's
    ``joint, tokens [B, K * k]`` (`pool_level`, k = ``width``) and the frontier rows' ancestor masks
    ``masks [B, K]`` (0 for the root), with the new rows' own bits ``own [width]``. Returns their
    flat child indices ``best`` (their positions in the level's pool), joint log-probs, tokens,
    frontier slots (``best // width``: the parent row among the old frontier) and ancestor masks,
    each ``[B, width]``."""
    score, best = joint.topk(width, dim=-1)  # [B, width]
    slot = best // width
    return best, score, tokens.gather(1, best), slot, masks.gather(1, slot) | own


def pooled_candidates(roots: Tensor, joints: list[Tensor], tokens: list[Tensor], bests: list[Tensor],
                      width: int) -> Candidates:
    """The candidate pool of a tree grown by `pool_level` / `next_frontier`, in creation order:
    the root, then every level's pooled children. Level 0's parent is the root; a child of level
    l >= 1 has parent ``first[l - 1] + best[l - 1][j // width]`` (its frontier node's position in
    the previous level's pool). Depths are left as zeros: `select` does not read them."""
    b, dev = roots.shape[0], roots.device
    sizes = [t.shape[1] for t in tokens]
    firsts = [1 + sum(sizes[:i]) for i in range(len(sizes))]  # host ints: a graph copies no host data
    parents = [torch.arange(-1, sizes[0], device=dev).clamp(max=0).expand(b, -1)]  # root -1, level 0: 0
    if len(tokens) > 1:
        inner = torch.stack([best + first for best, first in zip(bests, firsts)], 1)  # [B, D - 1, width]
        parents.append(inner[:, :, :, None].expand(-1, -1, -1, width).reshape(b, -1))
    zero = torch.zeros(b, 1, dtype=joints[0].dtype, device=dev)
    all_tokens = torch.cat([roots.view(b, 1).long()] + tokens, 1)
    return Candidates(all_tokens, torch.cat(parents, 1), torch.cat([zero] + joints, 1),
                      torch.zeros_like(all_tokens))


class PooledGrowth:
    """The fixed-row growth of a ``pool_all`` tree: rows ``level * top_k .. (level + 1) * top_k - 1``
    hold a level's frontier."""

    def __init__(self, depth: int, top_k: int) -> None:
        self.depth, self.top_k = depth, top_k
        self.width = top_k  # children the root is asked for
        self.max_rows = (depth - 1) * top_k  # every level but the last adds top_k rows

    def prepare(self, device) -> None:
        rows = torch.arange(self.max_rows, device=device)
        self.row_depth = rows // max(self.top_k, 1) + 1  # [R] the tree depth of row r
        self.row_bits = torch.ones((), dtype=torch.long, device=device) << rows  # [R] own bits

    def grow(self, roots: Tensor, root_lp: Tensor, root_ids: Tensor, keep: int, forward,
             children) -> tuple[Tensor, Tensor, Tensor]:
        """``roots [B]``, ``root_lp, root_ids [B, top_k]`` the root's best children. Returns the
        ``keep`` best candidates' tokens, parents and joint log-probs ``[B, keep]``, best first."""
        root_feat = forward.root_feat  # [B, h]
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
            pos = forward.positions(self.row_depth).reshape(-1)  # [B * R]
            rope = forward.rope(pos)
            layout = forward.layout(r)
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
            out = forward.run(row_tokens, row_masks, pos, row_feats.reshape(b * r, h), layout, rope)  # [B, R, h]
            top_lp, top_ids = children(out[:, cols], w)  # [B, w, w] x2
        cands = pooled_candidates(roots, joints, child_tokens, bests, w)
        tokens, parents, _, scores = select(cands, keep, check=False)
        return tokens, parents, scores
