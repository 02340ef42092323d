"""``total_tokens=auto``: pick the dynamic tree's node budget by timing target verify steps of a
few sizes on the hardware at hand (the EAGLE reference does the same with ``total_token=-1``).

A bigger tree accepts a little more per step but costs more per verify once the step stops being
bound by weight reads. We time one verify step (a T-node tree on a ``context``-token prefix,
through the same paged forward and logits the engine runs) for each candidate T and take the
T that minimises time / gain(T). The gain model is a heuristic, not a measurement: the expected
accepted length grows about logarithmically in T, +22% per doubling, which puts 60 nodes 13%
above 40 as the reference's table assumes.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Sequence

import torch

from specdec.engine.ragged import attn_metadata, slots
from specdec.models.attention import empty_cache

SIZES = (16, 24, 32, 40, 48, 60)
GAIN_PER_DOUBLING = 0.22


def gain(t: int, base: int = SIZES[0]) -> float:
    return 1.0 + GAIN_PER_DOUBLING * math.log2(t / base)


def pick(times: dict[int, float]) -> int:
    """The size with the least time per expected accepted token (ties: the smaller tree)."""
    return min(sorted(times), key=lambda t: times[t] / gain(t))


def choose_total_tokens(target, depth: int, sizes: Sequence[int] = SIZES, context: int = 256,
                        repeats: int = 5, log: Callable[[str], None] = print) -> int:
    """Time verify steps of each size with ``target`` (a `TargetContext`) and pick one."""
    usable = [t for t in sizes if t > depth and t <= 64] or [min(64, depth + 1)]
    context = min(context, target.max_model_len - max(usable))
    times = {t: _time_verify(target.model, t, context, repeats, target.device, target.dtype) for t in usable}
    best = pick(times)
    log("[specdec] total_tokens=auto: verify ms " + ", ".join(f"T={t}: {1000 * s:.2f}" for t, s in times.items())
        + f" -> total_tokens={best}")
    return best


@torch.inference_mode()
def _time_verify(model, nodes: int, context: int, repeats: int, device, dtype) -> float:
    """Median seconds of one T-node tree verify (forward + logits of every node) after a prefix."""
    cfg, bs = model.config, 16
    blocks = -(-(context + nodes) // bs)
    k, v = empty_cache(cfg.num_hidden_layers, blocks, bs, cfg.num_key_value_heads, cfg.head_dim, dtype, device)
    table = list(range(blocks))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (context,), generator=gen).tolist()
    meta = attn_metadata([table], [0], [context], slots(table, 0, context, bs), device)
    model(torch.tensor(prompt, device=device), torch.arange(context, device=device), meta, k, v)
    parents = [-1] + [(i - 1) // 4 for i in range(1, nodes)]  # a bushy tree: 4 children per node
    masks, depth = _masks(parents)
    ids = torch.randint(0, cfg.vocab_size, (nodes,), generator=gen).to(device)
    pos = torch.tensor([context + d for d in depth], device=device)
    samples = []
    for i in range(repeats + 2):
        step = attn_metadata([table], [context], [nodes], slots(table, context, nodes, bs),
                                    device, masks, [True])
        _sync(device)
        t0 = time.perf_counter()
        model.compute_logits(model(ids, pos, step, k, v).hidden)
        _sync(device)
        if i >= 2:  # two warm-up runs
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _masks(parents: list[int]) -> tuple[list[int], list[int]]:
    masks, depth = [], []
    for i, p in enumerate(parents):
        masks.append((1 << i) | (masks[p] if p >= 0 else 0))
        depth.append(depth[p] + 1 if p >= 0 else 0)
    return masks, depth


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
