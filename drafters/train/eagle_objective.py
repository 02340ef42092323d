"""EAGLE-1/2 and EAGLE-3 training objectives.

EAGLE-1/2 (Li et al. 2024, sec. 4): from (f_i, t_{i+1}) predict f_{i+1}: Smooth L1 to the
target's feature plus cross-entropy of the target's distribution at i+1 through the target's
lm_head (weights 1.0 and 0.1 as in the reference), with uniform noise on the input features;
``steps > 1`` also unrolls the draft on its own features (the training-time test).
EAGLE-3 (Li et al. 2025): no feature loss; fused low/mid/high features, the draft vocabulary's
cross-entropy against the target distribution restricted to it, unrolled ``steps`` times with
step k weighted 0.8^k; positions whose target argmax lies outside the draft vocabulary are skipped.
Both can start from an exported head (``init_from``: a directory in the official format, e.g. the
shipped one: ``init_from: default``) instead of from the target's last layer, to train it
further on new data.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from specdec.drafters import draft_vocab
from specdec.drafters import formats
from specdec.drafters.eagle.format import (config_dict, default_feature_layers, feature_layers, load_eagle,
                                           load_eagle3, save_eagle, save_eagle3, vocab_map)
from specdec.drafters.eagle.net import Eagle3Net, EagleNet, draft_model_config

from .batches import Batch
from .losses import feature_regression, soft_ce, target_logprobs, top1_agreement, uniform_noise
from .unroll import shift, unroll


def _init_layer_from(dst, src) -> None:
    """Start a draft decoder layer from a target layer (same shapes where they match)."""
    with torch.no_grad():
        for name, p in dst.named_parameters():
            q = dict(src.named_parameters()).get(name)
            if q is not None and q.shape == p.shape:
                p.copy_(q.float())


class EagleObjective:
    kind = "eagle"

    def __init__(self, target, examples=None, steps: int = 1, num_layers: int = 1, w_reg: float = 1.0,
                 w_ce: float = 0.1, noise: float = 0.1, step_decay: float = 0.8,
                 draft_vocab_size: int | None = 8192, always: Sequence[int] = (),
                 init_from: str | None = None) -> None:
        self.target, self.steps, self.w_reg, self.w_ce = target, steps, w_reg, w_ce
        self.noise, self.decay = noise, step_decay
        # the export's drafting vocabulary (drafter.draft_vocab, FR-Spec): the data's most frequent
        # tokens; the head itself trains over the full vocabulary, as EAGLE-2's does
        vocab = target.config.vocab_size
        self.vocab_ids = None if not draft_vocab_size or not examples else draft_vocabulary(
            examples, min(int(draft_vocab_size), vocab), vocab, always)
        cfg = draft_model_config(config_dict(target.config, num_hidden_layers=num_layers))
        if init_from:
            self._warm_start(formats.expand_default(str(init_from), self.kind), num_layers)
        else:
            self.module = self.net = EagleNet(cfg, bias=True)
            self._identity_start(target)
        self.layers: tuple[int, ...] = ()

    def _warm_start(self, path: str, num_layers: int) -> None:
        """Start from an exported EAGLE-1/2 head (its fc and qkv biases as they are; its
        draft_vocab.safetensors is not read: the export's drafting vocabulary is chosen again
        from this run's data)."""
        net = load_eagle(path, self.target.config)
        if net.num_layers != num_layers:
            raise ValueError(f"train init_from={path}: that head has {net.num_layers} layer(s), "
                             f"method.options.num_layers asks for {num_layers}: set it to {net.num_layers}")
        self.module = self.net = net

    def _identity_start(self, target) -> None:
        """Start as "the next feature is this one": fc passes the feature through and each layer
        adds nothing (o_proj, down_proj zero; the rest from the target's last layer), so the
        first predictions are the target's own distribution one position early instead of the
        extreme logits a random layer sends through the target's lm_head."""
        h = self.net.config.hidden_size
        with torch.no_grad():
            self.net.fc.weight.zero_()
            self.net.fc.weight[:, h:] = torch.eye(h)
            self.net.fc.bias.zero_()
            for layer in self.net.layers:
                _init_layer_from(layer, target.model.layers[-1])
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        p = batch.tokens.shape[1] - 1
        feats = uniform_noise(batch.hidden[:, :-1], self.noise if self.net.training else 0.0)
        outs = unroll(self.net, self.target.embed, feats, batch.tokens, self.steps)
        w = self.target.lm_head.weight
        total, metrics = 0.0, {}
        for k, out in enumerate(outs):
            # vocabulary-wide tensors only at the pairs that count (answer tokens, no padding)
            mask = shift(batch.loss_mask & batch.valid, 2 + k, p)  # [B, P] predicts token i+2+k
            goal = shift(batch.hidden, 1 + k, p)[mask]  # [N, h] f_{i+1+k}
            pred = out[mask]  # [N, h]
            logits = self.target.compute_logits(pred)  # [N, V]
            tgt = target_logprobs(w, goal)  # [N, V] the target's distribution of token i+2+k
            every = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
            reg, ce = feature_regression(pred, goal, every), soft_ce(tgt, logits, every)
            total = total + self.decay ** k * (self.w_reg * reg + self.w_ce * ce)
            metrics.update({f"reg_{k}": float(reg.detach()), f"ce_{k}": float(ce.detach()),
                            f"acc_{k}": top1_agreement(tgt, logits, every)})
        return total, metrics

    def export(self, directory: Path, dtype=torch.bfloat16) -> list[Path]:
        files = save_eagle(self.net, directory, dtype=dtype)
        stale = directory / draft_vocab.FILE
        if self.vocab_ids is None:
            stale.unlink(missing_ok=True)  # a re-export without data must not keep an old one
            return files
        return files + [draft_vocab.save(self.vocab_ids, directory)]

    def drafter(self, path: str, **options):
        from specdec.drafters.eagle.eagle2 import EagleDrafter

        return EagleDrafter(path, **options)


def draft_vocabulary(examples, size: int, vocab: int, always: Sequence[int] = ()) -> Tensor:
    """EAGLE-3's draft vocabulary: the ``size`` most frequent target ids in the training data
    (``always`` first, e.g. stop tokens), topped up with the lowest unused ids; sorted."""
    if not 0 < size <= vocab:
        raise ValueError(f"draft_vocab_size must lie in [1, {vocab}]; got {size}")
    counts = Counter(t for e in examples or () for t in e.tokens)
    ranked = list(dict.fromkeys([*always, *(t for t, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0])))]))
    chosen = ranked[:size]
    if len(chosen) < size:
        used = set(chosen)
        chosen += [t for t in range(vocab) if t not in used][: size - len(chosen)]
    return torch.tensor(sorted(chosen), dtype=torch.long)


class Eagle3Objective:
    kind = "eagle3"

    def __init__(self, target, examples=None, steps: int = 5, draft_vocab_size: int = 8192,
                 feature_layers: Sequence[int] | None = None, step_decay: float = 0.8,
                 always: Sequence[int] = (), init_from: str | None = None) -> None:
        self.target, self.steps, self.decay = target, steps, step_decay
        tc = target.config
        if init_from:
            self._warm_start(formats.expand_default(str(init_from), self.kind), draft_vocab_size, feature_layers)
            return
        layers = feature_layers if feature_layers is not None else default_feature_layers(tc.num_hidden_layers)
        self.layers = tuple(int(i) for i in layers)
        ids = draft_vocabulary(examples, min(draft_vocab_size, tc.vocab_size), tc.vocab_size, always)
        cfg = draft_model_config(config_dict(tc, num_hidden_layers=1))
        self.module = self.net = Eagle3Net(cfg, ids.numel())
        self.net.d2t, self.net.t2d = vocab_map(ids, tc.vocab_size)
        self.ids = ids  # [Vd] target id of each draft id
        self._init_from_target()

    def _warm_start(self, path: str, draft_vocab_size: int | None, override: Sequence[int] | None) -> None:
        """Start from an exported EAGLE-3 head: its weights, its draft vocabulary (the lm_head's
        rows are tied to it) and its feature layers; a draft_vocab_size or feature_layers that
        disagree with the checkpoint are an error rather than silently replaced."""
        tc, what = self.target.config, f"train init_from={path}"
        self.module = self.net = load_eagle3(path, tc)
        vd = self.net.draft_vocab_size
        if draft_vocab_size and min(int(draft_vocab_size), tc.vocab_size) != vd:
            raise ValueError(f"{what}: that head drafts over {vd} tokens, method.options.draft_vocab_size "
                             f"asks for {draft_vocab_size}: set it to {vd} (or null)")
        config = formats.read_config(formats.resolve_dir(path, what), what)
        ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        stored = feature_layers(ids, None, tc.num_hidden_layers, what)
        if override is not None and tuple(int(i) for i in override) != stored:
            raise ValueError(f"{what}: that head fuses target layers {list(stored)}, "
                             f"method.options.feature_layers asks for {list(override)}: set it to null")
        self.layers = stored
        self.ids = torch.arange(vd) + self.net.d2t  # [Vd] target id of each draft id

    def _init_from_target(self) -> None:
        t = self.target
        _init_layer_from(self.net.midlayer, t.model.layers[-1])
        with torch.no_grad():
            self.net.lm_head.weight.copy_(t.lm_head.weight[self.ids].float())
            self.net.norm.weight.copy_(t.model.norm.weight.float())

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        p = batch.tokens.shape[1] - 1
        first = self.net.fuse(batch.aux[:, :-1])  # [B, P, h]
        outs = unroll(self.net, self.target.embed, first, batch.tokens, self.steps)
        w = self.target.lm_head.weight
        with torch.no_grad():
            inside = self.net.t2d[(batch.hidden.to(w.dtype) @ w.T).argmax(-1)]  # [B, S] argmax in draft vocab
        head = w[self.ids.to(w.device)]  # [Vd, h] the draft vocabulary's rows
        total, metrics = 0.0, {}
        for k, out in enumerate(outs):
            # only the pairs that count: answer tokens whose target argmax the draft vocabulary holds
            mask = shift(batch.loss_mask & batch.valid, 2 + k, p) & shift(inside, 1 + k, p)  # [B, P]
            tgt = target_logprobs(head, shift(batch.hidden, 1 + k, p)[mask])  # [N, Vd] restricted, renormalised
            logits = self.net.logits(out[mask])  # [N, Vd]
            every = torch.ones(tgt.shape[0], dtype=torch.bool, device=tgt.device)
            ce = soft_ce(tgt, logits, every)
            total = total + self.decay ** k * ce
            metrics.update({f"ce_{k}": float(ce.detach()), f"acc_{k}": top1_agreement(tgt, logits, every)})
        return total, metrics

    def export(self, directory: Path, dtype=torch.bfloat16) -> list[Path]:
        # our captured output of layer l is the input of layer l + 1 (the reference's layer id)
        return save_eagle3(self.net, directory, [i + 1 for i in self.layers], dtype=dtype)

    def drafter(self, path: str, **options):
        from specdec.drafters.eagle.eagle3 import Eagle3Drafter

        return Eagle3Drafter(path, **options)
