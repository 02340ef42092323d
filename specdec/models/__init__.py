"""Llama-family models on the paged KV cache, and their loaders (HF safetensors, GGUF)."""
