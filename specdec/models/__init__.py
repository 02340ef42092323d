"""Target and draft models on the paged KV cache, and their loaders (HF safetensors, hub ids, GGUF,
the embedded default). transformers is imported only when a tokenizer or a GGUF file is loaded.

The model interface: what the engine and the drafters use of a model, and all they use.

    model.config                          # ModelConfig: vocab_size, hidden_size, layers, heads ...
    model.prepare(device, dtype, max_positions, exact=False)   # ready for an engine: moved,
                                          # eval, and on CUDA the fused layer kernels and a rope
                                          # table; idempotent
    out = model(input_ids, positions, meta, k_cache, v_cache, capture_layers=(i, ...), exact=False)
        # a ragged batch: input_ids, positions [N]; meta: AttnMetadata (whose rows belong to which
        # sequence, where their K/V go); caches [L, num_blocks, block_size, Hkv, D]; exact:
        # batch-invariant numerics (each row bitwise independent of the others, engine.exact)
        out.hidden                        # [N, H] after the final norm
        out.captured[i]                   # [N, H] the residual stream after layer i (layer features)
    model.compute_logits(hidden, upcast=True, head=None, exact=False)   # logits of chosen rows [M, H] -> [M, V]
    model.embed(input_ids)                # [N] -> [N, H]
    model.lm_head_rows(ids)               # [Vd, H] lm_head rows of a drafting vocabulary
    model.kv_cache_shape(num_blocks, block_size)   # the caches' shape (this rank's KV heads)
    model.tp_rank, model.tp_size          # tensor parallelism: this rank's share (1 rank: 0, 1)

A new model family is one module here with a class that implements this, and one entry in
`registry.py`.
"""
from .attention import AttnMetadata, empty_cache, paged_attention
from .config import SUPPORTED_MODEL_TYPES, SUPPORTED_ROPE_TYPES, ModelConfig
from .llama import LlamaForCausalLM, ModelOutput
from .loader import LoadedModel, load_model
from .registry import FAMILIES, model_class

__all__ = ["AttnMetadata", "empty_cache", "paged_attention", "ModelConfig", "SUPPORTED_MODEL_TYPES",
           "SUPPORTED_ROPE_TYPES", "LlamaForCausalLM", "ModelOutput", "LoadedModel", "load_model",
           "FAMILIES", "model_class"]
