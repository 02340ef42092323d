"""Lossless tree verification: multi-candidate recursive rejection sampling.

Follows SpecInfer (Miao et al., 2024, "multi-step speculative sampling") and EAGLE's tree
sampling, with the candidate-kind rules of ARCHITECTURE.md "Verifiers: the rules". At the current node
with target distribution p, the children are tried in node order; child c with draft law q_c:

    accept c  with probability min(1, p(c) / q_c(c));   else  p <- norm(max(p - q_c, 0))

and when every child fails, the bonus token is drawn from the final p (the residual). The draft
law q_c of a child depends on its CandidateKind:
  * SAMPLED (i.i.d. from q at the parent): q_c = q;
  * SAMPLED_NO_REPLACEMENT: q_c = q with the earlier rejected no-replacement siblings' tokens
    removed, renormalised (Jeon et al., 2024, "Recursive Speculative Decoding");
  * DETERMINISTIC (top-k / static trees): q_c = the point mass at c, i.e. accept with p(c), else
    remove c from p and renormalise (EAGLE-2's and Medusa's trees).
Each step is a standard speculative-sampling step on the current p, so the token emitted at a
node has law p exactly, whatever the candidates; by induction over depth the output sequence has
the target's law. A greedy row (temperature 0) has p = the point mass at the argmax: the same
rule then reproduces the greedy walk.

Three implementations, all free of host syncs (loop bounds are the tree's host facts):
  * every candidate DETERMINISTIC, no row with top-p alone (the common case: top-k trees,
    n-gram tries, greedy rows): closed form over all nodes at once, no loop (`_verify_deterministic`);
  * DETERMINISTIC with a row using top-p alone: the same tests, one depth at a time, because a
    node's threshold needs a full sort of its row (`_verify_deterministic_walk`);
  * any SAMPLED* candidate: per depth, siblings tried rank by rank with [B, V] residuals
    (`_verify_general`).
Randomness is an input: ``uniforms[b, i]`` decides node i's test and ``uniforms[b, 0]`` draws
the bonus token.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .greedy import deepest_good
from .probs import RowParams, sample_from_probs
from .result import VerifyResult, build_result
from .structure import children_table
from .target import Target
from .tree import CandidateKind, DraftTree

DET, SAMPLED, NO_REPL = (int(k) for k in CandidateKind)


def verify_lossless(tree: DraftTree, logits: Tensor, params: RowParams, uniforms: Tensor) -> VerifyResult:
    """``logits [B, T, V]``, ``params`` per row, ``uniforms [B, >= T]`` in [0, 1)."""
    target = Target(tree, logits, params)
    if tree.has_sampled:
        return _verify_general(tree, target, uniforms)
    if target.batched:
        return _verify_deterministic(tree, target, uniforms)
    return _verify_deterministic_walk(tree, target, uniforms)


def _verify_deterministic(tree: DraftTree, target: Target, uniforms: Tensor) -> VerifyResult:
    """Every candidate DETERMINISTIC: siblings c_1, c_2, ... of a node are tried in order, and
    after the earlier ones failed p(c_i) renormalises to p(c_i) / (1 - removed_i), with removed_i
    the mass of the earlier siblings' (distinct) tokens. So node i passes iff
    ``u_i * (1 - removed_i) < p(c_i)``, decided for all nodes at once; the accepted child of a
    node is its first passing child, and the path the deepest node reached through accepted
    children. The bonus is drawn from p at that node without its children's tokens."""
    width = tree.max_nodes
    sib = tree.earlier_siblings  # [B, T, T]
    pc = torch.where(tree.first_of_token, target.child_probs(), 0.0)  # [B, T]; a repeat passes never
    removed = torch.where(sib, pc[:, None, :], 0.0).sum(-1)  # [B, T]
    ok = uniforms[:, :width] * (1.0 - removed) < pc  # [B, T]
    leaf = deepest_good(tree, ok & ~(sib & ok[:, None, :]).any(-1))  # [B]; first passing sibling
    residual = _without_children(target.row_probs(leaf), tree, leaf)
    return build_result(tree, tree.path_to(leaf), sample_from_probs(residual, uniforms[:, 0]))


def _verify_deterministic_walk(tree: DraftTree, target: Target, uniforms: Tensor) -> VerifyResult:
    """The same rule one depth at a time: only the rows the walk visits are processed (a sort of
    ``[B, V]`` per depth when a row uses top-p alone)."""
    batch, width = tree.tokens.shape
    dev = tree.tokens.device
    tok = tree.tokens.clamp(0, target.logits.shape[-1] - 1)  # [B, T]; padding may hold anything
    u = uniforms[:, :width]  # [B, T]
    cur = torch.zeros(batch, dtype=torch.long, device=dev)  # [B] current node
    alive = torch.ones(batch, dtype=torch.bool, device=dev)  # [B] still descending
    path = torch.full((batch, tree.max_depth + 1), -1, dtype=torch.long, device=dev)
    path[:, 0] = 0
    for d in range(tree.max_depth):
        p = target.row_probs(cur)  # [B, V]
        kids = tree.first_of_token & (tree.parent_index == cur[:, None]) & alive[:, None]  # [B, T]
        pc = torch.where(kids, p.gather(1, tok), 0.0)  # [B, T]
        removed = torch.cumsum(pc, dim=1) - pc  # [B, T]; only cur's children are nonzero
        ok = u * (1.0 - removed) < pc
        hit, first = ok.to(torch.uint8).max(dim=1)  # max's index is the first maximal one
        alive &= hit.bool()
        cur = torch.where(alive, first, cur)
        path[:, d + 1] = torch.where(alive, cur, -1)
    residual = _without_children(target.row_probs(cur), tree, cur)
    return build_result(tree, path, sample_from_probs(residual, uniforms[:, 0]))


def _without_children(p: Tensor, tree: DraftTree, node: Tensor) -> Tensor:  # [B, V]
    """p with the tokens of ``node``'s children zeroed: the residual once they all failed (not
    renormalised: the inverse-CDF draw scales by the total)."""
    kids = tree.inner & (tree.parent_index == node[:, None])  # [B, T]
    tok = tree.tokens.clamp(0, p.shape[-1] - 1)
    src = torch.where(kids, 0.0, float("inf"))  # amin keeps p elsewhere; no write conflicts
    res = p.scatter_reduce(1, tok, src, "amin", include_self=True)
    # All mass on rejected children has probability 0 (the last such child passes surely) but
    # rounding can reach it; any law is then right in the limit: keep p.
    return torch.where(res.sum(-1, keepdim=True) > 0, res, p)


def _verify_general(tree: DraftTree, target: Target, uniforms: Tensor) -> VerifyResult:
    """Any candidate kinds: per depth, the children of the current node are tried rank by rank
    (up to the tree's ``children_at_depth``), each rejection updating the ``[B, V]`` residual."""
    batch = tree.batch_size
    dev = tree.tokens.device
    children = children_table(tree)  # [B, T, R]
    cur = torch.zeros(batch, dtype=torch.long, device=dev)  # [B] current node
    alive = torch.ones(batch, dtype=torch.bool, device=dev)  # [B] still descending
    path = torch.full((batch, tree.max_depth + 1), -1, dtype=torch.long, device=dev)
    path[:, 0] = 0
    bonus_p = None  # [B, V] the distribution each row draws its bonus token from
    for d in range(tree.max_depth):
        p = target.row_probs(cur)  # [B, V]
        child, residual = _try_children(tree, target, children[:, :, : tree.children_at_depth[d]], cur,
                                        alive, p, uniforms)
        stop = alive & (child < 0)
        bonus_p = residual if bonus_p is None else torch.where(stop[:, None], residual, bonus_p)
        alive &= child >= 0
        cur = torch.where(alive, child, cur)
        path[:, d + 1] = torch.where(alive, cur, -1)
    # rows still descending stand on a node of the deepest level: a leaf, whose p is the law
    last = target.row_probs(cur)
    bonus_p = last if bonus_p is None else torch.where(alive[:, None], last, bonus_p)
    return build_result(tree, path, sample_from_probs(bonus_p, uniforms[:, 0]))


def _try_children(tree: DraftTree, target: Target, children: Tensor, cur: Tensor, alive: Tensor,
                  p: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """Try the children of ``cur`` in order: ``(accepted child [B] or -1, residual p [B, V])``
    (the residual matters only for rows that accepted nothing)."""
    rows = target.rows
    ch = children[rows, cur]  # [B, R]
    has = (ch >= 0) & alive[:, None]  # [B, R]
    node = ch.clamp(min=0)
    tok = tree.tokens[rows[:, None], node].clamp(0, p.shape[-1] - 1)  # [B, R]
    u = uniforms[rows[:, None], node]  # [B, R]
    kind = tree.kind[rows[:, None], node].long()
    if target.params.any_greedy:
        kind = torch.where(target.params.greedy[:, None], DET, kind)
    q = tree.draft_probs[rows, cur].float()  # [B, V]
    rank, residual = _first_sequential(p, tok, kind, has, u, q, tree.has_no_replacement)
    child = torch.where(rank >= 0, ch.gather(1, rank.clamp(min=0)[:, None])[:, 0], -1)
    return child, residual


def _first_sequential(p: Tensor, tok: Tensor, kind: Tensor, has: Tensor, u: Tensor, q: Tensor,
                      no_replacement: bool) -> tuple[Tensor, Tensor]:
    """General rule, one sibling rank at a time (``kind [B, R]`` per child, ``q [B, V]`` the
    draft law at the parent). Returns (first accepted rank or -1 [B], residual p [B, V])."""
    batch, width = tok.shape
    rank = torch.full((batch,), -1, dtype=torch.long, device=p.device)
    q_nr = q if no_replacement else None  # [B, V] q minus the rejected no-replacement tokens
    for r in range(width):
        c, k = tok[:, r, None], kind[:, r]  # [B, 1], [B]
        trying = has[:, r] & (rank < 0)
        law = q if q_nr is None else torch.where((k == NO_REPL)[:, None], q_nr / q_nr.sum(-1, keepdim=True), q)
        law = torch.where((k == DET)[:, None], 0.0, law)  # [B, V]; DET's point mass handled below
        qc = torch.where(k == DET, 1.0, law.gather(1, c)[:, 0])  # [B]
        pc = p.gather(1, c)[:, 0]  # [B]
        ok = trying & (u[:, r] * qc < pc)
        rank = torch.where(ok, r, rank)
        res = (p - law).clamp_(min=0)
        res.scatter_(1, c, torch.where(k == DET, 0.0, res.gather(1, c)[:, 0])[:, None])
        mass = res.sum(-1, keepdim=True)  # [B, 1]
        res = torch.where(mass > 0, res / mass.clamp(min=1e-30), p)  # p == q_c: nothing to remove
        p = torch.where((trying & ~ok)[:, None], res, p)
        if q_nr is not None:
            drop = (trying & ~ok & (k == NO_REPL))[:, None]
            q_nr = q_nr.scatter(1, c, torch.where(drop, 0.0, q_nr.gather(1, c)))
    return rank, p
