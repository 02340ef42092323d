"""DraftTree: a batch of draft token trees, padded to a common node count T (<= 64).

Node 0 of every tree is the root: the last token already sampled for that sequence (its K/V is not
yet cached). Nodes are topologically ordered (``parents[b, i] < i``), so a chain is the tree whose
parents are ``i - 1``. A node at depth d sits at position ``context_len - 1 + d`` where
``context_len`` counts every token of the sequence including the root.

Candidate kinds say how a node was chosen among its siblings; lossless verification needs it
(ARCHITECTURE.md "Verifiers: the rules"):
  * DETERMINISTIC: picked without randomness (top-k, static trees) -> accept with prob p(c);
  * SAMPLED: drawn i.i.d. from the draft distribution q at its parent -> accept with min(1, p/q);
  * SAMPLED_NO_REPLACEMENT: drawn from q at its parent without replacement among its siblings.

Static trees (Medusa, EAGLE-1) are written as "choices": paths of top-k ranks such as ``[0]``,
``[0, 1]``, ``[1, 0, 2]`` (Medusa's ``medusa_choices``, EAGLE's ``mc_sim_7b_63``). `TreeChoices`
orders them as those repositories do (by length, then lexicographically) and gives each node's
parent and rank; `DraftTree.from_choices` builds the batch once the drafter has filled the tokens.
"""
from __future__ import annotations

from dataclasses import InitVar, dataclass
from functools import cached_property
from enum import IntEnum
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

MAX_NODES = 64  # one uint64 ancestor bitmask per node


class CandidateKind(IntEnum):
    DETERMINISTIC = 0
    SAMPLED = 1
    SAMPLED_NO_REPLACEMENT = 2


@dataclass
class DraftTree:
    """A batch of draft trees. Built with ``validate=True`` (the default) the topology is checked
    and the host facts below are read in ONE device-to-host transfer; with ``validate=False``
    nothing is read from the device (CUDA-graph capture), and the facts are the bounds given or
    the loosest ones (T - 1).

    Host facts (Python values, so that verification needs no device read):
      * ``max_depth``: depth of the deepest node, or ``depth_bound`` when given (>= it): the
        verifier's results have ``max_depth + 1`` path columns;
      * ``max_children``: most children of any node, or ``children_bound``;
        ``children_at_depth[d]``: most children of a node at depth d (d <= max_depth; without
        validation: ``max_children`` at every depth);
      * ``has_sampled``: some node is SAMPLED / SAMPLED_NO_REPLACEMENT and ``draft_probs`` is
        given (without validation: ``draft_probs is not None``); ``has_no_replacement``: some
        node is SAMPLED_NO_REPLACEMENT (without validation: as ``has_sampled``)."""
    tokens: Tensor  # [B, T] int64; padding nodes hold 0
    parents: Tensor  # [B, T] int64; -1 for the root and for padding
    num_nodes: Tensor  # [B] int64, 1 <= num_nodes <= T
    kind: Optional[Tensor] = None  # [B, T] int8 CandidateKind per node (None: all DETERMINISTIC)
    draft_probs: Optional[Tensor] = None  # [B, T, V] q at node t, the law of t's sampled children
    # [B, T] float32: the drafter's score of each node, a log-likelihood that it is accepted (never
    # above its parent's; e.g. EAGLE's cumulative draft log-probability). Speculation policies
    # calibrate it against what verification accepts; verification ignores it.
    scores: Optional[Tensor] = None
    depth_bound: InitVar[Optional[int]] = None
    children_bound: InitVar[Optional[int]] = None
    validate: InitVar[bool] = True

    def __post_init__(self, depth_bound: Optional[int], children_bound: Optional[int],
                      validate: bool) -> None:
        _validate_shapes(self.tokens, self.parents, self.num_nodes)
        if self.kind is None:
            self.kind = torch.zeros_like(self.tokens, dtype=torch.int8)
        _validate_extras(self.tokens, self.kind, self.draft_probs, self.scores)
        if self.parents.is_cuda and torch.cuda.is_current_stream_capturing():
            # a CUDA graph's output tree is one object every replay rewrites: its structure must
            # be derived in the graph, not cached from the first replay read after it
            _ = self._structure
        loose = max(self.max_nodes - 1, 0)
        if validate:
            depth, children, top_kind, per_depth = _read_facts(self)
            self.max_depth = _bound(depth_bound, depth, "depth_bound", "depth")
            self.max_children = _bound(children_bound, children, "children_bound", "children of a node")
            self.children_at_depth = (per_depth + [0] * (self.max_depth + 1))[: self.max_depth + 1]
            self.has_sampled = top_kind > 0 and self.draft_probs is not None
            self.has_no_replacement = top_kind == CandidateKind.SAMPLED_NO_REPLACEMENT and self.has_sampled
        else:
            self.max_depth = loose if depth_bound is None else int(depth_bound)
            self.max_children = loose if children_bound is None else int(children_bound)
            self.children_at_depth = [self.max_children] * (self.max_depth + 1)
            self.has_sampled = self.has_no_replacement = self.draft_probs is not None

    # The structure, derived on the tree's device from sanitised parents (so that even a bad tree
    # indexes in range) when first read: a tree that is only staged into a step (whose body builds
    # its own from the same tensors) never pays for it. (Built during a CUDA graph's capture, a
    # tree derives it at once: see __post_init__.)
    @cached_property
    def _structure(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        derive = _cuda_tree_structure() if self.parents.is_cuda else tree_structure
        return derive(self.parents, self.num_nodes)

    @cached_property
    def parent_index(self) -> Tensor:  # [B, T] int64
        return self._structure[0]

    @cached_property
    def num_children(self) -> Tensor:  # [B, T] int64
        return self._structure[1]

    @cached_property
    def depth(self) -> Tensor:  # [B, T] int64
        return self._structure[2]

    @cached_property
    def ancestor_mask(self) -> Tensor:  # [B, T] int64
        return self._structure[3]

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_nodes(self) -> int:
        return self.tokens.shape[1]

    # Derived fields are computed once (cached): treat a tree as immutable once built.
    @cached_property
    def node_index(self) -> Tensor:  # [T] int64: 0..T-1
        return torch.arange(self.max_nodes, device=self.tokens.device)

    @cached_property
    def row_index(self) -> Tensor:  # [B] int64: 0..B-1
        return torch.arange(self.batch_size, device=self.tokens.device)

    @cached_property
    def valid(self) -> Tensor:  # [B, T] bool
        return self.node_index < self.num_nodes[:, None]

    @cached_property
    def inner(self) -> Tensor:  # [B, T] bool: valid non-root nodes
        return self.valid & (self.node_index > 0)

    @cached_property
    def earlier_siblings(self) -> Tensor:  # [B, T, T] bool: [b, i, j] iff j < i share a parent
        """Segmented sums over each node's earlier siblings are ``where(earlier_siblings,
        x[:, None, :], 0).sum(-1)``: T <= 64, so ``[B, T, T]`` is small, and exact (no matmul,
        whose float32 may run as TF32)."""
        idx = self.node_index
        par = torch.where(self.inner, self.parents, -1 - idx)  # [B, T]; no two padding nodes match
        return (par[:, :, None] == par[:, None, :]) & (idx[None, :] < idx[:, None])

    @cached_property
    def first_of_token(self) -> Tensor:  # [B, T] bool
        """Non-root nodes whose token no earlier sibling has. For DETERMINISTIC candidates and
        greedy rows a repeat is wasted (its token was removed when the first copy failed)."""
        same = self.tokens[:, :, None] == self.tokens[:, None, :]  # [B, T, T]
        return self.inner & ~(self.earlier_siblings & same).any(-1)

    def to(self, device) -> "DraftTree":
        """The same trees on ``device``, with the same host facts (nothing is read back); this
        tree itself when it is there already."""
        if self.tokens.device == torch.device(device):
            return self
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        tree = DraftTree(move(self.tokens), move(self.parents), move(self.num_nodes),
                         kind=move(self.kind), draft_probs=move(self.draft_probs),
                         scores=move(self.scores), depth_bound=self.max_depth,
                         children_bound=self.max_children, validate=False)
        tree.children_at_depth = list(self.children_at_depth)
        tree.has_sampled, tree.has_no_replacement = self.has_sampled, self.has_no_replacement
        return tree

    def positions(self, context_lens: Tensor) -> Tensor:  # [B, T] int64
        """Position ids of the nodes; ``context_lens`` [B] counts the root."""
        return context_lens[:, None].long() - 1 + self.depth

    @property
    def is_leaf(self) -> Tensor:  # [B, T] bool
        return self.valid & (self.num_children == 0)

    def path_to(self, nodes: Tensor) -> Tensor:  # [B, D + 1] int64
        """Root-to-node paths: ``nodes [B]`` -> node indices root first, -1 padded to the tree's
        max depth D + 1."""
        return _paths(self.ancestor_mask.gather(1, nodes[:, None])[:, 0], self.depth, self.max_depth,
                      self.node_index)

    def leaf_paths(self) -> tuple[Tensor, Tensor]:
        """All root-to-leaf paths, as Medusa's "retrieve indices": ``paths [B, L, D + 1]`` (node
        indices root first, -1 padded) and ``valid [B, L]`` (L = the most leaves of any row;
        leaves in node order)."""
        leaf = self.is_leaf  # [B, T]
        count = leaf.sum(1)  # [B]
        width = max(int(count.max()), 1) if self.batch_size else 1
        order = torch.sort((~leaf).to(torch.int8), dim=1, stable=True).indices[:, :width]  # [B, L]
        valid = torch.arange(width, device=leaf.device) < count[:, None]  # [B, L]
        masks = self.ancestor_mask.gather(1, order).reshape(-1)  # [B * L]
        depth = self.depth.repeat_interleave(width, dim=0)  # [B * L, T]
        paths = _paths(masks, depth, self.max_depth).view(self.batch_size, width, -1)
        return torch.where(valid[:, :, None], paths, -1), valid

    @classmethod
    def from_choices(cls, choices: "TreeChoices | Sequence[Sequence[int]]", tokens: Tensor,
                     **extra) -> "DraftTree":
        """A batch of one static tree shape: ``tokens [B, len(choices) + 1]`` in `TreeChoices`
        node order (root first). Nodes are DETERMINISTIC (top-k picks) unless ``kind`` is given."""
        tc = choices if isinstance(choices, TreeChoices) else TreeChoices(choices)
        if tokens.dim() != 2 or tokens.shape[1] != tc.num_nodes:
            raise ValueError(f"tokens must be [B, {tc.num_nodes}] (root + {tc.num_nodes - 1} "
                             f"choices, in TreeChoices order); got {tuple(tokens.shape)}")
        batch = tokens.shape[0]
        parents = torch.tensor(tc.parents, dtype=torch.long, device=tokens.device).expand(batch, -1)
        num = torch.full((batch,), tc.num_nodes, dtype=torch.long, device=tokens.device)
        return cls(tokens.long(), parents.clone(), num, **extra)

    @classmethod
    def from_lists(cls, tokens: Sequence[Sequence[int]], parents: Sequence[Sequence[int]],
                   device=None, scores: Optional[Sequence[Sequence[float]]] = None, **extra) -> "DraftTree":
        """Build a padded batch from per-sequence token and parent lists (root parent -1), and
        per-node ``scores`` if given (padding -inf)."""
        if len(tokens) != len(parents) or (scores is not None and len(scores) != len(tokens)):
            raise ValueError(f"{len(tokens)} token lists but {len(parents)} parent lists"
                             + ("" if scores is None else f" and {len(scores)} score lists"))
        width = max(max((len(t) for t in tokens), default=0), 1)
        tok = np.zeros((len(tokens), width), np.int64)
        par = np.full_like(tok, -1)
        sc = None if scores is None else np.full(tok.shape, -np.inf, np.float32)
        for b, (t, p) in enumerate(zip(tokens, parents)):
            if len(t) != len(p) or (sc is not None and len(scores[b]) != len(t)):
                raise ValueError(f"sequence {b}: {len(t)} tokens but {len(p)} parents"
                                 + ("" if sc is None else f" and {len(scores[b])} scores"))
            tok[b, : len(t)], par[b, : len(p)] = t, p
            if sc is not None:
                sc[b, : len(t)] = scores[b]
        num = np.array([len(t) for t in tokens], np.int64)
        on = lambda x: torch.from_numpy(x) if device is None else torch.from_numpy(x).to(device)  # noqa: E731
        return cls(on(tok), on(par), on(num), scores=None if sc is None else on(sc), **extra)

    @classmethod
    def chains(cls, tokens: Tensor, num_nodes: Optional[Tensor] = None, **extra) -> "DraftTree":
        """Chains from ``tokens [B, T]`` (root first); ``num_nodes [B]`` defaults to T."""
        batch, width = tokens.shape
        parents = torch.arange(-1, width - 1, device=tokens.device).expand(batch, width)
        if num_nodes is None:
            num_nodes = torch.full((batch,), width, dtype=torch.long, device=tokens.device)
        parents = parents.masked_fill(torch.arange(width, device=tokens.device) >= num_nodes[:, None], -1)
        return cls(tokens.long(), parents, num_nodes.long(), **extra)  # no host read: graphs build chains

    @classmethod
    def roots(cls, tokens: Tensor) -> "DraftTree":
        """Trees of one node (autoregressive decoding): ``tokens [B]``. Every derived field is
        known without computing it, so this skips the generic derivation (a few dozen small ops
        and a host read, ~0.3 ms of host time per step, 15% of an autoregressive step of a small
        model); `tests/verifiers/test_tree.py` checks it against ``chains``."""
        tokens = tokens.reshape(-1, 1).long()  # [B, 1]
        zeros = torch.zeros_like(tokens)
        tree = cls.__new__(cls)  # the dataclass __init__ would derive what is set below
        tree.tokens, tree.parents = tokens, torch.full_like(tokens, -1)
        tree.num_nodes = torch.ones(tokens.shape[0], dtype=torch.long, device=tokens.device)
        tree.kind, tree.draft_probs, tree.scores = torch.zeros_like(tokens, dtype=torch.int8), None, None
        tree.parent_index, tree.num_children, tree.depth = zeros, zeros.clone(), zeros.clone()
        tree.ancestor_mask = torch.ones_like(tokens)
        tree.max_depth = tree.max_children = 0
        tree.children_at_depth = [0]
        tree.has_sampled = tree.has_no_replacement = False
        return tree


def _validate_shapes(tokens: Tensor, parents: Tensor, num_nodes: Tensor) -> None:
    """Shape errors, decided on the host."""
    if tokens.dim() != 2 or parents.shape != tokens.shape:
        raise ValueError(f"tokens and parents must both be [B, T]; got {tuple(tokens.shape)} "
                         f"and {tuple(parents.shape)}")
    batch, width = tokens.shape
    if width > MAX_NODES:
        raise ValueError(f"draft trees hold at most {MAX_NODES} nodes (one uint64 ancestor "
                         f"bitmask per node); got T = {width}. Lower the drafter's node budget.")
    if num_nodes.shape != (batch,):
        raise ValueError(f"num_nodes must be [B] = [{batch}]; got {tuple(num_nodes.shape)}")


def tree_structure(parents: Tensor, num_nodes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What a batch of draft trees' parent pointers imply (`DraftTree`):
    ``parents [B, T]`` int64 (-1: root / padding; valid non-root nodes point to an earlier node),
    ``num_nodes [B]``. Returns, all ``[B, T]`` int64:

      * ``parent_index``: the parent of each linked node (a valid non-root node with a parent in
        ``[0, i)``), 0 elsewhere (root, padding, bad links), so gathers by it stay in range
        whatever the input;
      * ``num_children``: linked children per node;
      * ``depth``: edges to the root along linked parents (root, padding 0);
      * ``ancestor_mask``: bit j of node i set iff j is i or one of its ancestors (padding 0).

    Pointer jumping: after step k each node knows the bits and edge count of its 2^k nearest
    ancestors, so ceil(log2 T) steps over ``[B, T]`` suffice (a few dozen small kernels; on CUDA
    DraftTree uses the one-launch Triton version, tree_structure_triton.py, tested against this one)."""
    batch, width = parents.shape
    idx = torch.arange(width, device=parents.device)
    linked = (idx > 0) & (idx < num_nodes[:, None]) & (parents >= 0) & (parents < idx)  # [B, T]
    parent_index = torch.where(linked, parents, 0)
    num_children = torch.zeros_like(parent_index).scatter_add_(1, parent_index, linked.long())
    up = torch.where(linked, parent_index, idx)  # the root and padding point to themselves
    one = torch.ones((), dtype=torch.long, device=parents.device)
    mask = torch.where(idx < num_nodes[:, None], one << idx, 0)  # [B, T]
    depth = linked.long()  # [B, T] edges from each node to `up`
    for _ in range(max(width - 1, 0).bit_length()):
        mask = mask | mask.gather(1, up)
        depth = depth + depth.gather(1, up)
        up = up.gather(1, up)
    return parent_index, num_children, depth, mask


def _cuda_tree_structure():
    """The one-launch Triton derivation (tree_structure_triton.py) on CUDA when Triton is there,
    else this module's. Imported on first use, so that importing the verifiers needs torch alone."""
    try:
        from .tree_structure_triton import tree_structure_triton
    except ImportError:
        return tree_structure
    return tree_structure_triton


def _read_facts(tree: "DraftTree") -> tuple[int, int, int, list[int]]:
    """Validate the topology and read (max depth, most children, largest kind, most children
    per depth) in one device-to-host transfer; raise ValueError on sizes or parent orders no tree
    can have."""
    batch, width = tree.tokens.shape
    if batch == 0:
        return 0, 0, 0, [0]
    idx = torch.arange(width, device=tree.tokens.device)
    num, par = tree.num_nodes, tree.parents
    inner = (idx > 0) & (idx < num[:, None])  # [B, T]
    bad_link = inner & ((par < 0) | (par >= idx))
    per_depth = torch.zeros(width, dtype=torch.long, device=idx.device).scatter_reduce_(
        0, tree.depth.flatten(), tree.num_children.flatten(), "amax")  # [T]
    facts = torch.cat([torch.stack([
        ((num < 1) | (num > width)).any().long(), (par[:, 0] != -1).any().long(), bad_link.any().long(),
        tree.depth.max(), tree.num_children.max(), torch.where(inner, tree.kind.long(), 0).max(),
    ]), per_depth]).tolist()
    if facts[0]:
        raise ValueError(f"num_nodes must lie in [1, T={width}]; got {num.tolist()}")
    if facts[1]:
        raise ValueError("node 0 is the root: parents[:, 0] must be -1")
    if facts[2]:
        b, i = (int(x) for x in bad_link.nonzero()[0])
        raise ValueError(f"parents must be topologically ordered (0 <= parents[b, i] < i): "
                         f"sequence {b}, node {i} has parent {int(par[b, i])}")
    return int(facts[3]), int(facts[4]), int(facts[5]), facts[6:]


def _bound(given: Optional[int], actual: int, name: str, what: str) -> int:
    if given is None:
        return actual
    if int(given) < actual:
        raise ValueError(f"{name} = {given} is below the trees' {what} ({actual}); raise it or "
                         f"leave it out")
    return int(given)


def _validate_extras(tokens: Tensor, kind: Tensor, draft_probs: Optional[Tensor],
                     scores: Optional[Tensor] = None) -> None:
    """Shapes of the optional per-node fields (values are checked by the verifiers)."""
    if scores is not None and scores.shape != tokens.shape:
        raise ValueError(f"scores must be [B, T] = {tuple(tokens.shape)} like tokens; got "
                         f"{tuple(scores.shape)}")
    if kind.shape != tokens.shape:
        raise ValueError(f"kind must be [B, T] = {tuple(tokens.shape)} like tokens; got "
                         f"{tuple(kind.shape)}")
    if draft_probs is not None and (draft_probs.dim() != 3 or draft_probs.shape[:2] != tokens.shape):
        raise ValueError(f"draft_probs must be [B, T, V] with [B, T] = {tuple(tokens.shape)}; got "
                         f"{tuple(draft_probs.shape)}")


def _mask_bits(masks: Tensor, width: int) -> Tensor:  # [N, width] bool
    """Unpack int64 bitmasks ``[N]``: bit j of row n -> ``out[n, j]``."""
    shifts = torch.arange(width, device=masks.device)
    return ((masks[:, None] >> shifts) & 1).bool()


def _paths(masks: Tensor, depth: Tensor, max_depth: int, idx: Optional[Tensor] = None) -> Tensor:
    """Node indices of the paths encoded by ancestor bitmasks ``masks [N]`` (``depth [N, T]``:
    the depth of every node of each row's tree; ``idx [T]``: 0..T-1 if at hand), ``[N, max_depth
    + 1]``. Topological order makes the set bits, read in ascending order, exactly the root-to-node
    path; each lands in the slot of its depth."""
    rows, width = depth.shape
    idx = torch.arange(width, device=masks.device) if idx is None else idx  # [T]
    bits = ((masks[:, None] >> idx) & 1).bool()  # [N, T]
    slot = torch.where(bits, depth, max_depth + 1)  # [N, T]; unset bits go to a spill column
    out = torch.full((rows, max_depth + 2), -1, dtype=torch.long, device=masks.device)
    out.scatter_(1, slot, torch.where(bits, idx, -1))
    return out[:, :-1]


class TreeChoices:
    """A static tree written as Medusa / EAGLE-1 "choices": top-k rank paths such as ``[0]``,
    ``[0, 1]``, ``[1, 0, 2]``. Nodes are ordered as in Medusa's ``generate_medusa_buffers``
    (root, then by depth, then lexicographically), so ``paths[i]``, ``parents[i]``,
    ``ranks[i]`` (the top-k rank of node i among its parent's candidates, -1 for the root) and
    ``depths[i]`` describe node i."""

    def __init__(self, choices: Sequence[Sequence[int]]):
        paths = sorted({tuple(int(r) for r in c) for c in choices}, key=lambda c: (len(c), c))
        if len(paths) != len(choices):
            raise ValueError("tree choices contain duplicate paths")
        if any(len(c) == 0 or min(c) < 0 for c in paths):
            raise ValueError("each choice is a non-empty path of ranks >= 0, e.g. [0, 1]")
        if len(paths) + 1 > MAX_NODES:
            raise ValueError(f"{len(paths)} choices + root exceed {MAX_NODES} nodes")
        index = {(): 0, **{c: i + 1 for i, c in enumerate(paths)}}
        missing = [list(c) for c in paths if c[:-1] not in index]
        if missing:
            raise ValueError(f"choices must be prefix-closed: {missing[0]} has no parent "
                             f"{missing[0][:-1]} among the choices")
        self.paths: list[tuple[int, ...]] = [()] + paths
        self.parents = [-1] + [index[c[:-1]] for c in paths]
        self.ranks = [-1] + [c[-1] for c in paths]
        self.depths = [len(c) for c in self.paths]

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def max_depth(self) -> int:
        return max(self.depths)
