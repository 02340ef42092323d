"""Speculative generation for any HF transformers ``AutoModelForCausalLM`` with specdec's
verifiers — the one verifier module that imports transformers.

Each step: a `Proposer` turns the sequence so far into a `DraftTree` (root = the last token);
the target evaluates every node in ONE forward pass (4D attention mask: the cached prefix is
visible to all nodes, tree nodes see their ancestors; position ids = prefix length + depth);
a verifier (`verify_tree` by default) picks the accepted path and the bonus token; the HF cache
keeps the K/V of the accepted path, moved to consecutive positions, and drops the rest.

It shows how to take the verifiers into another engine, and it is an independent oracle for
specdec's engine: at temperature 0 its output equals ``model.generate(do_sample=False)``.
Batch size 1 (loop over prompts); DynamicCache with full attention only (no sliding window).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from .api import verify_tree
from .tree import CandidateKind, DraftTree


class Proposer(Protocol):
    """``input_ids [1, L]`` (the sequence so far) -> a DraftTree of batch 1 whose root token is
    ``input_ids[0, -1]``. A specdec drafter fits behind a few lines of glue; see
    `chain_proposer` for the simplest adapter."""

    def __call__(self, input_ids: Tensor) -> DraftTree: ...


@dataclass
class SpecOutput:
    sequences: Tensor  # [1, L + new] prompt and generated tokens
    accepted: list[int] = field(default_factory=list)  # accepted draft tokens per step

    @property
    def steps(self) -> int:
        return len(self.accepted)

    @property
    def mean_accepted_length(self) -> float:
        """tau: accepted draft tokens + 1 bonus token, per step."""
        return (sum(self.accepted) / len(self.accepted) + 1.0) if self.accepted else 0.0


@torch.no_grad()
def speculative_generate(model, input_ids: Tensor, proposer: Proposer, max_new_tokens: int = 32,
                         temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                         verifier: Optional[Callable] = None,
                         generator: Optional[torch.Generator] = None,
                         eos_token_id: Optional[int | Sequence[int]] = None) -> SpecOutput:
    """Generate up to ``max_new_tokens`` after ``input_ids [1, L]``. ``verifier`` is
    `verify_tree`'s signature or an object with ``.verify`` (e.g. ``TypicalVerifier()``)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, L] (one sequence; loop over prompts); got "
                         f"{tuple(input_ids.shape)}")
    verify = getattr(verifier, "verify", verifier) or verify_tree
    stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    ids, out = input_ids, SpecOutput(input_ids)
    cache = _prefill(model, ids)
    while ids.shape[1] - input_ids.shape[1] < max_new_tokens:
        tree = _checked(proposer(ids), ids)
        logits, cache = tree_forward(model, tree, cache, ids.shape[1] - 1)
        uniforms = torch.rand(1, tree.max_nodes, generator=generator,
                              device=generator.device if generator is not None else "cpu")
        result = verify(tree, logits, temperature, top_p, top_k, uniforms.to(logits.device))
        n = int(result.num_accepted[0])
        keep_path(cache, ids.shape[1] - 1, result.accepted_nodes[0, : n + 1])
        new = result.output_tokens[0, : n + 1].to(ids.device)
        out.accepted.append(n)
        ids = torch.cat([ids, new[None]], dim=1)
        hit = [j for j, t in enumerate(new.tolist()) if t in stops]
        if hit:
            ids = ids[:, : ids.shape[1] - len(new) + hit[0] + 1]
            break
    out.sequences = ids[:, : input_ids.shape[1] + max_new_tokens]
    return out


def tree_forward(model, tree: DraftTree, cache, past_len: int):
    """Target logits ``[1, T, V]`` (float32) at every node in one forward over the cache."""
    dtype = next(model.parameters()).dtype
    mask = tree_attention_mask(tree, past_len, dtype)  # [1, 1, T, past + T]
    positions = past_len + tree.depth  # [1, T]
    kwargs = {_cache_kwarg(model): cache}
    result = model(input_ids=tree.tokens, attention_mask=mask, position_ids=positions,
                   use_cache=True, **kwargs)
    return result.logits.float(), _cache_of(result)


def tree_attention_mask(tree: DraftTree, past_len: int, dtype: torch.dtype) -> Tensor:
    """Additive 4D mask ``[1, 1, T, past_len + T]``: 0 where node i may attend (every cached
    token; itself and its ancestors), the dtype's minimum elsewhere. Additive masks work with
    eager and SDPA attention alike (flash-attention kernels ignore 4D masks)."""
    width = tree.max_nodes
    bits = (tree.ancestor_mask[0, :, None] >> torch.arange(width, device=tree.tokens.device)) & 1
    visible = torch.cat([torch.ones(width, past_len, dtype=torch.bool, device=bits.device),
                         bits.bool()], dim=1)  # [T, past + T]
    mask = torch.zeros(visible.shape, dtype=dtype, device=bits.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None, None]


def keep_path(cache, past_len: int, path: Tensor) -> None:
    """Keep the cached prefix and the K/V of the accepted ``path`` (node indices, root first),
    moved to consecutive positions; drop the other tree nodes."""
    keep = torch.cat([torch.arange(past_len, device=path.device), past_len + path])
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or getattr(layer, "is_sliding", False):
            raise NotImplementedError(f"cache layer {type(layer).__name__}: the adapter handles "
                                      f"full-attention DynamicCache layers only")
        layer.keys = layer.keys.index_select(-2, keep.to(layer.keys.device))
        layer.values = layer.values.index_select(-2, keep.to(layer.values.device))


def chain_proposer(draft_fn: Callable[[list[int]], list[int]]) -> Proposer:
    """Wrap ``draft_fn(token ids so far) -> draft tokens`` as a Proposer of chains."""
    def propose(input_ids: Tensor) -> DraftTree:
        tokens = [int(input_ids[0, -1])] + [int(t) for t in draft_fn(input_ids[0].tolist())]
        return DraftTree.chains(torch.tensor([tokens], device=input_ids.device))
    return propose


class DraftModelProposer:
    """Draft trees from a small HF model: each node's children are the draft's top-``branch``
    tokens there, ``depth`` levels deep (``branch = 1``: a chain), at most ``max_nodes`` nodes.
    One draft forward per level over the whole tree (the same 4D-mask trick, no draft cache —
    simple, meant for tests and examples)."""

    def __init__(self, draft_model, depth: int = 4, branch: int = 1, max_nodes: int = 64):
        self.model, self.depth, self.branch, self.max_nodes = draft_model, depth, branch, max_nodes

    def __call__(self, input_ids: Tensor) -> DraftTree:
        tokens, parents = [int(input_ids[0, -1])], [-1]
        frontier = [0]
        for _ in range(self.depth):
            tree = DraftTree.from_lists([tokens], [parents], device=input_ids.device)
            logits = _draft_logits(self.model, input_ids[:, :-1], tree)  # [T, V]
            grown = []
            for node in frontier:
                for tok in logits[node].topk(self.branch).indices.tolist():
                    if len(tokens) < self.max_nodes:
                        tokens.append(tok)
                        parents.append(node)
                        grown.append(len(tokens) - 1)
            frontier = grown
        kind = torch.full((1, len(tokens)), int(CandidateKind.DETERMINISTIC), dtype=torch.int8)
        return DraftTree.from_lists([tokens], [parents], device=input_ids.device, kind=kind.to(input_ids.device))


def _draft_logits(model, prefix: Tensor, tree: DraftTree) -> Tensor:  # [T, V]
    """Draft logits at every tree node, recomputing the prefix (no cache)."""
    past = prefix.shape[1]
    dtype = next(model.parameters()).dtype
    tree_mask = tree_attention_mask(tree, past, dtype)[0, 0]  # [T, past + T]
    causal = torch.full((past, past + tree.max_nodes), torch.finfo(dtype).min, dtype=dtype,
                        device=prefix.device).triu_(1)  # prefix rows: causal, blind to the tree
    mask = torch.cat([causal, tree_mask], dim=0)[None, None]
    ids = torch.cat([prefix, tree.tokens], dim=1)
    pos = torch.cat([torch.arange(past, device=prefix.device), past + tree.depth[0]])[None]
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0, past:].float()


def _prefill(model, ids: Tensor):
    """Cache of every prompt token but the last (the root of the first tree)."""
    if ids.shape[1] < 2:
        return None
    return _cache_of(model(input_ids=ids[:, :-1], use_cache=True))


def _cache_of(result):
    cache = getattr(result, "past_key_values", None)
    return cache if cache is not None else getattr(result, "cache", None)


def _checked(tree: DraftTree, ids: Tensor) -> DraftTree:
    if not isinstance(tree, DraftTree) or tree.batch_size != 1:
        raise ValueError("a Proposer must return a DraftTree of batch size 1")
    if int(tree.tokens[0, 0]) != int(ids[0, -1]):
        raise ValueError(f"the tree's root token {int(tree.tokens[0, 0])} must be the last token "
                         f"of the sequence ({int(ids[0, -1])})")
    n = int(tree.num_nodes[0])
    if n == tree.max_nodes:
        return tree
    probs = None if tree.draft_probs is None else tree.draft_probs[:, :n]
    return DraftTree(tree.tokens[:, :n], tree.parents[:, :n], tree.num_nodes, kind=tree.kind[:, :n],
                     draft_probs=probs)


def _cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` in 5.2x; use what the model takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
