"""check_lossless: a Monte-Carlo test that a tree verifier preserves the target distribution.

Point it at any verifier with the signature

    verify_fn(tree: DraftTree, logits [N, T, V], temperature [N], top_p [N], top_k [N],
              uniforms [N, T]) -> VerifyResult | LongTensor [N, L]

(a VerifyResult, anything with ``output_tokens``, or the emitted tokens -1 padded). To test
another engine's sampler, wrap it to this signature: read the tree and logits, return the tokens
it emits. The harness builds a small random "language model" (target logits depend on the
depth and token of a node), a correlated draft model q, and N draft trees of a fixed shape whose
candidates are drawn as the candidate kind says (i.i.d. from q, without replacement, or q's
top-k ranks). It runs the verifier on all N trees (in chunks) and tests, by chi-square:
  * the first emitted token against p(. | root) — the processed target (temperature, top-k,
    top-p as `processed_probs`);
  * the first two tokens against p(y1) p(y2 | y1). When a step emits one token, y2 is drawn
    from the target itself, as the next step of a lossless engine would.
A token the target gives probability 0 (cut by top-k / top-p) fails the check outright. The
p-values come from the regularised upper incomplete gamma (torch.special.gammaincc), so scipy
is not needed. Seeds are fixed: the same call gives the same report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from .probs import processed_probs, sample_from_probs
from .tree import CandidateKind, DraftTree

# name -> (parents, rank of each node among q's top-k at its parent for DETERMINISTIC picks)
SHAPES: dict[str, tuple[list[int], list[int]]] = {
    "chain4": ([-1, 0, 1, 2, 3], [-1, 0, 0, 0, 0]),
    "top3_depth3": (
        [-1] + [0] * 3 + [1 + i // 3 for i in range(9)] + [4 + i // 3 for i in range(27)],
        [-1] + [i % 3 for i in range(39)],
    ),
    # duplicate siblings: i.i.d. draws repeat on a small vocabulary; DETERMINISTIC picks repeat
    # a rank on purpose (a drafter that proposes one token twice)
    "dup_siblings": ([-1, 0, 0, 0, 1, 1, 1, 2, 2], [-1, 0, 0, 1, 0, 0, 1, 0, 1]),
}


@dataclass
class LosslessReport:
    passed: bool  # both p-values > alpha and no impossible token
    p_first: float  # chi-square p-value of the first emitted token
    p_pair: float  # ... of the first two tokens
    chi2_first: float
    dof_first: int
    chi2_pair: float
    dof_pair: int
    impossible: int  # emitted tokens (first or pair) the target gives probability 0
    num_draws: int
    mean_accepted: float  # accepted draft tokens per step (the check's power needs > 0)
    alpha: float
    observed_first: Tensor  # [V] counts
    expected_first: Tensor  # [V] probabilities

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict}: p(first) = {self.p_first:.4g} (chi2 {self.chi2_first:.1f}, dof "
                f"{self.dof_first}), p(pair) = {self.p_pair:.4g} (chi2 {self.chi2_pair:.1f}, dof "
                f"{self.dof_pair}), impossible = {self.impossible}, draws = {self.num_draws}, "
                f"mean accepted = {self.mean_accepted:.3f}, alpha = {self.alpha}")


def check_lossless(verify_fn: Callable, *, shape: Union[str, Sequence[int]] = "chain4",
                   kind: CandidateKind = CandidateKind.SAMPLED, vocab_size: int = 8,
                   temperature: float = 0.8, top_p: float = 0.9, top_k: int = 6,
                   num_draws: int = 100_000, seed: int = 0, alpha: float = 1e-3,
                   chunk_rows: int = 25_000, ranks: Sequence[int] | None = None) -> LosslessReport:
    """Run ``verify_fn`` on ``num_draws`` random trees of ``shape`` (a name in SHAPES or a
    parents list; ``ranks`` then gives DETERMINISTIC picks, default: siblings take ranks 0, 1, ...)
    with candidates of ``kind``; return the chi-square report."""
    parents, rank = _shape(shape, ranks)
    gen = torch.Generator().manual_seed(seed)
    world = _World.random(vocab_size, max_depth=max(_depth(parents) + 1, 2), gen=gen)
    params = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    first, second, accepted = [], [], 0
    for start in range(0, num_draws, chunk_rows):
        rows = min(chunk_rows, num_draws - start)
        tree, logits = world.trees(parents, rank, kind, rows, gen)
        temp, tp, tk = (torch.full((rows,), v) for v in (temperature, top_p, top_k))
        out = _emitted(verify_fn(tree, logits, temp, tp, tk.long(), torch.rand(rows, len(parents), generator=gen)))
        accepted += int((out >= 0).sum()) - rows
        y2 = torch.where(out[:, 1] >= 0, out[:, 1], world.next_token(out[:, 0], params, gen))
        first.append(out[:, 0])
        second.append(y2)
    return _report(world, params, torch.cat(first), torch.cat(second), accepted, num_draws, alpha)


def chi_square_pvalue(observed: Tensor, expected: Tensor, min_expected: float = 5.0) -> tuple[float, float, int]:
    """Pearson's chi-square of counts ``observed [K]`` against probabilities ``expected [K]``
    (cells with expected count < min_expected are pooled into one). Returns (chi2, p, dof);
    p = Q(dof / 2, chi2 / 2), the regularised upper incomplete gamma function."""
    obs, exp = observed.double().flatten(), expected.double().flatten() * float(observed.sum())
    small = exp < min_expected
    if bool(small.any()):
        obs = torch.cat([obs[~small], obs[small].sum()[None]])
        exp = torch.cat([exp[~small], exp[small].sum()[None]])
        if float(exp[-1]) <= 0:  # pooled cell of zero mass: caller counts impossible tokens
            obs, exp = obs[:-1], exp[:-1]
    dof = int(obs.numel()) - 1
    if dof < 1:
        return 0.0, 1.0, 0
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    p = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                      torch.tensor(chi2 / 2, dtype=torch.float64)))
    return chi2, p, dof


@dataclass
class _World:
    """A random target and a correlated draft, both indexed by (depth, token of the node)."""
    target_logits: Tensor  # [L, V, V]: logits after a node of depth d with token x
    draft_probs: Tensor  # [L, V, V]
    root: int = 0

    @staticmethod
    def random(vocab: int, max_depth: int, gen: torch.Generator) -> "_World":
        target = torch.randn(max_depth, vocab, vocab, generator=gen) * 1.5
        draft = target + torch.randn(max_depth, vocab, vocab, generator=gen)  # related, not equal
        return _World(target, torch.softmax(draft, dim=-1))

    def trees(self, parents: list[int], rank: list[int], kind: CandidateKind, rows: int,
              gen: torch.Generator) -> tuple[DraftTree, Tensor]:
        width = len(parents)
        depth = [0] * width
        for i in range(1, width):
            depth[i] = depth[parents[i]] + 1
        tokens = torch.full((rows, width), self.root, dtype=torch.long)
        for node in range(width):
            kids = [i for i in range(width) if parents[i] == node]
            if kids:
                q = self.draft_probs[depth[node], tokens[:, node]]  # [N, V]
                tokens[:, kids] = _draw(q, [rank[i] for i in kids], kind, gen)
        d = torch.tensor(depth)[None, :].expand(rows, width)
        tree = DraftTree(tokens, torch.tensor(parents).expand(rows, width).clone(),
                         torch.full((rows,), width), kind=torch.full((rows, width), int(kind), dtype=torch.int8),
                         draft_probs=self.draft_probs[d, tokens])
        return tree, self.target_logits[d, tokens]

    def next_token(self, y1: Tensor, params: dict, gen: torch.Generator) -> Tensor:  # [N]
        probs = processed_probs(self.target_logits[1, y1], **params)
        return sample_from_probs(probs, torch.rand(y1.shape[0], generator=gen))

    def expected(self, params: dict) -> tuple[Tensor, Tensor]:  # [V], [V, V]
        vocab = self.target_logits.shape[-1]
        p1 = processed_probs(self.target_logits[0, self.root][None], **params)[0].double()
        p2 = processed_probs(self.target_logits[1], **{k: torch.full((vocab,), v) for k, v in params.items()})
        return p1, p1[:, None] * p2.double()


def _draw(q: Tensor, ranks: list[int], kind: CandidateKind, gen: torch.Generator) -> Tensor:  # [N, k]
    """Candidates from ``q [N, V]``: i.i.d. by inverse CDF; without replacement by Gumbel-top-k
    (the same law as sequential draws without replacement); top-k ranks otherwise."""
    rows, k = q.shape[0], len(ranks)
    if kind == CandidateKind.SAMPLED:
        cdf = torch.cumsum(q, dim=-1)
        u = torch.rand(rows, k, generator=gen) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).clamp_(max=q.shape[-1] - 1)
    if kind == CandidateKind.SAMPLED_NO_REPLACEMENT:
        gumbel = -torch.log(-torch.log(torch.rand(q.shape, generator=gen).clamp_(min=1e-20)))
        return (torch.log(q) + gumbel).topk(k, dim=-1).indices
    order = q.argsort(dim=-1, descending=True, stable=True)
    return order[:, ranks]


def _emitted(result) -> Tensor:  # [N, L] int64, -1 padded, L >= 2
    out = result.output_tokens if hasattr(result, "output_tokens") else result
    out = torch.as_tensor(out).long().cpu()
    if out.dim() != 2 or bool((out[:, 0] < 0).any()):
        raise ValueError("verify_fn must return a VerifyResult or emitted tokens [N, L] (-1 "
                         "padded, at least one token per row)")
    return out if out.shape[1] >= 2 else torch.cat([out, torch.full_like(out, -1)], 1)


def _report(world: _World, params: dict, y1: Tensor, y2: Tensor, accepted: int, draws: int,
            alpha: float) -> LosslessReport:
    p1, joint = world.expected(params)
    vocab = p1.shape[0]
    obs1 = torch.bincount(y1, minlength=vocab)
    obs2 = torch.bincount(y1 * vocab + y2, minlength=vocab * vocab)
    impossible = int(obs1[p1 == 0].sum()) + int(obs2[joint.flatten() == 0].sum())
    c1, pv1, dof1 = chi_square_pvalue(obs1, p1)
    c2, pv2, dof2 = chi_square_pvalue(obs2, joint.flatten())
    passed = impossible == 0 and pv1 > alpha and pv2 > alpha
    return LosslessReport(passed, pv1, pv2, c1, dof1, c2, dof2, impossible, draws,
                          accepted / draws, alpha, obs1, p1)


def _shape(shape, ranks) -> tuple[list[int], list[int]]:
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown tree shape {shape!r}; use one of {sorted(SHAPES)} or a parents list")
        return SHAPES[shape]
    parents = [int(p) for p in shape]
    if ranks is None:
        ranks = [-1] + [sum(parents[j] == parents[i] for j in range(1, i)) for i in range(1, len(parents))]
    return parents, list(ranks)


def _depth(parents: list[int]) -> int:
    depth = [0] * len(parents)
    for i in range(1, len(parents)):
        depth[i] = depth[parents[i]] + 1
    return max(depth)
