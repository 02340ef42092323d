"""Entry points: `verify_tree` (greedy / lossless), `verify_tree_typical` (Medusa, lossy), the
thin classes Hydra instantiates, and input validation with errors that say what to fix."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .greedy import verify_greedy
from .match import verify_match
from .probs import Param, RowParams, SamplingPlan, device_params, read_plan
from .result import VerifyResult
from .sampling import verify_lossless
from .tree import CandidateKind, DraftTree
from .typical import verify_typical


def verify_tree(tree: DraftTree, logits: Tensor, temperature: Param = 0.0, top_p: Param = 1.0,
                top_k: Param = 0, uniforms: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None, check: bool = True,
                plan: Optional[SamplingPlan] = None) -> VerifyResult:
    """Verify a batch of draft trees against the target's ``logits [B, T, V]`` (row i of a tree:
    the target's logits after node i). Rows with temperature 0 are greedy (exactly the target's
    argmax walk); others use lossless recursive rejection sampling, respecting each node's
    CandidateKind, after temperature, top-k and top-p (`processed_probs`).

    ``uniforms [B, U >= T]`` in [0, 1): column i >= 1 decides node i, column 0 draws the bonus
    token; draw them from each request's own generator (a fixed count per step, e.g. 65) so
    outputs do not depend on the batch. Without them, ``generator`` (or torch's global one)
    draws them.

    Host syncs: ``check=True`` validates values (one device-to-host transfer, two when the
    sampling parameters are device tensors). With ``check=False`` verification reads nothing from
    the device — it can be captured in a CUDA graph — provided the host facts are known: the
    tree's (`DraftTree` reads them when built, or takes bounds) and the sampling parameters'
    (free for Python numbers and CPU tensors; for device tensors pass ``plan``, else they are read
    once). Shapes are always checked."""
    params, uniforms = prepare(tree, logits, temperature, top_p, top_k, uniforms, generator, check, plan)
    if params is None:  # every row greedy
        return verify_greedy(tree, logits)
    return verify_lossless(tree, logits, params, uniforms)


def verify_tree_typical(tree: DraftTree, logits: Tensor, temperature: Param = 0.0,
                        top_p: Param = 1.0, top_k: Param = 0, uniforms: Optional[Tensor] = None,
                        generator: Optional[torch.Generator] = None,
                        posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
                        check: bool = True, plan: Optional[SamplingPlan] = None) -> VerifyResult:
    """Medusa's typical acceptance (LOSSY); same arguments as `verify_tree`."""
    if not (posterior_threshold > 0 and posterior_alpha > 0):
        raise ValueError(f"posterior_threshold and posterior_alpha must be > 0; got "
                         f"{posterior_threshold}, {posterior_alpha}")
    params, uniforms = prepare(tree, logits, temperature, top_p, top_k, uniforms, generator, check, plan)
    if params is None:
        return verify_greedy(tree, logits)
    return verify_typical(tree, logits, params, uniforms, posterior_threshold, posterior_alpha)


class LosslessVerifier:
    """Greedy at temperature 0, lossless rejection sampling otherwise (Hydra: verifier=lossless).
    ``check=False`` skips value validation (no host sync; see `verify_tree`); a call's own
    ``check`` overrides it (specdec's engine passes False: it builds the trees and validated the
    sampling parameters where requests entered)."""
    name = "lossless"
    lossless = True

    def __init__(self, check: bool = True):
        self.check = check

    def verify(self, tree: DraftTree, logits: Tensor, temperature: Param, top_p: Param, top_k: Param,
               uniforms: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
               plan: Optional[SamplingPlan] = None, check: Optional[bool] = None) -> VerifyResult:
        return verify_tree(tree, logits, temperature, top_p, top_k, uniforms, generator,
                           self.check if check is None else check, plan)


class MatchVerifier:
    """Exact-match verification (`verify_match`): every emitted token is the target's own draw
    with that position's uniform, so sampled output equals autoregressive output draw for draw
    (``engine.exact=true`` uses it in place of a lossless verifier; `exact_verifier`). Greedy at
    temperature 0. ``uniforms[b, d]``: the draw after depth d."""
    name = "match"
    lossless = True

    def __init__(self, check: bool = True):
        self.check = check

    def verify(self, tree: DraftTree, logits: Tensor, temperature: Param, top_p: Param, top_k: Param,
               uniforms: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
               plan: Optional[SamplingPlan] = None, check: Optional[bool] = None) -> VerifyResult:
        params, uniforms = prepare(tree, logits, temperature, top_p, top_k, uniforms, generator,
                                   self.check if check is None else check, plan)
        if params is None:
            return verify_greedy(tree, logits)
        return verify_match(tree, logits, params, uniforms)


def exact_verifier(verifier) -> "MatchVerifier":
    """The verifier ``engine.exact=true`` runs for ``verifier``: exact match, which emits the
    autoregressive draws; a lossy rule has no exact counterpart."""
    if not getattr(verifier, "lossless", False):
        raise ValueError(f"engine.exact=true needs a lossless verifier (verifier=lossless); "
                         f"{getattr(verifier, 'name', type(verifier).__name__)!r} changes the output "
                         f"by design, so no output could equal autoregressive decoding's")
    return verifier if isinstance(verifier, MatchVerifier) else MatchVerifier(check=getattr(verifier, "check", True))


class TypicalVerifier:
    """Medusa's typical acceptance: LOSSY by design (Hydra: verifier=typical)."""
    name = "typical"
    lossless = False

    def __init__(self, posterior_threshold: float = 0.09, posterior_alpha: float = 0.3, check: bool = True):
        self.posterior_threshold = posterior_threshold
        self.posterior_alpha = posterior_alpha
        self.check = check

    def verify(self, tree: DraftTree, logits: Tensor, temperature: Param, top_p: Param, top_k: Param,
               uniforms: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
               plan: Optional[SamplingPlan] = None, check: Optional[bool] = None) -> VerifyResult:
        return verify_tree_typical(tree, logits, temperature, top_p, top_k, uniforms, generator,
                                   self.posterior_threshold, self.posterior_alpha,
                                   self.check if check is None else check, plan)


def prepare(tree: DraftTree, logits: Tensor, temperature: Param, top_p: Param, top_k: Param,
            uniforms: Optional[Tensor], generator: Optional[torch.Generator], check: bool,
            plan: Optional[SamplingPlan] = None) -> tuple[Optional[RowParams], Optional[Tensor]]:
    """Validate the inputs; plan and place the parameters; draw uniforms when none are given.
    Returns (None, None) when every row is greedy (no parameter or randomness is needed)."""
    if not isinstance(tree, DraftTree):
        raise TypeError(f"tree must be a specdec.verifiers.DraftTree; got {type(tree).__name__}")
    batch, width = tree.tokens.shape
    if logits.dim() != 3 or logits.shape[:2] != (batch, width):
        raise ValueError(f"logits must be [B, T, V] with [B, T] = [{batch}, {width}] as the tree "
                         f"(row i: the target's logits after node i); got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point; got {logits.dtype}")
    if logits.device != tree.tokens.device:
        raise ValueError(f"logits are on {logits.device} but the tree on {tree.tokens.device}")
    plan = read_plan(temperature, top_p, top_k, batch, plan, check)
    if uniforms is not None:
        uniforms = _uniforms(uniforms, generator, batch, width, logits.device)
    if plan.all_greedy:
        if check:
            _check_values(tree, logits, None, uniforms)
        return None, None
    params = device_params(temperature, top_p, top_k, batch, plan, logits.shape[-1], logits.device)
    uniforms = _uniforms(uniforms, generator, batch, width, logits.device)
    if check:
        _check_values(tree, logits, params, uniforms)
    return params, uniforms


def _uniforms(uniforms: Optional[Tensor], generator, batch: int, width: int, device) -> Tensor:
    if uniforms is None:
        gen_device = generator.device if generator is not None else "cpu"
        return torch.rand(batch, width, generator=generator, device=gen_device).to(device, non_blocking=True)
    if uniforms.dim() != 2 or uniforms.shape[0] != batch or uniforms.shape[1] < width:
        raise ValueError(f"uniforms must be [B, U] with B = {batch} and U >= T = {width} (column i "
                         f"decides node i, column 0 the bonus token); got {tuple(uniforms.shape)}")
    return uniforms.to(device, torch.float32, non_blocking=True)


def _check_values(tree: DraftTree, logits: Tensor, params: Optional[RowParams],
                  uniforms: Optional[Tensor]) -> None:
    """All value checks, decided in one host transfer; the failing one is explained."""
    vocab = logits.shape[-1]
    valid, width = tree.valid, tree.max_nodes
    none = torch.zeros((), dtype=torch.bool, device=valid.device)
    random = none
    if params is not None:
        random = tree.inner & (tree.kind != CandidateKind.DETERMINISTIC) & ~params.greedy[:, None]
    u = uniforms[:, :width] if uniforms is not None else None
    flags = torch.stack([
        (valid & ((tree.tokens < 0) | (tree.tokens >= vocab))).any(),
        (valid & ((tree.kind < 0) | (tree.kind > 2))).any(),
        none if u is None else ((u < 0) | (u >= 1) | torch.isnan(u)).any(),
        random.any(),
    ]).tolist()
    if flags[0]:
        raise ValueError(f"tree tokens must lie in [0, V = {vocab}) (the logits' vocabulary)")
    if flags[1]:
        raise ValueError("tree.kind must hold CandidateKind values 0, 1 or 2")
    if flags[2]:
        raise ValueError("uniforms must lie in [0, 1) (e.g. torch.rand)")
    if flags[3]:
        _check_draft_probs(tree, vocab, random)


def _check_draft_probs(tree: DraftTree, vocab: int, random: Tensor) -> None:
    """SAMPLED* nodes need q at their parent: a distribution that gives their token mass > 0,
    and SAMPLED_NO_REPLACEMENT siblings must not repeat a token."""
    q = tree.draft_probs
    if q is None:
        raise ValueError("nodes of kind SAMPLED / SAMPLED_NO_REPLACEMENT need tree.draft_probs "
                         "[B, T, V] (q at each node, the law its children were drawn from); "
                         "mark top-k picks DETERMINISTIC instead")
    if q.shape[-1] != vocab:
        raise ValueError(f"draft_probs has vocabulary {q.shape[-1]} but the logits {vocab}")
    rows = torch.arange(tree.batch_size, device=q.device)[:, None]
    par = tree.parent_index
    total = q.float().sum(-1)[rows, par]  # [B, T] mass of q at each node's parent
    low = q.amin(-1).float()[rows, par]  # [B, T]
    tol = 1e-3 if q.dtype in (torch.float32, torch.float64) else 2e-2
    bad_q = random & (((total - 1).abs() > tol) | (low < 0) | ~torch.isfinite(total))
    zero = random & (q[rows, par, tree.tokens.clamp(0, vocab - 1)] <= 0)  # [B, T]
    flags = torch.stack([bad_q.any(), zero.any(), _repeated_no_replacement(tree, random).any()]).tolist()
    if flags[0]:
        b, i = (int(x) for x in bad_q.nonzero()[0])
        raise ValueError(f"draft_probs at node {int(par[b, i])} of row {b} is not a distribution "
                         f"(sums to {float(total[b, i]):.6f}, min {float(low[b, i]):.3g}); "
                         f"pass probabilities, not logits")
    if flags[1]:
        b, i = (int(x) for x in zero.nonzero()[0])
        raise ValueError(f"row {b}, node {i}: token {int(tree.tokens[b, i])} is marked sampled but "
                         f"q at its parent gives it probability 0")
    if flags[2]:
        raise ValueError("SAMPLED_NO_REPLACEMENT siblings repeat a token: draws without "
                         "replacement cannot; mark them SAMPLED (i.i.d.) instead")


def _repeated_no_replacement(tree: DraftTree, random: Tensor) -> Tensor:  # [B, T] bool
    """No-replacement nodes with an earlier no-replacement sibling of the same token."""
    nr = random & (tree.kind == CandidateKind.SAMPLED_NO_REPLACEMENT)  # [B, T]
    same = tree.tokens[:, :, None] == tree.tokens[:, None, :]  # [B, T, T]
    return nr & (tree.earlier_siblings & same & nr[:, None, :]).any(-1)
