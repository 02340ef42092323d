"""Model families: HF ``model_type`` -> the class that runs it on the paged cache.

A new family is one file in this folder (a module whose class implements the interface in
`specdec.models`' docstring) plus one entry here. Classes are named, not imported, so that the
config can validate a ``model_type`` without importing any model code.
"""
from __future__ import annotations

import importlib

# Llama 2/3/3.x, Mistral, Qwen2/2.5 and Qwen3 (per-head q/k norms) share one decoder
FAMILIES = {
    "llama": "specdec.models.llama:LlamaForCausalLM",
    "mistral": "specdec.models.llama:LlamaForCausalLM",
    "qwen2": "specdec.models.llama:LlamaForCausalLM",
    "qwen3": "specdec.models.llama:LlamaForCausalLM",
}


def model_class(model_type: str) -> type:
    """The class registered for ``model_type`` (a config that passed `ModelConfig.from_hf`)."""
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} has no model class; registered: "
                         f"{', '.join(FAMILIES)} (specdec/models/registry.py)")
    module, name = FAMILIES[model_type].split(":")
    return getattr(importlib.import_module(module), name)
