"""The training-time forward of EAGLE drafts over padded batches, unrolled for ``steps`` draft
steps (training-time test, EAGLE-3 sec. 3.2; one step is EAGLE-1's teacher-forced training).

Pairs: with S tokens there are P = S - 1 pairs; pair i at step k takes the token t_{i+1+k} and
the hidden of step k - 1 at i (step 0: the target feature given), sits at position i + k, and
predicts what follows t_{i+1+k}. It attends to step-0 pairs <= i and to its own position's
steps 1..k: what a depth-k chain node sees at inference (tests check the two agree).
"""
from __future__ import annotations

import torch
from torch import Tensor

from specdec.drafters.draft_attention import DenseTTT


def shift(x: Tensor, n: int, length: int) -> Tensor:
    """``x[:, n : n + length]`` along dim 1, zero padded past the end: ``[B, length, ...]``."""
    out = x.new_zeros(x.shape[0], length, *x.shape[2:])
    part = x[:, n: n + length]
    out[:, : part.shape[1]] = part
    return out


def unroll(net, embed, first_hidden: Tensor, tokens: Tensor, steps: int) -> list[Tensor]:
    """``first_hidden [B, P, h]`` (the net's input feature of each pair at step 0), ``tokens
    [B, S]`` with P = S - 1 -> per step the net's outputs ``[B, P, h]``."""
    b, p, _ = first_hidden.shape
    attends = [DenseTTT(b, p) for _ in range(net.num_layers)]
    base = torch.arange(p, device=tokens.device)
    hidden, outs = first_hidden, []
    for k in range(steps):
        tok = shift(tokens, 1 + k, p)  # [B, P] t_{i+1+k}
        emb = embed(tok.flatten()).to(first_hidden.dtype)  # the target's frozen embedding
        out = net(emb, hidden.reshape(b * p, -1), (base + k).repeat(b), attends)
        hidden = out.view(b, p, -1)
        outs.append(hidden)
    return outs
