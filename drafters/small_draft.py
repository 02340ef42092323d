"""drafter=small_draft: a small draft model that borrows the target's embedding and lm_head
(trained by ``python -m specdec.train method=draft``), so that only its decoder layers ship.

Its checkpoint is an HF Llama-family directory (config.json + model.safetensors) whose config says
``"specdec_shared_embeddings": true`` and whose weights may lack ``model.embed_tokens.weight`` and
``lm_head.weight``; those come from the target at load time. Drafting is drafter=draft_model's.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from specdec.models.config import ModelConfig
from specdec.models.llama import LlamaForCausalLM

from . import formats
from .draft_model import DraftModelDrafter

SHARED = ("model.embed_tokens.weight", "lm_head.weight")


class SmallDraftDrafter(DraftModelDrafter):
    name = "small_draft"

    def __init__(self, path: str, num_tokens: int = 4, top_k: int = 1, max_nodes: int | None = None) -> None:
        super().__init__(formats.expand_default(path, "draft"), num_tokens, top_k, max_nodes)

    def load(self, target) -> None:
        self.target = target
        self.attach(load_small_draft(self.path, target.model, target.dtype, target.device), target.tokenizer)


def load_small_draft(path: str, target, dtype=torch.float32, device="cpu") -> LlamaForCausalLM:
    what = f"small draft checkpoint {path}"
    directory = formats.resolve_dir(path, what)
    cfg = ModelConfig.from_hf(formats.read_config(directory, what))
    tc = target.config
    if (cfg.vocab_size, cfg.hidden_size) != (tc.vocab_size, tc.hidden_size):
        raise formats.CheckpointError(f"{what}: vocabulary x width {cfg.vocab_size} x {cfg.hidden_size} "
                                      f"differs from the target's {tc.vocab_size} x {tc.hidden_size}: "
                                      f"it cannot share the target's embedding and lm_head")
    with torch.device("meta"):
        model = LlamaForCausalLM(dataclasses.replace(cfg, tie_word_embeddings=False))
    state = formats.read_weights(formats.find_weights(directory, ("model",), what), what)
    if SHARED[0] not in state:
        model.model.embed_tokens = target.model.embed_tokens
    if SHARED[1] not in state:
        model.lm_head = target.lm_head
    return formats.load_module(model, state, what, dtype, device, optional=SHARED)


def save_small_draft(model: LlamaForCausalLM, directory: Path, dtype=torch.bfloat16) -> list[Path]:
    """Config (the target's, fewer layers) + the decoder layers and final norm only."""
    cfg = model.config
    config = {**cfg.extra, "num_hidden_layers": cfg.num_hidden_layers,
              "intermediate_size": cfg.intermediate_size, "specdec_shared_embeddings": True,
              "torch_dtype": str(dtype).replace("torch.", "")}
    config.pop("quantization_config", None)
    formats.remove_weights(directory, ("model",))
    formats.write_config(config, directory)
    state = {k: v.to(dtype) for k, v in model.state_dict().items() if k not in SHARED}
    return formats.write_weights(state, directory, "model")
