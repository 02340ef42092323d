"""The EAGLE draft networks and their official checkpoint formats.

EAGLE-1/2 (Li et al. 2024, "EAGLE"; SafeAILab/EAGLE ``cnets1.py``): the draft input at position i
is ``fc(concat(embed(t_{i+1}), f_i))`` (the target's feature, i.e. final normed hidden state, at i,
with the token that followed it); one or more Llama decoder layers turn it into ``f^_{i+1}``, and
the TARGET's lm_head reads it (no final norm). Layer 0 has no input_layernorm. Checkpoint: Llama
``config.json`` (``num_hidden_layers``, ``bias`` flag for fc, default true) and ``fc.weight``
(+ ``fc.bias``), ``layers.{i}.*`` in ``model.safetensors`` or ``pytorch_model.bin``.

EAGLE-3 (Li et al. 2025, ``cnets.py``): ``fc`` (3h -> h, no bias) fuses the target's low, middle
and high layer features at position i; ``midlayer`` attends over
``concat(input_layernorm(embed(t_{i+1})), hidden_norm(hidden))`` (2h) with the hidden as residual;
``lm_head(norm(out))`` scores a draft vocabulary; ``d2t`` maps draft ids to target ids
(``target = draft + d2t[draft]``), ``t2d`` flags target ids in the draft vocabulary. Later draft
steps feed the midlayer's own output (pre-norm) back as the hidden.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from specdec.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from specdec.models.llama import MLP, RMSNorm
from specdec.models.rope import RotaryEmbedding

from . import formats
from .draft_attention import Attend, DraftAttention

EMBED_KEY = "embed_tokens.weight"  # official checkpoints may carry a copy of the target's embedding


def draft_model_config(config: dict) -> ModelConfig:
    """Our ModelConfig for a draft config.json (EAGLE configs are Llama configs)."""
    d = {"hidden_act": "silu", **config}
    if d.get("model_type") not in SUPPORTED_MODEL_TYPES:
        d["model_type"] = "llama"
    return ModelConfig.from_hf(d)


class EagleDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, input_norm: bool, qkv_bias: bool = False) -> None:
        super().__init__()
        self.self_attn = DraftAttention(cfg, cfg.hidden_size, qkv_bias)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if input_norm else None
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attend: Attend) -> Tensor:  # [N, h]
        h = x if self.input_layernorm is None else self.input_layernorm(x)
        x = x + self.self_attn(h, cos, sin, attend)
        return x + self.mlp(self.post_attention_layernorm(x))


class EagleNet(nn.Module):
    """EAGLE-1/2 draft: (embedding of t_{i+1}, target feature f_i) -> predicted feature f^_{i+1}."""
    kind = "eagle"

    def __init__(self, cfg: ModelConfig, bias: bool = True, qkv_bias: bool = False) -> None:
        super().__init__()
        self.config, self.bias, self.qkv_bias = cfg, bias, qkv_bias
        h = cfg.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=bias)
        self.layers = nn.ModuleList(EagleDecoderLayer(cfg, i != 0, qkv_bias)
                                    for i in range(cfg.num_hidden_layers))
        self.rotary = RotaryEmbedding(cfg)  # no state: inv_freq is a plain attribute

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, emb: Tensor, feat: Tensor, positions: Tensor, attends: Sequence[Attend]) -> Tensor:
        """emb, feat ``[N, h]``, positions ``[N]`` -> predicted features ``[N, h]``."""
        x = self.fc(torch.cat([emb, feat.to(emb.dtype)], -1))
        cos, sin = self.rotary(positions, x.dtype)
        for layer, attend in zip(self.layers, attends):
            x = layer(x, cos, sin, attend)
        return x


class Eagle3Layer(nn.Module):
    """EAGLE-3's midlayer: attention over concat(normed embedding, normed hidden), hidden residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.self_attn = DraftAttention(cfg, 2 * h)
        self.mlp = MLP(cfg)
        self.hidden_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)

    def forward(self, emb: Tensor, hidden: Tensor, cos: Tensor, sin: Tensor, attend: Attend) -> Tensor:
        x = torch.cat([self.input_layernorm(emb), self.hidden_norm(hidden)], -1)  # [N, 2h]
        h = hidden + self.self_attn(x, cos, sin, attend)
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Net(nn.Module):
    """EAGLE-3 draft: fused target features (or its own previous output) + embedding -> next hidden."""
    kind = "eagle3"

    def __init__(self, cfg: ModelConfig, draft_vocab_size: int, target_hidden_size: Optional[int] = None) -> None:
        super().__init__()
        self.config, self.draft_vocab_size = cfg, draft_vocab_size
        h = cfg.hidden_size
        self.target_hidden_size = target_hidden_size or h
        self.fc = nn.Linear(3 * self.target_hidden_size, h, bias=False)
        self.midlayer = Eagle3Layer(cfg)
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(h, draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(draft_vocab_size, dtype=torch.long))  # [Vd]
        self.register_buffer("t2d", torch.zeros(cfg.vocab_size, dtype=torch.bool))  # [V]
        self.rotary = RotaryEmbedding(cfg)

    num_layers = 1

    def fuse(self, features: Tensor) -> Tensor:  # [N, 3 * target_h] (low, mid, high) -> [N, h]
        return self.fc(features.to(self.fc.weight.dtype))

    def forward(self, emb: Tensor, hidden: Tensor, positions: Tensor, attends: Sequence[Attend]) -> Tensor:
        cos, sin = self.rotary(positions, emb.dtype)
        return self.midlayer(emb, hidden.to(emb.dtype), cos, sin, attends[0])

    def logits(self, out: Tensor) -> Tensor:  # [N, h] -> [N, Vd] float32
        return self.lm_head(self.norm(out)).float()

    def to_target(self, draft_ids: Tensor) -> Tensor:  # draft ids -> target ids, same shape
        return draft_ids + self.d2t[draft_ids]


# ---- official formats ---------------------------------------------------------------------------
EAGLE_STEMS = ("model", "pytorch_model")


def _check_target(what: str, cfg: ModelConfig, target_cfg: ModelConfig, hidden: int) -> None:
    if cfg.vocab_size != target_cfg.vocab_size:
        raise formats.CheckpointError(f"{what}: vocab_size {cfg.vocab_size} differs from the target's "
                                      f"{target_cfg.vocab_size}: it was trained for another target")
    if hidden != target_cfg.hidden_size:
        raise formats.CheckpointError(f"{what}: it reads target features of width {hidden} but the "
                                      f"target's hidden_size is {target_cfg.hidden_size}")


def load_eagle(path: str, target_cfg: ModelConfig, dtype=torch.float32, device="cpu") -> EagleNet:
    what = f"EAGLE checkpoint {path}"
    directory = formats.resolve_dir(path, what)
    config = formats.read_config(directory, what)
    cfg = draft_model_config(config)
    _check_target(what, cfg, target_cfg, cfg.hidden_size)
    with torch.device("meta"):
        net = EagleNet(cfg, bias=bool(config.get("bias", True)), qkv_bias=bool(config.get("qkv_bias", False)))
    state = formats.read_weights(formats.find_weights(directory, EAGLE_STEMS, what), what)
    return formats.load_module(net, state, what, dtype, device, extra=[EMBED_KEY])


def load_eagle3(path: str, target_cfg: ModelConfig, dtype=torch.float32, device="cpu") -> Eagle3Net:
    what = f"EAGLE-3 checkpoint {path}"
    directory = formats.resolve_dir(path, what)
    config = formats.read_config(directory, what)
    cfg = draft_model_config({**config, "num_hidden_layers": config.get("num_hidden_layers", 1)})
    if cfg.num_hidden_layers != 1:
        raise formats.CheckpointError(f"{what}: EAGLE-3 has one midlayer; config.json says "
                                      f"num_hidden_layers={cfg.num_hidden_layers}")
    vd = int(config.get("draft_vocab_size") or cfg.vocab_size)
    th = formats.optional_int(config, "target_hidden_size") or cfg.hidden_size
    _check_target(what, cfg, target_cfg, th)
    with torch.device("meta"):
        net = Eagle3Net(cfg, vd, th)
    state = formats.read_weights(formats.find_weights(directory, EAGLE_STEMS, what), what)
    if vd == cfg.vocab_size and "d2t" not in state and "t2d" not in state:
        # the reference skips the mapping when both vocabularies are equal: the identity
        state = {**state, "d2t": torch.zeros(vd, dtype=torch.long), "t2d": torch.ones(vd, dtype=torch.bool)}
    net = formats.load_module(net, state, what, dtype, device, extra=[EMBED_KEY])
    check_vocab_map(net.d2t, net.t2d, cfg.vocab_size, what)
    return net


def check_vocab_map(d2t: Tensor, t2d: Tensor, vocab: int, what: str) -> None:
    """d2t must send the draft ids to distinct target ids in [0, V) that t2d flags, and only them."""
    target_ids = torch.arange(d2t.shape[0], device=d2t.device) + d2t  # [Vd]
    problems = []
    if d2t.dtype not in (torch.int64, torch.int32):
        problems.append(f"d2t has dtype {d2t.dtype}, expected int64")
    if t2d.dtype != torch.bool:
        problems.append(f"t2d has dtype {t2d.dtype}, expected bool")
    if bool(((target_ids < 0) | (target_ids >= vocab)).any()):
        problems.append(f"d2t maps draft ids outside the target vocabulary [0, {vocab})")
    elif target_ids.unique().numel() != target_ids.numel():
        problems.append("d2t maps two draft ids to the same target id")
    elif not problems and (int(t2d.sum()) != d2t.shape[0] or not bool(t2d[target_ids].all())):
        problems.append(f"t2d flags {int(t2d.sum())} target ids but d2t reaches {d2t.shape[0]} others")
    if problems:
        raise formats.CheckpointError(f"{what}: bad draft vocabulary mapping: " + "; ".join(problems))


def vocab_map(target_ids: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """(d2t [Vd], t2d [V]) for a draft vocabulary given as target ids (kept in ascending order,
    as the reference builds it from token frequencies)."""
    ids = target_ids.long().unique()  # sorted
    d2t = ids - torch.arange(ids.numel())
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[ids] = True
    return d2t, t2d


def config_dict(cfg: ModelConfig, **overrides) -> dict:
    """An HF Llama config.json for a draft built from ``cfg`` (a target's or a draft's)."""
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
            "bos_token_id", "eos_token_id")
    out = {k: cfg.extra[k] for k in keep if k in cfg.extra}
    out.update(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, head_dim=cfg.head_dim,
               intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_attention_heads,
               num_key_value_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps,
               rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position_embeddings,
               model_type="llama", hidden_act="silu", tie_word_embeddings=False)
    if cfg.rope_scaling is not None:
        out["rope_scaling"] = dict(cfg.rope_scaling)
    out.update(overrides)
    return out


def save_eagle(net: EagleNet, directory: Path, dtype=torch.bfloat16, **extra_config) -> list[Path]:
    cfg = config_dict(net.config, num_hidden_layers=net.num_layers, bias=net.bias,
                      architectures=["LlamaForCausalLM"], torch_dtype=str(dtype).replace("torch.", ""))
    if net.qkv_bias:
        cfg["qkv_bias"] = True
    formats.remove_weights(directory, EAGLE_STEMS)
    formats.write_config({**cfg, **extra_config}, directory)
    return formats.write_weights(_cast(net.state_dict(), dtype), directory, "model")


def save_eagle3(net: Eagle3Net, directory: Path, aux_layer_ids: Sequence[int], dtype=torch.bfloat16,
                **extra_config) -> list[Path]:
    """``aux_layer_ids``: vLLM's ``eagle_aux_hidden_state_layer_ids`` (the INPUT of those target
    layers, i.e. our captured output of layer id - 1)."""
    cfg = config_dict(net.config, num_hidden_layers=1, draft_vocab_size=net.draft_vocab_size,
                      architectures=["LlamaForCausalLMEagle3"], torch_dtype=str(dtype).replace("torch.", ""),
                      eagle_config={"eagle_aux_hidden_state_layer_ids": [int(i) for i in aux_layer_ids]})
    if net.target_hidden_size != net.config.hidden_size:
        cfg["target_hidden_size"] = net.target_hidden_size
    formats.remove_weights(directory, EAGLE_STEMS)
    formats.write_config({**cfg, **extra_config}, directory)
    return formats.write_weights(_cast(net.state_dict(), dtype), directory, "model")


def _cast(state: dict[str, Tensor], dtype) -> dict[str, Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def default_feature_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low/middle/high features (reference and vLLM: the inputs of layers 2, L // 2 and
    L - 3), as our captured layer outputs (0-based): 1, L // 2 - 1, L - 4."""
    return 1, num_layers // 2 - 1, num_layers - 4


def feature_layers(config_layer_ids: Optional[Sequence[int]], override: Optional[Sequence[int]],
                   num_layers: int, what: str) -> tuple[int, int, int]:
    """The three captured target layers: ``override`` (our 0-based output indices), else the
    checkpoint's ``eagle_aux_hidden_state_layer_ids`` (layer inputs: id - 1), else the default."""
    if override is not None:
        layers = tuple(int(i) for i in override)
    elif config_layer_ids is not None:
        layers = tuple(int(i) - 1 for i in config_layer_ids)
    else:
        layers = default_feature_layers(num_layers)
    if len(layers) != 3 or not all(0 <= i < num_layers for i in layers):
        raise ValueError(f"{what}: EAGLE-3 fuses 3 target layers in [0, {num_layers}); got {list(layers)}"
                         f" (a target of {num_layers} layers is too shallow for the default 1, L//2-1, "
                         f"L-4: set drafter.feature_layers=[low,mid,high])")
    return layers  # type: ignore[return-value]
