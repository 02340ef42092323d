"""The floor a decode step can approach: a minimal plain-torch Llama decode loop with a static KV
cache (contiguous, one slot per position), SDPA over the cache with a length mask, and the whole
step - argmax included, fed back as the next input - captured in ONE CUDA graph. No paging, no
scheduling, no verification: what is left is the model's own kernels. It borrows the weights of
a `specdec.models.llama.LlamaForCausalLM` (plain, unfused projections).

    from floor_step import floor_step_ms
    ms = floor_step_ms(model, context=512)   # ms per decode step at batch 1
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from specdec.engine.graphs import capture


def _rope(x, cos, sin):  # x [1, H, 1, D]; cos, sin [D]
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


@torch.inference_mode()
def floor_step_ms(model, context: int = 512, steps: int = 200) -> float:
    """Mean ms per greedy decode step (batch 1) over ``steps`` graph replays, decoding from
    position ``context`` on (the cache holds zeros before it: the cost does not depend on them)."""
    cfg, dev, dt = model.config, model.device, model.dtype
    hq, hkv, d, n_layers = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    max_len = context + steps + 8
    kc = torch.zeros(n_layers, 1, hkv, max_len, d, dtype=dt, device=dev)
    vc = torch.zeros_like(kc)
    tok = torch.zeros(1, dtype=torch.long, device=dev)
    pos = torch.full((1,), context, dtype=torch.long, device=dev)
    inv = model.model.rotary_emb.inv_freq.to(dev)
    slots = torch.arange(max_len, device=dev)
    layers, eps = model.model.layers, cfg.rms_norm_eps

    def step():
        h = model.model.embed_tokens(tok)  # [1, H]
        freqs = pos.float()[:, None] * inv[None]  # [1, D/2]
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = emb.cos().to(dt)[0], emb.sin().to(dt)[0]
        mask = (slots <= pos)[None, None, None, :]  # [1, 1, 1, max_len]
        for i, layer in enumerate(layers):
            a = layer.self_attn
            x = F.rms_norm(h, (h.shape[-1],), layer.input_layernorm.weight, eps)
            q = _rope(a.q_proj(x).view(1, 1, hq, d).transpose(1, 2), cos, sin)  # [1, Hq, 1, D]
            k = _rope(a.k_proj(x).view(1, 1, hkv, d).transpose(1, 2), cos, sin)
            v = a.v_proj(x).view(1, 1, hkv, d).transpose(1, 2)
            kc[i].index_copy_(2, pos, k)
            vc[i].index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, kc[i], vc[i], attn_mask=mask, enable_gqa=True)
            h = h + a.o_proj(o.transpose(1, 2).reshape(1, hq * d))
            x = F.rms_norm(h, (h.shape[-1],), layer.post_attention_layernorm.weight, eps)
            m = layer.mlp
            h = h + m.down_proj(F.silu(m.gate_proj(x)) * m.up_proj(x))
        h = F.rms_norm(h, (h.shape[-1],), model.model.norm.weight, eps)
        tok.copy_(model.lm_head(h).argmax(-1))
        pos.add_(1)

    g, _, _ = capture(step, dev, warmup=3)
    pos.fill_(context)
    g.replay()
    torch.cuda.synchronize(dev)
    pos.fill_(context)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        g.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / steps
