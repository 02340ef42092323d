"""The official EAGLE-1/2 and EAGLE-3 checkpoint formats (ARCHITECTURE.md "Checkpoint formats"):
reading them into `EagleNet` / `Eagle3Net` with every problem named at once, writing them, and
the EAGLE-3 vocabulary mapping and feature-layer conventions.

EAGLE-1/2: Llama ``config.json`` (``num_hidden_layers``, ``bias`` for fc, default true; optional
``qkv_bias``) and ``fc.weight`` (+ ``fc.bias``), ``layers.{i}.*`` in ``model.safetensors`` or
``pytorch_model.bin``. EAGLE-3: ``draft_vocab_size`` (optional ``target_hidden_size``) and
``fc.weight``, ``midlayer.*``, ``norm.weight``, ``lm_head.weight``, ``d2t``, ``t2d``. Either may
carry a copy of the target's ``embed_tokens.weight`` (ignored: the target's own is used).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from specdec.models.config import ModelConfig

from .. import formats
from .net import Eagle3Net, EagleNet, draft_model_config

EMBED_KEY = "embed_tokens.weight"
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
