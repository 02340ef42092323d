"""check_lossless: a Monte-Carlo test that a tree verifier preserves the target distribution at
every position a step can emit.

Point it at any verifier with the signature

    verify_fn(tree: DraftTree, logits [N, T, V], temperature [N], top_p [N], top_k [N],
              uniforms [N, T]) -> VerifyResult | LongTensor [N, L]

(a VerifyResult, anything with ``output_tokens``, or the emitted tokens -1 padded). To test
another engine's sampler, wrap it to this signature: read the tree and logits, return the tokens
it emits.

The simulated world. A small random "language model" over ``vocab_size`` tokens whose logits
after a token depend on that token and on its position: ``target_logits[d, x]`` follows a node
of depth d holding token x (a tree's root, the last token before the step, has depth 0 and is
drawn uniformly per draw). The target is thus a Markov chain whose transition table changes with
the depth; each row's logits have their own scale (some peaked, some flat). The draft q is the
same kind of table, correlated with the target (the target's logits plus Gaussian noise,
softmaxed), close enough that trees are often accepted deep. Each draw builds one draft tree of
the given shape, its candidates drawn as the candidate kind says (i.i.d. from q at the parent,
without replacement, or q's top-k ranks), optionally pruned to its best ``prune`` nodes by
cumulative draft log-probability (EAGLE-2's rerank; ancestors are always kept, so rows get
different shapes). The verifier runs on all draws (in chunks).

What is tested. A tree of depth D lets a step emit up to K = D + 1 tokens y_1 .. y_K. Positions
after a step's last emitted token are filled by sampling the target itself, as the next step of
a lossless engine would. Under the null hypothesis (the verifier is lossless) root, y_1 .. y_K
is a path of the target chain, so for every position k the conditional law of y_k given the
root and y_1 .. y_{k-1} is ``p(. | depth k - 1, y_{k-1})`` (y_0 = the root): it depends on the
previous token only, because the world is Markov. For each position k the check runs one
chi-square test of that conditional law: the draws are grouped by their previous token (V
contexts), each context's counts of y_k are compared with p(. | context), and the statistics and
degrees of freedom of all contexts are summed (Pearson's chi-square for a product of
multinomials; cells with expected count < 5 are pooled within their context, a context too small
for two cells adds nothing). The K tests are asymptotically independent under the null, and each
reports its own p-value. Any emitted token the target gives probability 0 (cut by top-k / top-p,
or off the argmax when greedy) fails the check outright.

Verdict: PASS iff no impossible token and every position's p-value exceeds alpha / K
(Bonferroni over the K positions; for the global verdict this is the same decision as Holm's
step-down procedure, whose adjusted p-values the report also gives). So the check's family-wise
false-failure rate is at most ``alpha`` (up to the chi-square approximation).

Power. A bug confined to one position k changes the law of y_k only on the draws whose step
emits k tokens (the report's ``emitted``); the others are completed from the target. Deep
positions therefore need trees the target accepts deeply: in the default world (seed 1) a chain
of depth 5 emits its 6th token on 39% of the draws with sampled candidates, 4% with top-1
picks. Measured at 100,000 draws (README, "Using specdec's verifiers in your own engine";
tests/verifiers/test_verify_check_lossless.py): bugs confined to one position k <= 5 (the
residual forgotten there, acceptance 25% too easy there, the logits of the node one level up
there) fail at position k with p < 1e-12 for every candidate kind, on chains and pruned trees,
and at no other position. Conditioning on the previous token (not the whole prefix) keeps the
contexts few and the power high; it cannot see a bug whose effect at position k cancels when
averaged over y_1 .. y_{k-2} given y_{k-1}.

The report: ``positions`` (per position: p-value, chi2, dof, emitted, impossible),
``p_values``, ``p_adjusted`` (Holm), ``failed_positions``, ``threshold`` (alpha / K), the
counts and laws tested (``observed`` / ``expected``, [V, V] per position: previous token x
token), ``mean_accepted``; ``p_first`` etc. name position 1's test.

The p-values come from the regularised upper incomplete gamma (torch.special.gammaincc), so scipy
is not needed. Seeds are fixed: the same call gives the same report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .probs import processed_probs, sample_from_probs
from .tree import CandidateKind, DraftTree


def _topk_tree(branch: int, depth: int) -> tuple[list[int], list[int]]:
    """Full tree: every node of depth < ``depth`` has ``branch`` children (ranks 0 .. branch-1)."""
    parents, ranks, level = [-1], [-1], [0]
    for _ in range(depth):
        nxt = []
        for node in level:
            for r in range(branch):
                parents.append(node)
                ranks.append(r)
                nxt.append(len(parents) - 1)
        level = nxt
    return parents, ranks


# name -> (parents, rank of each node among q's top-k at its parent for DETERMINISTIC picks)
SHAPES: dict[str, tuple[list[int], list[int]]] = {
    "chain4": ([-1, 0, 1, 2, 3], [-1, 0, 0, 0, 0]),
    "chain5": ([-1, 0, 1, 2, 3, 4], [-1, 0, 0, 0, 0, 0]),
    "top3_depth3": _topk_tree(3, 3),
    # 62 nodes: meant to be pruned (prune=...) to a dynamic tree of depth up to 5
    "top2_depth5": _topk_tree(2, 5),
    # duplicate siblings: i.i.d. draws repeat on a small vocabulary; DETERMINISTIC picks repeat
    # a rank on purpose (a drafter that proposes one token twice)
    "dup_siblings": ([-1, 0, 0, 0, 1, 1, 1, 2, 2], [-1, 0, 0, 1, 0, 0, 1, 0, 1]),
}


@dataclass
class PositionTest:
    """The chi-square test of one emitted position (1 = a step's first token)."""
    position: int
    p_value: float
    chi2: float
    dof: int
    emitted: int  # draws whose token here came from the verifier (the rest: completed by the target)
    impossible: int  # tokens here that the target gives probability 0 after their context


@dataclass
class LosslessReport:
    passed: bool  # no impossible token and every position's p-value > alpha / len(positions)
    positions: list[PositionTest]  # one test per emitted position 1 .. tree depth + 1
    impossible: int  # emitted tokens the target gives probability 0, all positions
    num_draws: int
    mean_accepted: float  # accepted draft tokens per step (the check's power needs > 0)
    alpha: float  # family-wise level over the positions
    observed: list[Tensor] = field(repr=False, default_factory=list)  # per position [V, V]: counts of y_k by y_{k-1}
    expected: list[Tensor] = field(repr=False, default_factory=list)  # per position [V, V]: p(y_k | y_{k-1})

    @property
    def p_values(self) -> list[float]:
        return [t.p_value for t in self.positions]

    @property
    def threshold(self) -> float:
        """Each position's p-value must exceed this (Bonferroni)."""
        return self.alpha / max(len(self.positions), 1)

    @property
    def p_adjusted(self) -> list[float]:
        """Holm-adjusted p-values, per position (reject position k iff p_adjusted[k-1] <= alpha)."""
        order = sorted(range(len(self.positions)), key=lambda i: self.p_values[i])
        m, out, running = len(order), [1.0] * len(order), 0.0
        for j, i in enumerate(order):
            running = max(running, min(1.0, (m - j) * self.p_values[i]))
            out[i] = running
        return out

    @property
    def failed_positions(self) -> list[int]:
        """Positions whose test fails (Holm), 1-based."""
        return [t.position for t, q in zip(self.positions, self.p_adjusted) if q <= self.alpha or t.impossible]

    # the first position's test under the names of the former two-token report
    @property
    def p_first(self) -> float:
        return self.positions[0].p_value

    @property
    def chi2_first(self) -> float:
        return self.positions[0].chi2

    @property
    def dof_first(self) -> int:
        return self.positions[0].dof

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        per = ", ".join(f"{t.position}: {t.p_value:.3g} (chi2 {t.chi2:.1f}, dof {t.dof}, "
                        f"emitted {t.emitted}{f', impossible {t.impossible}' if t.impossible else ''})"
                        for t in self.positions)
        return (f"{verdict}: p by position [{per}]; each must exceed alpha / {len(self.positions)} = "
                f"{self.threshold:.3g} (Bonferroni); impossible = {self.impossible}, draws = "
                f"{self.num_draws}, mean accepted = {self.mean_accepted:.3f}, alpha = {self.alpha}")


def check_lossless(verify_fn: Callable, *, shape: Union[str, Sequence[int]] = "chain4",
                   kind: CandidateKind = CandidateKind.SAMPLED, vocab_size: int = 8,
                   temperature: float = 0.8, top_p: float = 0.9, top_k: int = 6,
                   num_draws: int = 100_000, seed: int = 0, alpha: float = 1e-3,
                   chunk_rows: int = 25_000, ranks: Sequence[int] | None = None,
                   prune: Optional[int] = None) -> LosslessReport:
    """Run ``verify_fn`` on ``num_draws`` random trees of ``shape`` (a name in SHAPES or a
    parents list; ``ranks`` then gives DETERMINISTIC picks, default: siblings take ranks 0, 1, ...)
    with candidates of ``kind``, each tree cut to its ``prune`` best nodes (root included) by
    cumulative draft log-probability when ``prune`` is given; return the per-position report."""
    parents, rank = _shape(shape, ranks)
    if prune is not None and not 2 <= prune <= len(parents):
        raise ValueError(f"prune must keep 2 .. {len(parents)} nodes of this shape; got {prune}")
    positions = max(_depths(parents)) + 1
    gen = torch.Generator().manual_seed(seed)
    world = _World.random(vocab_size, max_depth=max(positions, 2), gen=gen)
    params = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    vocab = vocab_size
    counts = torch.zeros(positions, vocab, vocab, dtype=torch.long)  # [K, context, token]
    emitted = torch.zeros(positions, dtype=torch.long)
    accepted = 0
    for start in range(0, num_draws, chunk_rows):
        rows = min(chunk_rows, num_draws - start)
        roots = torch.randint(vocab, (rows,), generator=gen)  # the last token before the step
        tree, logits = world.trees(parents, rank, kind, roots, gen, prune)
        temp, tp, tk = (torch.full((rows,), v) for v in (temperature, top_p, top_k))
        out = _emitted(verify_fn(tree, logits, temp, tp, tk.long(), torch.rand(rows, tree.max_nodes, generator=gen)),
                       positions, vocab)
        accepted += int((out >= 0).sum()) - rows
        emitted += (out >= 0).sum(0)
        seq = world.complete(out, params, gen)  # [N, K]
        context = torch.cat([roots[:, None], seq[:, :-1]], 1)
        for k in range(positions):
            counts[k] += torch.bincount(context[:, k] * vocab + seq[:, k], minlength=vocab * vocab).view(vocab, vocab)
    return _report(world, params, counts, emitted, accepted, num_draws, alpha)


def chi_square_pvalue(observed: Tensor, expected: Tensor, min_expected: float = 5.0) -> tuple[float, float, int]:
    """Pearson's chi-square of counts ``observed [K]`` against probabilities ``expected [K]``
    (cells with expected count < min_expected are pooled into one, and while that pooled cell is
    still below min_expected the smallest other cell joins it; cells of probability 0 are left
    out: the caller counts impossible tokens). Returns (chi2, p, dof); p = Q(dof / 2, chi2 / 2),
    the regularised upper incomplete gamma function."""
    chi2, dof = _pooled_chi2(observed, expected, min_expected)
    return chi2, _gamma_p(chi2, dof), dof


def conditional_chi_square(observed: Tensor, expected: Tensor,
                           min_expected: float = 5.0) -> tuple[float, float, int]:
    """Chi-square of a conditional law: ``observed [C, V]`` counts of a token per context,
    ``expected [C, V]`` its probabilities given each context. Each context is tested against its
    own row (pooling as `chi_square_pvalue`); statistics and degrees of freedom add up over
    contexts. Returns (chi2, p, dof)."""
    chi2, dof = 0.0, 0
    for obs, exp in zip(observed, expected):
        if int(obs.sum()) > 0:
            c, d = _pooled_chi2(obs, exp, min_expected)
            chi2, dof = chi2 + c, dof + d
    return chi2, _gamma_p(chi2, dof), dof


def _pooled_chi2(observed: Tensor, expected: Tensor, min_expected: float) -> tuple[float, int]:
    obs = observed.double().flatten()
    exp = expected.double().flatten() * float(obs.sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    small = exp < min_expected
    if bool(small.any()):
        order = torch.argsort(exp[~small])  # the smallest large cells join the pool if needed
        big_o, big_e = obs[~small][order], exp[~small][order]
        po, pe, j = obs[small].sum(), exp[small].sum(), 0
        while float(pe) < min_expected and j < big_e.numel():
            po, pe, j = po + big_o[j], pe + big_e[j], j + 1
        obs, exp = torch.cat([po[None], big_o[j:]]), torch.cat([pe[None], big_e[j:]])
    dof = int(obs.numel()) - 1
    if dof < 1:
        return 0.0, 0
    return float(((obs - exp) ** 2 / exp).sum()), dof


def _gamma_p(chi2: float, dof: int) -> float:
    if dof < 1:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(chi2 / 2, dtype=torch.float64)))


@dataclass
class _World:
    """A random target and a correlated draft, both indexed by (depth, token of the node)."""
    target_logits: Tensor  # [L, V, V]: logits after a node of depth d with token x
    draft_probs: Tensor  # [L, V, V]

    def __post_init__(self) -> None:  # lookup tables for drawing candidates
        self.draft_cdf = torch.cumsum(self.draft_probs, dim=-1)
        self.draft_order = self.draft_probs.argsort(dim=-1, descending=True, stable=True)
        self.draft_log = self.draft_probs.log()

    @staticmethod
    def random(vocab: int, max_depth: int, gen: torch.Generator) -> "_World":
        # each row's logits have a scale in [1.5, 3]: flat rows give many cells to test, peaked
        # ones deep acceptance; q: the target's logits plus noise (related, not equal)
        scale = 1.5 * (1 + torch.rand(max_depth, vocab, 1, generator=gen))
        target = torch.randn(max_depth, vocab, vocab, generator=gen) * scale
        draft = target + 0.7 * torch.randn(max_depth, vocab, vocab, generator=gen)
        return _World(target, torch.softmax(draft, dim=-1))

    def trees(self, parents: list[int], rank: list[int], kind: CandidateKind, roots: Tensor,
              gen: torch.Generator, prune: Optional[int] = None) -> tuple[DraftTree, Tensor]:
        rows, width = roots.shape[0], len(parents)
        depth = _depths(parents)
        children: dict[int, list[int]] = {}
        for i in range(1, width):
            children.setdefault(parents[i], []).append(i)
        groups: dict[tuple, list[int]] = {}  # parents of one depth with the same children ranks
        for node, kids in children.items():
            groups.setdefault((depth[node], tuple(rank[i] for i in kids)), []).append(node)
        tokens = roots[:, None].repeat(1, width)
        for (level, ranks), nodes in sorted(groups.items()):  # by depth: parents before children
            kids = torch.tensor([children[n] for n in nodes])  # [M, k]
            draw = self._draw(level, tokens[:, nodes], list(ranks), kind, gen)  # [N, M, k]
            tokens[:, kids.flatten()] = draw.reshape(rows, -1)
        d = torch.tensor(depth)[None, :].expand(rows, width)
        par = torch.tensor(parents)[None, :].expand(rows, width)
        if prune is not None and prune < width:
            tokens, par, d = self._prune(tokens, par, d, prune)
        width = tokens.shape[1]
        tree = DraftTree(tokens, par.clone(), torch.full((rows,), width),
                         kind=torch.full((rows, width), int(kind), dtype=torch.int8),
                         draft_probs=self.draft_probs[d, tokens])
        return tree, self.target_logits[d, tokens]

    def _draw(self, depth: int, parent: Tensor, ranks: list[int], kind: CandidateKind,
              gen: torch.Generator) -> Tensor:  # [N, M, k]
        """k candidates from q after each of ``parent [N, M]`` tokens at ``depth``: i.i.d. by
        inverse CDF; without replacement by Gumbel-top-k (the law of sequential draws without
        replacement); q's top-k ranks otherwise."""
        k = len(ranks)
        if kind == CandidateKind.SAMPLED:
            cdf = self.draft_cdf[depth][parent]  # [N, M, V]
            u = torch.rand(*parent.shape, k, generator=gen) * cdf[..., -1:]
            return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
        if kind == CandidateKind.SAMPLED_NO_REPLACEMENT:
            logq = self.draft_log[depth][parent]  # [N, M, V]
            gumbel = -torch.log(-torch.log(torch.rand(logq.shape, generator=gen).clamp_(min=1e-20)))
            return (logq + gumbel).topk(k, dim=-1).indices
        return self.draft_order[depth][:, ranks][parent]

    def _prune(self, tokens: Tensor, par: Tensor, d: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
        """Each row's ``keep`` best nodes by cumulative draft log-probability (the root always;
        ties to the older node, so every kept node's ancestors are kept: log q <= 0), in node
        order, parents renumbered."""
        rows, width = tokens.shape
        up = par.clamp(min=0)
        logq = self.draft_log[d.gather(1, up), tokens.gather(1, up), tokens].double()  # [N, W]
        logq[:, 0] = 0.0
        score = logq.clone()
        for _ in range(int(d.max())):  # after i rounds, exact for depth <= i
            score = logq + torch.where(par >= 0, score.gather(1, up), 0.0)
        score[:, 0] = float("inf")
        kept = score.sort(dim=1, descending=True, stable=True).indices[:, :keep].sort(dim=1).values
        new_index = torch.full((rows, width), -1, dtype=torch.long)
        new_index.scatter_(1, kept, torch.arange(keep).expand(rows, keep))
        old = par.gather(1, kept)
        new_par = torch.where(old >= 0, new_index.gather(1, old.clamp(min=0)), -1)
        if bool((new_par[:, 1:] < 0).any()):
            raise AssertionError("pruning dropped an ancestor of a kept node")
        return tokens.gather(1, kept), new_par, d.gather(1, kept)

    def probs(self, depth: int, params: dict) -> Tensor:  # [V, V]: p(. | node of depth d, token x)
        vocab = self.target_logits.shape[-1]
        return processed_probs(self.target_logits[depth], **{k: torch.full((vocab,), v) for k, v in params.items()})

    def complete(self, out: Tensor, params: dict, gen: torch.Generator) -> Tensor:  # [N, K]
        """The emitted tokens ``out [N, K]`` (-1 padded) with each row's positions after its step
        filled by sampling the target, as the next step of a lossless engine would."""
        seq = out.clone()
        for k in range(1, seq.shape[1]):
            draw = sample_from_probs(self.probs(k, params)[seq[:, k - 1]], torch.rand(seq.shape[0], generator=gen))
            seq[:, k] = torch.where(seq[:, k] >= 0, seq[:, k], draw)
        return seq


def _emitted(result, positions: int, vocab: int) -> Tensor:  # [N, positions] int64, -1 padded
    out = result.output_tokens if hasattr(result, "output_tokens") else result
    out = torch.as_tensor(out).long().cpu()
    if out.dim() != 2 or bool((out[:, 0] < 0).any()):
        raise ValueError("verify_fn must return a VerifyResult or emitted tokens [N, L] (-1 "
                         "padded, at least one token per row)")
    if out.shape[1] > positions:
        if bool((out[:, positions:] >= 0).any()):
            raise ValueError(f"verify_fn emitted more than tree depth + 1 = {positions} tokens in a step")
        out = out[:, :positions]
    out = torch.cat([out, torch.full((out.shape[0], positions - out.shape[1]), -1)], 1)
    if bool(((out[:, 1:] >= 0) & (out[:, :-1] < 0)).any()) or bool((out >= vocab).any()):
        raise ValueError(f"emitted tokens must be a prefix of tokens in [0, {vocab}), then -1 padding")
    return out


def _report(world: _World, params: dict, counts: Tensor, emitted: Tensor, accepted: int,
            draws: int, alpha: float) -> LosslessReport:
    tests, observed, expected = [], [], []
    for k in range(counts.shape[0]):
        probs = world.probs(k, params).double()  # [V, V] rows: previous token
        obs = counts[k]
        impossible = int(obs[probs == 0].sum())
        chi2, p, dof = conditional_chi_square(obs, probs)
        tests.append(PositionTest(k + 1, p, chi2, dof, int(emitted[k]), impossible))
        observed.append(obs)
        expected.append(probs)
    impossible = sum(t.impossible for t in tests)
    passed = impossible == 0 and all(t.p_value > alpha / len(tests) for t in tests)
    return LosslessReport(passed, tests, impossible, draws, accepted / draws, alpha, observed, expected)


def _shape(shape, ranks) -> tuple[list[int], list[int]]:
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown tree shape {shape!r}; use one of {sorted(SHAPES)} or a parents list")
        return SHAPES[shape]
    parents = [int(p) for p in shape]
    if ranks is None:
        ranks = [-1] + [sum(parents[j] == parents[i] for j in range(1, i)) for i in range(1, len(parents))]
    return parents, list(ranks)


def _depths(parents: list[int]) -> list[int]:
    depth = [0] * len(parents)
    for i in range(1, len(parents)):
        depth[i] = depth[parents[i]] + 1
    return depth
