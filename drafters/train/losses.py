"""Loss pieces shared by the drafter objectives (pure functions over padded batches)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:  # x, mask [...] -> scalar
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def soft_ce(target_logp: Tensor, draft_logits: Tensor, mask: Tensor) -> Tensor:
    """Forward KL(p || q) of the draft against the target's distribution, averaged over masked
    positions: the cross-entropy ``-sum p log q`` minus the target's entropy, so 0 means a
    perfect draft (same gradients as the cross-entropy)."""
    logq = draft_logits.float().log_softmax(-1)
    return masked_mean((target_logp.exp() * (target_logp - logq)).sum(-1), mask)


def top1_agreement(target_logp: Tensor, draft_logits: Tensor, mask: Tensor) -> float:
    """How often the draft's argmax is the target's (the greedy acceptance rate of one token)."""
    same = (target_logp.argmax(-1) == draft_logits.argmax(-1)).float()
    return float(masked_mean(same, mask))


def feature_regression(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """EAGLE's Smooth L1 between predicted and target features, per position then averaged."""
    return masked_mean(F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1), mask)


def uniform_noise(x: Tensor, scale: float) -> Tensor:
    """EAGLE's robustness trick: uniform noise on the input features, ``scale`` times their RMS
    (the draft later reads its own, imperfect, features)."""
    if scale <= 0:
        return x
    rms = x.float().pow(2).mean(-1, keepdim=True).sqrt()
    return x + ((torch.rand_like(x, dtype=torch.float32) * 2 - 1) * scale * rms).to(x.dtype)


def target_logprobs(lm_head_weight: Tensor, hidden: Tensor) -> Tensor:
    """The target's next-token log-probabilities from its hidden states ``[..., h] -> [..., V]``."""
    with torch.no_grad():
        return (hidden.to(lm_head_weight.dtype) @ lm_head_weight.T).float().log_softmax(-1)
