"""Llama-family models on the paged KV cache, and their loaders (HF safetensors, hub ids, GGUF,
the embedded default). transformers is imported only when a tokenizer or a GGUF file is loaded."""
from .attention import AttnMetadata, empty_cache, paged_attention
from .config import SUPPORTED_MODEL_TYPES, SUPPORTED_ROPE_TYPES, ModelConfig
from .llama import LlamaForCausalLM, ModelOutput
from .loader import LoadedModel, load_model

__all__ = ["AttnMetadata", "empty_cache", "paged_attention", "ModelConfig", "SUPPORTED_MODEL_TYPES",
           "SUPPORTED_ROPE_TYPES", "LlamaForCausalLM", "ModelOutput", "LoadedModel", "load_model"]
