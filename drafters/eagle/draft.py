"""The device side of an EAGLE step: the draft net over its own paged KV cache
(``aux_tables['eagle']``, `DraftForward`), the catch-up plus tree growth of a step (`draft`) and
the draft over a step's tree rows (`TreeForward`). Nothing here reads the device back: `draft` is
what a CUDA graph replays.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from specdec.engine.ragged import catch_up_parts
from specdec.models.attention import AttnMetadata
from specdec.verifiers import DraftTree

from ..draft_attention import paged

TABLE = "eagle"  # the draft's block tables: ``seq.aux_tables[TABLE]``


class DraftForward:
    """The draft net and its paged KV cache ``[L, num_blocks, block_size, Hkv, D]`` (K and V)."""

    def __init__(self, net, embed, num_blocks: int, block_size: int, dtype, device) -> None:
        cfg = net.config
        self.net, self.embed, self.block_size, self.device = net, embed, block_size, device
        shape = (net.num_layers, num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)  # [L, nb, bs, Hkv, D]
        self.v_cache = torch.zeros_like(self.k_cache)

    def __call__(self, meta: AttnMetadata, ids: Tensor, pos: Tensor, feats: Tensor, rope=None) -> Tensor:
        """The draft net over new pairs ``ids, pos [N]`` with input features ``feats [N, h]``;
        ``rope``: their (cos, sin) when already at hand. Returns ``[N, h]``."""
        emb = self.embed(ids)  # [N, h]
        attends = [paged(self.k_cache[i], self.v_cache[i], meta) for i in range(self.net.num_layers)]
        return self.net(emb, feats, pos, attends, rope)  # [N, h]

    def catch_up(self, runs, buckets: tuple[int, ...], max_model_len: int, scratch: int,
                 store: bool = True) -> None:
        """Run ``runs`` — per sequence ``(block table, first position, token ids [n], features
        [n, h])``, pair i at draft position start + i — storing their K/V (``store=False``: none,
        for warm-up), in forwards of one shape per batch bucket (`ragged.catch_up_parts`; the
        draft's tables hold ``scratch`` positions past ``max_model_len``)."""
        for meta, ids, pos, real in catch_up_parts([r[:3] for r in runs], buckets, self.block_size, self.device,
                                                   max_model_len, scratch, store):
            feats = torch.zeros(ids.shape[0], runs[0][3].shape[-1], dtype=runs[0][3].dtype,
                                device=self.device)  # [S * CATCH_UP, h]
            at = torch.from_numpy(np.concatenate([np.arange(a, a + k) for _, _, k, a in real])).to(self.device)
            feats[at] = torch.cat([runs[i][3][d: d + k] for i, d, k, _ in real])  # one copy, not one a sequence
            self(meta, ids, pos, feats)


class TreeForward:
    """The draft over one step's tree rows ``[B, R]``: after each sequence's ``ctx`` valid pairs,
    at draft positions ``ctx - 1 + depth`` (scratch, overwritten by the next catch-up) and slots
    ``row_slots[:, :R]``; a row whose parent is the root is fed the root's feature ``root_feat``."""

    def __init__(self, forward: DraftForward, v: dict[str, Tensor], kv_bound: int, root_feat: Tensor) -> None:
        self.forward, self.kv_bound, self.root_feat = forward, kv_bound, root_feat  # root_feat [B, h]
        self.ctx, self.tables, self.row_slots = v["ctx"], v["tables"], v["row_slots"]  # [B], [B, W], [B, R]

    def positions(self, depth: Tensor) -> Tensor:
        """Draft positions ``[B, R]`` of rows at tree depths ``depth [R]`` or ``[B, R]``."""
        return self.ctx.long()[:, None] - 1 + depth

    def rope(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward.net.rotary(pos, self.root_feat.dtype)

    def layout(self, r: int) -> tuple[Tensor, Tensor]:
        """``(indptr [B + 1], slots [B * r])`` of ``r`` rows per sequence."""
        indptr = torch.arange(self.ctx.shape[0] + 1, dtype=torch.int32, device=self.ctx.device) * r
        return indptr, self.row_slots[:, :r].reshape(-1)

    def run(self, tokens: Tensor, masks: Tensor, pos: Tensor, feats: Tensor, layout, rope=None) -> Tensor:
        """Rows ``tokens, masks [B, R]`` (ancestor masks among the rows) at ``pos [B * R]`` with
        input features ``feats [B * R, h]``. Returns ``[B, R, h]``."""
        b, r = tokens.shape
        indptr, row_slots = layout
        meta = AttnMetadata(indptr, self.ctx, self.tables, row_slots, tree_mask=masks.reshape(-1),
                            max_q_len=r, max_kv_len=self.kv_bound + r)
        return self.forward(meta, tokens.reshape(-1), pos, feats, rope).view(b, r, -1)

    def rows(self, rows, prev: Optional[Tensor]) -> Tensor:
        """Run `Rows` ``[B, R]``; a row's input feature is its parent's output (``prev [B, R', h]``,
        the previous call's) or the root's. Returns ``[B, R, h]``."""
        b, r = rows.tokens.shape
        feat = self.root_feat[:, None].expand(b, r, -1)
        if prev is not None:
            from_parent = prev.gather(1, rows.parent.clamp(min=0)[:, :, None].expand(-1, -1, prev.shape[-1]))
            feat = torch.where((rows.parent >= 0)[:, :, None], from_parent, feat)
        pos = self.positions(rows.depth).reshape(-1)  # [B * R]
        return self.run(rows.tokens, rows.masks, pos, feat.reshape(b * r, -1), self.layout(r))


def draft(forward: DraftForward, growth, children, v: dict[str, Tensor], keep: int, max_q: int,
          kv_bound: int, validate: bool) -> DraftTree:
    """Catch up, then grow the tree. ``v``: the staged inputs (`Stager.stage`) as tensors plus
    ``feats``; ``max_q`` bounds the pairs per sequence, ``kv_bound`` the context lengths;
    ``growth`` and ``children`` as in `growth`."""
    meta = AttnMetadata(v["indptr"], v["start"], v["tables"], v["slots"], max_q_len=max_q, max_kv_len=kv_bound)
    out = forward(meta, v["ids"], v["pos"], v["feats"])  # [Nc, h]
    root_feat = out[v["last"]]  # [B, h] the last pair's output: the root's feature
    lp, tid = children(root_feat, growth.width)  # [B, width] x2
    tree_forward = TreeForward(forward, v, kv_bound, root_feat)
    tokens, parents, scores = growth.grow(v["roots"], lp, tid, keep, tree_forward, children)  # [B, keep] x3
    nodes = v["nodes"]  # [B]
    parents = parents.masked_fill(torch.arange(tokens.shape[1], device=tokens.device) >= nodes[:, None], -1)
    return DraftTree(tokens, parents, nodes, scores=scores.float(), validate=validate,
                     depth_bound=None if validate else growth.depth)
