"""Tensor parallelism of the Llama-family target (Megatron-LM's split, as nano-vllm's
layers/linear.py and gpt-fast's tp.py): each of N ranks keeps 1/N of every layer's attention heads
and MLP columns, and the two row-parallel outputs are summed over the ranks.

    q, k, v, gate, up   column-parallel: the output rows of this rank's heads / MLP columns
    o_proj, down_proj   row-parallel: the matching input columns; the partial outputs are summed
                        (an all-reduce) before the residual add, so every rank holds the whole
                        hidden state after each layer (EAGLE-3's layer features included)
    embedding, lm_head, norms   replicated: each rank computes the full logits it needs itself
                        (the drafter on rank 0 borrows them), at the cost of one copy per rank
    paged KV cache      this rank's KV heads (`LlamaForCausalLM.kv_cache_shape`)

With GQA the query heads of a KV head stay on its rank: N must divide the KV heads (and hence the
query heads) and the MLP width. A bias of a row-parallel layer is added by rank 0 alone.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def check_divisible(config, size: int) -> None:
    """Refuse a tensor-parallel size that does not split the model evenly, saying what would."""
    if size < 1:
        raise ValueError(f"engine.tensor_parallel_size must be >= 1; got {size}")
    sizes = {"num_key_value_heads": config.num_key_value_heads,
             "num_attention_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size}
    bad = {k: v for k, v in sizes.items() if v % size}
    if bad:
        fits = [n for n in range(1, config.num_key_value_heads + 1)
                if all(v % n == 0 for v in sizes.values())]
        raise ValueError(f"engine.tensor_parallel_size={size} does not divide the model's {bad}; "
                         f"sizes that do: {fits}")


@torch.no_grad()
def shard_(model, rank: int, size: int, reduce: Callable[[Tensor], Tensor]):
    """Keep rank ``rank``'s share of ``model``'s layers (in place; call it before the engine
    prepares the model, which fuses the projections) and sum the row-parallel outputs with
    ``reduce`` (an in-place all-reduce over the ranks, returning its argument). Returns ``model``."""
    if model.tp_size != 1:
        raise ValueError(f"the model is already sharded ({model.tp_rank} of {model.tp_size})")
    cfg = model.config
    check_divisible(cfg, size)
    if size == 1:
        return model
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _keep_rows(lin, rank, size)
        for lin in (attn.o_proj, mlp.down_proj):
            _keep_columns(lin, rank, size)
        attn.hq, attn.hkv = attn.hq // size, attn.hkv // size
        attn.reduce = mlp.reduce = reduce
    model.tp_rank, model.tp_size = rank, size
    return model


def _keep_rows(lin: nn.Linear, rank: int, size: int) -> None:  # weight [out, in]: out / size rows
    n = lin.weight.shape[0] // size
    lin.weight = nn.Parameter(lin.weight[rank * n:(rank + 1) * n].clone(), requires_grad=False)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias[rank * n:(rank + 1) * n].clone(), requires_grad=False)
    lin.out_features = n


def _keep_columns(lin: nn.Linear, rank: int, size: int) -> None:  # weight [out, in]: in / size cols
    n = lin.weight.shape[1] // size
    lin.weight = nn.Parameter(lin.weight[:, rank * n:(rank + 1) * n].clone(), requires_grad=False)
    if lin.bias is not None and rank != 0:  # the sum over ranks adds it once
        lin.bias = nn.Parameter(torch.zeros_like(lin.bias), requires_grad=False)
    lin.in_features = n
