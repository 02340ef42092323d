"""Lossless tree verification: multi-candidate recursive rejection sampling.

Follows SpecInfer (Miao et al., 2024, "multi-step speculative sampling") and EAGLE's tree
sampling, with the candidate-kind rules of DESIGN.md "Verifiers: the rules". At the current node
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

Vectorised over the batch; the host loops over depth (and, only at depths with random kinds,
over sibling rank). Randomness is an input: ``uniforms[b, i]`` decides node i's test and
``uniforms[b, 0]`` draws the bonus token.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .probs import RowParams, _processed, sample_from_probs
from .result import VerifyResult, build_result
from .structure import Siblings, group_rank, siblings
from .tree import CandidateKind, DraftTree

DET, SAMPLED, NO_REPL = (int(k) for k in CandidateKind)


def verify_lossless(tree: DraftTree, logits: Tensor, params: RowParams, uniforms: Tensor) -> VerifyResult:
    """``logits [B, T, V]``, ``params`` per row, ``uniforms [B, >= T]`` in [0, 1)."""
    inner = tree.valid & (torch.arange(tree.max_nodes, device=logits.device) > 0)
    random = inner & (tree.kind != DET) & ~params.greedy[:, None]
    if bool(random.any()):
        return _verify_general(tree, logits, params, uniforms)
    return _verify_deterministic(tree, logits, params, uniforms)


def _verify_deterministic(tree: DraftTree, logits: Tensor, params: RowParams, uniforms: Tensor) -> VerifyResult:
    """Every candidate DETERMINISTIC (top-k trees; greedy rows): per depth, the siblings' tests
    have a closed form over ``[B, T]`` (`_first_deterministic`), and the bonus residual is
    rebuilt once at the end from the node where each row stopped (its children all rejected),
    so a depth costs one ``[B, V]`` processed distribution and a few ``[B, T]`` kernels."""
    batch, width = tree.tokens.shape
    rows, idx = torch.arange(batch, device=logits.device), torch.arange(width, device=logits.device)
    tok = tree.tokens.clamp(0, logits.shape[-1] - 1)  # [B, T]; padding may hold anything
    inner = tree.valid & (idx > 0)
    _, first = group_rank(torch.where(inner, tree.parents * logits.shape[-1] + tok, -1 - idx))
    u = uniforms[:, :width].float()  # [B, T]
    cur = torch.zeros(batch, dtype=torch.long, device=logits.device)  # [B] current node
    alive = torch.ones(batch, dtype=torch.bool, device=logits.device)  # [B] still descending
    path = torch.full((batch, tree.max_depth + 1), -1, dtype=torch.long, device=logits.device)
    path[:, 0] = 0
    for d in range(tree.max_depth):
        p = _processed(logits[rows, cur], params)  # [B, V]
        kids = (tree.parents == cur[:, None]) & alive[:, None]  # [B, T] children of cur
        pc = p.gather(1, tok) * (kids & first)  # [B, T]; a repeated token was removed already
        hit = _first_deterministic(p, pc, u)  # [B] accepted node or -1
        alive &= hit >= 0
        cur = torch.where(alive, hit, cur)
        path[:, d + 1] = torch.where(alive, cur, -1)
        if d + 1 < tree.max_depth and not bool(alive.any()):  # every row has stopped
            break
    residual = _without_children(_processed(logits[rows, cur], params), tree, tok, cur)
    return build_result(tree, path, sample_from_probs(residual, uniforms[:, 0]))


def _first_deterministic(p: Tensor, pc: Tensor, u: Tensor) -> Tensor:  # [B]
    """Siblings (the nonzero entries of ``pc [B, T]``, in node order) tried in turn with the
    DETERMINISTIC rule: after rejecting the earlier ones, p(c) renormalises to
    p(c) / (total - mass removed), so node i passes iff u_i * (total - removed_before_i) < p(c_i).
    Returns the first passing node, -1 if none."""
    removed = torch.cumsum(pc, dim=1) - pc  # [B, T] mass of the earlier siblings
    ok = u * (p.sum(-1, keepdim=True) - removed) < pc  # [B, T]; pc = 0 never passes
    hit, first = ok.to(torch.uint8).max(dim=1)  # max's index is the first maximal one
    return torch.where(hit.bool(), first, -1)


def _without_children(p: Tensor, tree: DraftTree, tok: Tensor, node: Tensor) -> Tensor:  # [B, V]
    """p with the tokens of ``node``'s children zeroed: the residual once they all failed (not
    renormalised: the inverse-CDF draw scales by the total)."""
    kids = (tree.parents == node[:, None]) & tree.valid  # [B, T]
    src = torch.where(kids, 0.0, float("inf"))  # amin keeps p elsewhere; no write conflicts
    res = p.scatter_reduce(1, tok, src, "amin", include_self=True)
    # All mass on rejected children has probability 0 (the last such child passes surely) but
    # rounding can reach it; any law is then right in the limit: keep p.
    return torch.where(res.sum(-1, keepdim=True) > 0, res, p)


def _verify_general(tree: DraftTree, logits: Tensor, params: RowParams, uniforms: Tensor) -> VerifyResult:
    """Any candidate kinds: per depth, the children of the current node are tried rank by rank
    where a SAMPLED* kind appears (its residual needs [B, V] work per sibling)."""
    sib = siblings(tree, deterministic_rows=params.greedy)
    batch = tree.batch_size
    rows = torch.arange(batch, device=logits.device)
    cur = torch.zeros(batch, dtype=torch.long, device=logits.device)  # [B] current node
    alive = torch.ones(batch, dtype=torch.bool, device=logits.device)  # [B] still descending
    path = torch.full((batch, sib.max_depth + 1), -1, dtype=torch.long, device=logits.device)
    path[:, 0] = 0
    bonus_p = None  # [B, V] the distribution each row draws its bonus token from
    for d in range(sib.max_depth + 1):
        p = _processed(logits[rows, cur], params)  # [B, V]
        if sib.width_at_depth[d] == 0:
            bonus_p = p if bonus_p is None else torch.where(alive[:, None], p, bonus_p)
            break
        child, residual = _try_children(tree, sib, d, cur, alive, p, params, uniforms)
        stop = alive & (child < 0)
        bonus_p = residual if bonus_p is None else torch.where(stop[:, None], residual, bonus_p)
        alive &= child >= 0
        cur = torch.where(alive, child, cur)
        path[:, d + 1] = torch.where(alive, cur, -1)
        if d < sib.max_depth and not bool(alive.any()):  # every row has stopped: skip the rest
            break
    bonus = sample_from_probs(bonus_p, uniforms[:, 0])
    return build_result(tree, path, bonus)


def _try_children(tree: DraftTree, sib: Siblings, d: int, cur: Tensor, alive: Tensor, p: Tensor,
                  params: RowParams, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """Try the children of ``cur`` in order: ``(accepted child [B] or -1, residual p [B, V])``
    (the residual matters only for rows that accepted nothing)."""
    rows = torch.arange(cur.shape[0], device=cur.device)
    width = sib.width_at_depth[d]
    ch = sib.children[rows, cur, :width]  # [B, R]
    has = (ch >= 0) & alive[:, None]  # [B, R]
    node = ch.clamp(min=0)
    tok = tree.tokens[rows[:, None], node]  # [B, R]
    u = uniforms[rows[:, None], node]  # [B, R]
    if sib.random_at_depth[d]:
        kind = torch.where(params.greedy[:, None], DET, tree.kind[rows[:, None], node].long())
        rank, residual = _first_sequential(p, tok, kind, has, u, tree.draft_probs[rows, cur])
    else:
        first = sib.first_of_token[rows[:, None], node] & has  # [B, R]
        pc = p.gather(1, tok.clamp(min=0)) * first
        rank = _first_deterministic(p, pc, u)
        residual = _remove_tokens(p, tok, has)
    child = torch.where(rank >= 0, ch.gather(1, rank.clamp(min=0)[:, None])[:, 0], -1)
    return child, residual


def _first_sequential(p: Tensor, tok: Tensor, kind: Tensor, has: Tensor, u: Tensor,
                      q: Tensor) -> tuple[Tensor, Tensor]:
    """General rule, one sibling rank at a time (``kind [B, R]`` per child, ``q [B, V]`` the
    draft law at the parent). Returns (first accepted rank or -1 [B], residual p [B, V])."""
    batch, width = tok.shape
    rank = torch.full((batch,), -1, dtype=torch.long, device=p.device)
    q_nr = q.float() if bool((kind == NO_REPL).any()) else None  # [B, V] q minus rejected NR tokens
    for r in range(width):
        c, k = tok[:, r].clamp(min=0)[:, None], kind[:, r]  # [B, 1], [B]
        trying = has[:, r] & (rank < 0)
        law = q.float() if q_nr is None else torch.where((k == NO_REPL)[:, None], q_nr / q_nr.sum(-1, keepdim=True), q.float())
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


def _remove_tokens(p: Tensor, tok: Tensor, has: Tensor) -> Tensor:  # [B, V]
    """p with the tokens of every tried child zeroed (the residual after all DETERMINISTIC
    siblings fail; not renormalised: the inverse-CDF draw scales by the total)."""
    any_child = has.any(1, keepdim=True)  # [B, 1]
    pad = torch.where(any_child, tok[:, :1], 0).clamp(min=0)  # padding writes to a child's slot
    idx = torch.where(has, tok, pad).clamp(min=0)  # [B, R]
    keep = torch.where(has | any_child, 0.0, p.gather(1, idx))  # rows without children: unchanged
    res = p.scatter(1, idx, keep)
    # All mass on rejected children has probability 0 (the last such child passes surely) but
    # rounding can reach it; any law is then correct in the limit: keep p.
    return torch.where(res.sum(-1, keepdim=True) > 0, res, p)
