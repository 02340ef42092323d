"""One Llama-family decoder (Llama 2/3/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM2) on the paged cache.

On CUDA, after `fuse_projections`, the layers run fused: one qkv and one gate-up projection, and
the Triton add+RMSNorm / rope / silu-mul kernels of `specdec.kernels` (~11 launches per layer
instead of ~38; what a small model's step time is made of). The plain path stays the reference.

Module and parameter names follow HF's `LlamaForCausalLM` (``model.layers.{i}.self_attn.q_proj``
...), so HF state dicts load without renaming. The batch is ragged: N rows are the new tokens of all
sequences concatenated; `AttnMetadata` says which rows belong to which sequence and where their K/V
go. Numerics follow HF (RMSNorm in fp32, rope cos/sin in fp32) so fp32 logits match HF's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdec.kernels import add_rms_norm, rope_, silu_mul
from specdec.kernels.batch_invariant import linear_bi, pack_weight

from .attention import AttnMetadata, paged_attention
from .config import ModelConfig
from .rope import RotaryEmbedding, apply_rope


@dataclass
class ModelOutput:
    hidden: Tensor  # [N, H] after the final norm
    captured: dict[int, Tensor] = field(default_factory=dict)  # layer i -> [N, H] its residual output


def project(linear: nn.Linear, x: Tensor, exact: bool) -> Tensor:  # [N, in] -> [N, out]
    """``linear(x)``; batch-invariant (`linear_bi`, with the weight `pack_exact` packed) when ``exact``."""
    return linear_bi(x, linear.weight, linear.bias, getattr(linear, "bi_packed", None)) if exact else linear(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor, exact: bool = False) -> Tensor:  # [..., dim]
        if exact and x.is_cuda:  # torch's CUDA mean picks its order by shape: one program per row
            from specdec.kernels.batch_invariant_triton import rms_norm_bi_cuda

            return rms_norm_bi_cuda(x, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.hq * self.d, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, self.hkv * self.d, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, self.hkv * self.d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.hq * self.d, h, bias=cfg.o_proj_bias)
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm on q and k, before rope
            self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.qkv_weight: Tensor | None = None  # [(Hq + 2 Hkv) D, H] set by fuse_projections
        self.qkv_bias: Tensor | None = None
        # tensor parallelism (tensor_parallel.py): this rank's heads' share of o_proj's output,
        # summed over the ranks; None on one device
        self.reduce: Callable[[Tensor], Tensor] | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor,
                meta: AttnMetadata, fused: bool = False, exact: bool = False) -> Tensor:  # x [N, H] -> [N, H]
        n = x.shape[0]
        if fused and self.qkv_weight is not None:  # Qwen3's q/k norms keep the plain path
            qkv = rope_(F.linear(x, self.qkv_weight, self.qkv_bias), cos, sin, self.hq + self.hkv)
            a, b = self.hq * self.d, (self.hq + self.hkv) * self.d
            q = qkv[:, :a].view(n, self.hq, self.d)  # [N, Hq, D] views of [N, (Hq + 2 Hkv) D]
            k = qkv[:, a:b].view(n, self.hkv, self.d)
            v = qkv[:, b:].view(n, self.hkv, self.d)
            o = paged_attention(q, k, v, k_cache, v_cache, meta)  # [N, Hq, D]
            return _reduced(self.o_proj(o.reshape(n, self.hq * self.d)), self.reduce)
        q = project(self.q_proj, x, exact).view(n, self.hq, self.d)  # [N, Hq, D]
        k = project(self.k_proj, x, exact).view(n, self.hkv, self.d)  # [N, Hkv, D]
        v = project(self.v_proj, x, exact).view(n, self.hkv, self.d)  # [N, Hkv, D]
        if self.qk_norm:
            q, k = self.q_norm(q, exact), self.k_norm(k, exact)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = paged_attention(q, k, v, k_cache, v_cache, meta, exact=exact)  # [N, Hq, D]
        return _reduced(project(self.o_proj, o.reshape(n, self.hq * self.d), exact), self.reduce)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=b)
        self.up_proj = nn.Linear(h, i, bias=b)
        self.down_proj = nn.Linear(i, h, bias=b)
        self.gate_up_weight: Tensor | None = None  # [2I, H] set by fuse_projections
        self.gate_up_bias: Tensor | None = None
        self.reduce: Callable[[Tensor], Tensor] | None = None  # as Attention.reduce

    def forward(self, x: Tensor, fused: bool = False, exact: bool = False) -> Tensor:  # [N, H]
        if fused:
            return _reduced(self.down_proj(silu_mul(F.linear(x, self.gate_up_weight, self.gate_up_bias))),
                            self.reduce)
        h = F.silu(project(self.gate_proj, x, exact)) * project(self.up_proj, x, exact)
        return _reduced(project(self.down_proj, h, exact), self.reduce)


def _reduced(x: Tensor, reduce: Callable[[Tensor], Tensor] | None) -> Tensor:
    """A row-parallel layer's output summed over the tensor-parallel ranks (as it is alone)."""
    return x if reduce is None else reduce(x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor,
                meta: AttnMetadata, exact: bool = False) -> Tensor:  # [N, H] residual stream
        x = x + self.self_attn(self.input_layernorm(x, exact), cos, sin, k_cache, v_cache, meta, exact=exact)
        return x + self.mlp(self.post_attention_layernorm(x, exact), exact=exact)


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self._fused_for: tuple | None = None  # (device, dtype) that fuse_projections built for
        self.tp_rank, self.tp_size = 0, 1  # tensor parallelism: this rank's share (tensor_parallel.py)

    def kv_cache_shape(self, num_blocks: int, block_size: int) -> tuple[int, ...]:
        """``[L, num_blocks, block_size, Hkv, D]``: the paged K (and V) cache this model's forward
        takes; under tensor parallelism, Hkv is this rank's share of the KV heads."""
        cfg = self.config
        return (cfg.num_hidden_layers, num_blocks, block_size, cfg.num_key_value_heads // self.tp_size,
                cfg.head_dim)

    def prepare(self, device, dtype: torch.dtype, max_positions: int,
                exact: bool = False) -> "LlamaForCausalLM":
        """Ready for an engine on ``device`` in ``dtype`` for positions below ``max_positions``:
        moved, in eval mode, and on CUDA the fused layers (`fuse_projections`) and a rope table;
        ``exact`` (forwards with ``exact=True`` to come): a rope table on every device, so that
        every row reads its cos/sin from one tensor. Idempotent, so engines may share one model
        (their CUDA graphs hold its addresses)."""
        device = torch.device(device)
        self.to(device, dtype).eval()
        if device.type == "cuda":
            fuse_projections(self)
        if device.type == "cuda" or exact:
            self.model.rotary_emb.use_table(max_positions, device, dtype)
        if exact and device.type == "cpu":  # (oneDNN's layout; a GPU's exact GEMM is Triton's)
            pack_exact(self)
        return self

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def embed(self, input_ids: Tensor) -> Tensor:  # [N] -> [N, H]
        return self.model.embed_tokens(input_ids)

    def compute_logits(self, hidden: Tensor, upcast: bool = True, head: Tensor | None = None,
                       exact: bool = False) -> Tensor:  # [M, H] -> [M, V] (or [M, Vd])
        """Logits in float32; ``upcast=False`` leaves them in the model dtype (for a caller whose
        next op computes in float32 anyway, e.g. ``log_softmax(dtype=float32)``: no copy).
        ``head [Vd, H]``: rows of the lm_head (`lm_head_rows`), for the logits of those ids only.
        ``exact``: each row's logits independent of the other rows (`linear_bi`)."""
        weight = self.lm_head.weight if head is None else head
        packed = getattr(self.lm_head, "bi_packed", None) if head is None else None
        logits = linear_bi(hidden, weight, packed=packed) if exact else F.linear(hidden, weight)
        return logits.float() if upcast else logits

    def lm_head_rows(self, ids: Tensor) -> Tensor:  # [Vd] -> [Vd, H]
        """A copy of the lm_head's rows of target ids ``ids``: ``compute_logits(h, head=rows)``
        equals ``compute_logits(h)[..., ids]`` (a truncated drafting vocabulary)."""
        return self.lm_head.weight[ids.to(self.lm_head.weight.device)].contiguous()

    def forward(self, input_ids: Tensor, positions: Tensor, meta: AttnMetadata, k_cache: Tensor,
                v_cache: Tensor, capture_layers: Sequence[int] = (), exact: bool = False) -> ModelOutput:
        """input_ids, positions ``[N]`` int64; caches ``[L, num_blocks, block_size, Hkv, D]``.
        ``captured[i]`` is the residual stream after decoder layer i (HF's
        ``output_hidden_states[i + 1]``, before the final norm). ``exact``: batch-invariant
        numerics (kernels/batch_invariant.py): each row bitwise independent of the other rows, so
        a tree node's hidden state equals a one-token decode's at its position."""
        self._check(input_ids, positions, k_cache, v_cache, capture_layers)
        h = self.model.embed_tokens(input_ids)  # [N, H]
        cos, sin = self.model.rotary_emb(positions, h.dtype)  # [N, D] each
        if self._fused_for == (h.device, h.dtype) and not exact:
            return self._forward_fused(h, cos, sin, meta, k_cache, v_cache, capture_layers)
        wanted, captured = set(capture_layers), {}
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, k_cache[i], v_cache[i], meta, exact=exact)
            if i in wanted:
                captured[i] = h
        return ModelOutput(self.model.norm(h, exact), captured)

    def _forward_fused(self, h: Tensor, cos: Tensor, sin: Tensor, meta: AttnMetadata,
                       k_cache: Tensor, v_cache: Tensor, capture_layers: Sequence[int]) -> ModelOutput:
        """The same layers with each residual add fused into the next RMSNorm: ``res`` is the
        residual stream, ``x`` the normed input of the next block."""
        layers, wanted, captured = self.model.layers, set(capture_layers), {}
        first = layers[0].input_layernorm
        x, res = add_rms_norm(h, first.weight, first.eps)  # [N, H] each
        for i, layer in enumerate(layers):
            a = layer.self_attn(x, cos, sin, k_cache[i], v_cache[i], meta, fused=True)
            post = layer.post_attention_layernorm
            x, res = add_rms_norm(a, post.weight, post.eps, res)
            m = layer.mlp(x, fused=True)
            nxt = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.model.norm
            x, res = add_rms_norm(m, nxt.weight, nxt.eps, res)  # res: the output of layer i
            if i in wanted:
                captured[i] = res
        return ModelOutput(x, captured)

    def _check(self, input_ids, positions, k_cache, v_cache, capture_layers) -> None:
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(f"input_ids and positions must both be [N]; got {tuple(input_ids.shape)}"
                             f" and {tuple(positions.shape)}")
        layers, _, _, hkv, d = self.kv_cache_shape(0, 0)
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            if c.dim() != 5 or (c.shape[0], c.shape[3], c.shape[4]) != (layers, hkv, d):
                raise ValueError(f"{name} must be [L={layers}, num_blocks, block_size, Hkv={hkv}, "
                                 f"D={d}]; got {tuple(c.shape)}")
        bad = [i for i in capture_layers if not 0 <= i < layers]
        if bad:
            raise ValueError(f"capture_layers {bad} out of range: the model has {layers} layers (0-based)")


def pack_exact(model: nn.Module) -> None:
    """Every linear's weight packed for exact mode's GEMM tiles (`pack_weight`; none where that
    does not pay), as ``linear.bi_packed``; a packing that still matches its weight is kept (engines
    may share a model). The packed copies take as much memory again as the weights."""
    for lin in model.modules():
        if isinstance(lin, nn.Linear):
            old = getattr(lin, "bi_packed", None)
            if old is None or not old.packs(lin.weight):
                lin.bi_packed = pack_weight(lin.weight)


@torch.no_grad()
def fuse_projections(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Concatenate each layer's q/k/v and gate/up weights into one matrix, make the original
    parameters views of it (so loading weights later still updates both), and switch the model's
    CUDA forward to the fused kernels. Call it once the model has its device and dtype: moving or
    casting the model afterwards drops back to the plain path (correct, not fused) until it is
    called again. Idempotent: while the fused weights are current nothing is rebuilt (CUDA graphs
    captured by an engine hold their addresses, so a second engine on the same model must not
    replace them)."""
    w = model.model.embed_tokens.weight
    if model._fused_for == (w.device, w.dtype) and all(_still_fused(layer) for layer in model.model.layers):
        return model
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if not attn.qk_norm:
            attn.qkv_weight, attn.qkv_bias = concat_linears(attn.q_proj, attn.k_proj, attn.v_proj)
        mlp.gate_up_weight, mlp.gate_up_bias = concat_linears(mlp.gate_proj, mlp.up_proj)
    model._fused_for = (w.device, w.dtype)
    return model


def _still_fused(layer: DecoderLayer) -> bool:
    """The layer's projections are still views of its fused matrices (not replaced or moved)."""
    attn, mlp = layer.self_attn, layer.mlp
    pairs = [(mlp.gate_proj, mlp.gate_up_weight)]
    if not attn.qk_norm:
        pairs.append((attn.q_proj, attn.qkv_weight))
    return all(fused is not None and lin.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
               for lin, fused in pairs)


def concat_linears(*linears: nn.Linear) -> tuple[Tensor, Tensor | None]:
    """One ``[sum out, in]`` weight (and bias) whose row blocks the linears' parameters become."""
    weight = torch.cat([lin.weight for lin in linears])
    bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(weight[start:start + rows], requires_grad=lin.weight.requires_grad)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start:start + rows], requires_grad=lin.bias.requires_grad)
        start += rows
    return weight, bias
