"""ModelConfig: the architecture facts our Llama-family model needs, read from an HF `config.json`.

One implementation serves Llama 2/3/3.x, Mistral, Qwen2/2.5, Qwen3 and SmolLM/SmolLM2; the
differences are flags here (biases, q/k norm, tied embeddings, rope scaling), not subclasses.
Both spellings of the rotary settings are read: the old top-level ``rope_theta`` + ``rope_scaling``
and transformers v5's ``rope_parameters`` (which holds ``rope_theta`` and ``rope_type``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .registry import FAMILIES

SUPPORTED_MODEL_TYPES = tuple(FAMILIES)  # specdec/models/registry.py
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
_DEFAULT_THETA = 10000.0


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = _DEFAULT_THETA
    rope_scaling: Optional[dict] = None  # None for plain rope; else has "rope_type" (see rope.py)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2 always; Llama/Qwen3 by flag)
    o_proj_bias: bool = False  # bias on o_proj (Llama/Qwen3 `attention_bias`; never Qwen2)
    mlp_bias: bool = False  # Llama's `mlp_bias`
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before rope
    sliding_window: Optional[int] = None  # Mistral / Qwen with use_sliding_window
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict, repr=False)  # the source dict, for reference

    @property
    def rope_type(self) -> str:
        return "default" if self.rope_scaling is None else self.rope_scaling["rope_type"]

    @property
    def max_model_len(self) -> int:
        """Longest context we run exactly. Our attention has no sliding window, so a Mistral-style
        model is capped at its window. Dynamic NTK rope equals plain rope up to
        max_position_embeddings (transformers rescales only beyond it), so the usual cap keeps it
        exact."""
        limit = self.max_position_embeddings
        if self.sliding_window:
            limit = min(limit, self.sliding_window)
        return limit

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {mt!r} is not supported; supported model types: "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama 2/3, Mistral, Qwen2/2.5, "
                             "Qwen3, SmolLM/SmolLM2)")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (Llama-family models use 'silu')")
        heads = _req(d, "num_attention_heads")
        hidden = _req(d, "hidden_size")
        theta, scaling = _rope(d)
        bias = bool(d.get("attention_bias", False))
        return cls(
            model_type=mt, vocab_size=_req(d, "vocab_size"), hidden_size=hidden,
            intermediate_size=_req(d, "intermediate_size"),
            num_hidden_layers=_req(d, "num_hidden_layers"), num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or hidden // heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if mt == "qwen2" else bias,
            o_proj_bias=False if mt in ("qwen2", "mistral") else bias,
            mlp_bias=bool(d.get("mlp_bias", False)) if mt == "llama" else False,
            qk_norm=mt == "qwen3", sliding_window=_sliding_window(mt, d),
            bos_token_id=d.get("bos_token_id"), eos_token_ids=_ids(d.get("eos_token_id")), extra=dict(d),
        )


def _req(d: dict, key: str):
    if d.get(key) is None:
        raise ValueError(f"config.json lacks {key!r}, which a {d.get('model_type')} model needs")
    return d[key]


def _ids(x) -> tuple[int, ...]:
    if x is None:
        return ()
    return tuple(int(i) for i in x) if isinstance(x, (list, tuple)) else (int(x),)


def _sliding_window(model_type: str, d: dict) -> Optional[int]:
    if model_type == "mistral":
        return d.get("sliding_window")
    if model_type in ("qwen2", "qwen3") and d.get("use_sliding_window"):
        return d.get("sliding_window")
    return None


def _rope(d: dict) -> tuple[float, Optional[dict]]:
    """(theta, scaling dict or None). ``rope_parameters`` (transformers v5) wins over the old
    ``rope_scaling``; either may spell the type ``type`` (old) or ``rope_type``."""
    params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", d.get("rope_theta", _DEFAULT_THETA)))
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    factor = params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if factor not in (None, 1, 1.0):
        raise ValueError(f"partial_rotary_factor={factor} is not supported (Llama-family models "
                         "rotate the whole head)")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported; supported rope types: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return theta, None
    if rope_type in ("llama3", "yarn"):
        params.setdefault("original_max_position_embeddings",
                          d.get("original_max_position_embeddings", d.get("max_position_embeddings")))
    return theta, {"rope_type": rope_type, **params}
