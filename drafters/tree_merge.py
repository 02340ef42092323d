"""Merging the draft trees of several drafters into one (drafter=hybrid), as tensor operations over
the batch (no host read: a CUDA graph could hold them).

A node is its path of tokens from the root: a node of tree ``b`` whose parent is already in the
merged tree and whose token equals one of that parent's children there IS that child; any other
node is new, and so are its descendants. Nodes carry a probability of being accepted; the merged
node takes the larger of its sources', then each node's is capped by its parent's (a path is
accepted whole), and the best ``budget`` nodes are kept, best first (ties: shallower, then
earlier), so the kept set holds its nodes' ancestors and every prefix is a subtree.
"""
from __future__ import annotations

import torch
from torch import Tensor


def merge(tok_a: Tensor, par_a: Tensor, valid_a: Tensor, p_a: Tensor, depth_a: Tensor,
          tok_b: Tensor, par_b: Tensor, valid_b: Tensor, p_b: Tensor, depth_b: Tensor,
          max_depth: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Tree b merged into tree a (both ``[B, T_x]``, parents first, root at 0, the same roots;
    ``valid_x`` marks their nodes): returns tokens, parents, valid, probability, depth
    ``[B, T_a + T_b]`` (a's nodes in place, then b's new ones in b's order) and ``where_b [B,
    T_b]``, the merged index of each of b's nodes (-1: not valid)."""
    bsz, ta = tok_a.shape
    tb = tok_b.shape[1]
    dev = tok_a.device
    ia = torch.arange(ta, device=dev)
    in_a = torch.zeros(bsz, tb, dtype=torch.bool, device=dev)  # b's node is one of a's
    where = torch.full((bsz, tb), -1, dtype=torch.long, device=dev)  # ... which one
    in_a[:, 0], where[:, 0] = True, 0  # the roots are the same token
    pa = par_a.clamp(min=0)
    for level in range(1, max_depth + 1):  # parents are settled one level up
        at = valid_b & (depth_b == level)  # [B, T_b]
        parent_where = where.gather(1, par_b.clamp(min=0))  # [B, T_b]
        parent_in_a = in_a.gather(1, par_b.clamp(min=0))
        same = ((pa[:, None, :] == parent_where[:, :, None]) & (tok_a[:, None, :] == tok_b[:, :, None])
                & valid_a[:, None, :] & (ia > 0))  # [B, T_b, T_a]
        hit = same.any(-1) & parent_in_a & at
        in_a = in_a | hit
        where = torch.where(hit, same.float().argmax(-1), where)
    new = valid_b & ~in_a  # [B, T_b]
    new_index = ta + new.long().cumsum(1) - 1  # in b's order: a new parent comes before its child
    where = torch.where(new, new_index, where)
    parent_new = torch.where(new, where.gather(1, par_b.clamp(min=0)), -1)
    n = ta + tb
    tokens = torch.cat([tok_a, torch.zeros_like(tok_b)], 1)
    parents = torch.cat([torch.where(valid_a, par_a, -1), torch.full_like(par_b, -1)], 1)
    valid = torch.cat([valid_a, torch.zeros_like(valid_b)], 1)
    depth = torch.cat([depth_a, torch.zeros_like(depth_b)], 1)
    prob = torch.cat([torch.where(valid_a, p_a, 0.0), torch.zeros_like(p_b)], 1)
    dst = torch.where(new, new_index, n)  # new nodes to their slots; others to a dump column
    dump = lambda x, fill: torch.cat([x, x.new_full((bsz, 1), fill)], 1)  # noqa: E731
    tokens = dump(tokens, 0).scatter(1, dst, tok_b)[:, :n]
    parents = dump(parents, -1).scatter(1, dst, parent_new)[:, :n]
    valid = dump(valid, False).scatter(1, dst, new)[:, :n]
    depth = dump(depth, 0).scatter(1, dst, depth_b)[:, :n]
    # b's probability where it is higher: on its new nodes, and on the nodes of a it matched
    prob = dump(prob, 0.0).scatter_reduce(1, torch.where(valid_b, where, n), torch.where(valid_b, p_b, 0.0),
                                          reduce="amax")[:, :n]
    return tokens, parents, valid, prob, depth, torch.where(valid_b, where, -1)


def best_first(tokens: Tensor, parents: Tensor, valid: Tensor, prob: Tensor, depth: Tensor,
               budget: int, max_depth: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The ``budget`` best nodes of merged trees ``[B, T]`` (parents first; the root at 0),
    best first: returns tokens, parents (renumbered), num_nodes, the kept probabilities and
    ``kept [B, n]`` (their indices in the input)."""
    bsz, t = tokens.shape
    dev = tokens.device
    p = torch.where(valid, prob, -1.0)
    p[:, 0] = 2.0  # the root first
    for _ in range(max_depth):  # a node is no likelier than its parent
        p = torch.where(valid & (torch.arange(t, device=dev) > 0),
                        torch.minimum(p, p.gather(1, parents.clamp(min=0))), p)
    order = torch.arange(t, device=dev)
    key = p * (4 * t * (max_depth + 2)) - depth * (2 * t) - order  # likelier, then shallower, then older
    n = min(budget, t)
    kept = key.topk(n, dim=1).indices  # [B, n]
    ok = valid.gather(1, kept)
    new_index = torch.full((bsz, t), -1, dtype=torch.long, device=dev)
    new_index.scatter_(1, kept, torch.arange(n, device=dev).expand(bsz, n))
    old_parent = parents.gather(1, kept)
    new_parents = torch.where((old_parent >= 0) & ok, new_index.gather(1, old_parent.clamp(min=0)), -1)
    return (tokens.gather(1, kept).masked_fill(~ok, 0), new_parents, ok.sum(1),
            p.gather(1, kept).clamp(max=1.0), kept)
