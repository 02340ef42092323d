"""Shared helpers for tests/models: tiny random HF checkpoints and a hand-built paged-cache driver
(the engine's ModelRunner does this for real; here it is spelled out so the model is tested alone)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from specdec.models.attention import AttnMetadata, empty_cache

BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (HF config class, extra config kwargs). head_dim 16: the kernels' minimum.
CASES = {
    "llama": ("LlamaConfig", {}),
    "llama31_rope": ("LlamaConfig", dict(rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16), rope_theta=500000.0, eos_token_id=[2, 3])),
    "llama_linear": ("LlamaConfig", dict(rope_scaling=dict(rope_type="linear", factor=2.0))),
    "llama_dynamic": ("LlamaConfig", dict(rope_scaling=dict(rope_type="dynamic", factor=2.0))),
    "llama_yarn": ("LlamaConfig", dict(rope_scaling=dict(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=16))),
    "llama_bias_gqa1": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True,
                                            num_key_value_heads=1, head_dim=24)),
    "mistral": ("MistralConfig", dict(sliding_window=48)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=1)),
    "qwen3": ("Qwen3Config", dict(head_dim=32)),
    "smollm_tied": ("LlamaConfig", dict(tie_word_embeddings=True, num_attention_heads=2,
                                        num_key_value_heads=2, hidden_size=64)),
}


def hf_model(case: str, seed: int = 0):
    """A tiny HF model with every weight random (norm weights and biases too: HF zero-inits biases,
    which would leave the Qwen2 qkv-bias path untested)."""
    cls_name, extra = CASES[case]
    cfg = getattr(transformers, cls_name)(**{**BASE, **extra})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15 if p.dim() > 1 else 0.1)
    return model


def save_hf(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(str(directory), **kwargs)
    return directory


@torch.no_grad()
def hf_logits(model, ids: list[int]) -> torch.Tensor:  # [T, V] logits of one full causal pass
    return model(torch.tensor([ids])).logits[0].float()


@dataclass
class PagedSeq:
    """One sequence's block table (deliberately shuffled blocks) and cached length."""
    table: list[int]
    cached: int = 0
    tokens: list[int] = field(default_factory=list)


class PagedDriver:
    """Runs our model step by step over a paged cache, building AttnMetadata by hand."""

    def __init__(self, model, num_blocks: int = 64, block_size: int = 4, seed: int = 0):
        cfg = model.config
        self.model, self.block_size = model, block_size
        self.k_cache, self.v_cache = empty_cache(cfg.num_hidden_layers, num_blocks, block_size,
                                                 cfg.num_key_value_heads, cfg.head_dim, model.dtype)
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()

    def new_seq(self, max_len: int) -> PagedSeq:
        n = -(-max_len // self.block_size)
        table, self.free = self.free[:n], self.free[n:]
        return PagedSeq(table)

    def slot(self, seq: PagedSeq, pos: int) -> int:
        return seq.table[pos // self.block_size] * self.block_size + pos % self.block_size

    @torch.no_grad()
    def step(self, seqs: list[PagedSeq], new: list[list[int]], depths=None, bits=None,
             capture_layers=()):
        """Append ``new[b]`` to sequence b (causal, or a tree when ``bits`` [N] is given: node i
        stored at cached + i, rotary position cached + depths[b][i]); returns (hidden, captured)."""
        ids, pos, slots, indptr = [], [], [], [0]
        for b, (seq, toks) in enumerate(zip(seqs, new)):
            d = depths[b] if depths else list(range(len(toks)))
            ids += toks
            pos += [seq.cached + x for x in d]
            slots += [self.slot(seq, seq.cached + i) for i in range(len(toks))]
            indptr.append(indptr[-1] + len(toks))
        width = max(len(s.table) for s in seqs)
        tables = torch.tensor([s.table + [0] * (width - len(s.table)) for s in seqs], dtype=torch.int32)
        meta = AttnMetadata(
            qo_indptr=torch.tensor(indptr, dtype=torch.int32),
            prefix_lens=torch.tensor([s.cached for s in seqs], dtype=torch.int32),
            block_tables=tables, slot_mapping=torch.tensor(slots, dtype=torch.int64),
            tree_mask=None if bits is None else torch.tensor(bits, dtype=torch.int64),
            max_q_len=max(len(t) for t in new),
            max_kv_len=max(s.cached + len(t) for s, t in zip(seqs, new)))
        out = self.model(torch.tensor(ids), torch.tensor(pos), meta, self.k_cache, self.v_cache,
                         capture_layers=capture_layers)
        for seq, toks in zip(seqs, new):
            seq.cached += len(toks)
            seq.tokens += toks
        return out, indptr


GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(w, n_head: int):
    """llama.cpp's convert_hf_to_gguf reorders q/k rows from HF's rotate-half to interleaved pairs;
    transformers' GGUF loader undoes it, so a faithful writer must apply it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(hf, path: Path) -> Path:
    """A float32 llama GGUF (no tokenizer) holding exactly ``hf``'s weights."""
    import gguf
    import numpy as np

    cfg = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_vocab_size(cfg.vocab_size)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in GGUF_NAMES.items():
            t = sd[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                t = llama_cpp_permute(t, cfg.num_attention_heads)
            elif gguf_name == "attn_k":
                t = llama_cpp_permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
