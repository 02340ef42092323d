"""Tree verification rules for speculative decoding. Depends on torch alone.

The API an engine calls (ARCHITECTURE.md "The step": ``result = verifier.verify(tree, logits)``):

    from specdec.verifiers import DraftTree, verify_tree
    tree = DraftTree.from_lists([[root, a, b, c]], [[-1, 0, 0, 1]])     # or chains / from_choices
    result = verify_tree(tree, logits,                # [B, T, V]: target logits after each node
                         temperature, top_p, top_k,   # scalars or per row [B]; temperature 0 = greedy
                         uniforms)                    # [B, U >= T] in [0, 1) (or generator=...)
    result.accepted_nodes   # [B, D + 1] accepted path, root first, -1 padded
    result.num_accepted     # [B] accepted draft tokens (root excluded)
    result.bonus_token      # [B] the token sampled after the last accepted node
    result.output_tokens    # [B, D + 1] what the step emits: accepted tokens then the bonus
    result.depth_attempted, result.depth_accepted   # [B, D] per-depth counts for metrics

* `verify_tree`: greedy rows (temperature 0) reproduce the target's argmax walk; sampled rows use
  lossless multi-candidate rejection sampling, respecting each node's `CandidateKind`
  (SAMPLED i.i.d. from q, SAMPLED_NO_REPLACEMENT, DETERMINISTIC top-k picks). Greedy and sampled
  rows may share a batch.
* `verify_tree_typical`: Medusa's typical acceptance (lossy by design, named so).
* `verify_match`: exact match — each position's token is the target's own inverse-CDF draw with
  that position's uniform, a node accepted when it equals the draw at its parent; the output is
  autoregressive sampling's, draw for draw (``engine.exact=true``; `exact_verifier`).
* `LosslessVerifier()`, `TypicalVerifier(posterior_threshold, posterior_alpha)`, `MatchVerifier()`: what Hydra
  instantiates; ``.verify(tree, logits, temperature, top_p, top_k, uniforms)``, ``.lossless``,
  ``.name``.
* `processed_probs(logits, temperature, top_p, top_k)`: the target distribution every rule
  preserves (HF order and semantics); `sample_from_probs(probs, uniforms)`: the inverse-CDF draw
  a plain sampler shares with the verifier.
* `check_lossless(verify_fn, ...)`: Monte-Carlo chi-square test that a verifier (ours or any
  engine's, wrapped to this signature) preserves the target distribution.
* `specdec.verifiers.hf` (imports transformers; not imported here): speculative generation
  for any HF ``AutoModelForCausalLM``.

Randomness is an input: ``uniforms[b, i]`` decides node i's acceptance test and
``uniforms[b, 0]`` draws the bonus token, so a request's outputs depend only on its own draws.

No host sync, for CUDA graphs: ``verify_tree(..., check=False, plan=SamplingPlan(...))`` (or
``LosslessVerifier(check=False).verify(..., plan=...)``) reads nothing from the device, given a
tree built with ``validate=True`` (its one read happens when it is built) or, inside a graph,
``DraftTree(tokens, parents, num_nodes, ..., validate=False, depth_bound=D, children_bound=R)``.
Parameters given as Python numbers or CPU tensors need no plan.
"""
from .api import (LosslessVerifier, MatchVerifier, TypicalVerifier, exact_verifier, verify_tree,
                  verify_tree_typical)
from .match import verify_match
from .check import LosslessReport, check_lossless, chi_square_pvalue
from .probs import SamplingPlan, processed_probs, sample, sample_from_probs
from .result import VerifyResult
from .tree import MAX_NODES, CandidateKind, DraftTree, TreeChoices

__all__ = [
    "CandidateKind", "DraftTree", "MAX_NODES", "TreeChoices", "VerifyResult",
    "verify_tree", "verify_tree_typical", "verify_match", "LosslessVerifier", "TypicalVerifier",
    "MatchVerifier", "exact_verifier",
    "processed_probs", "sample", "sample_from_probs", "SamplingPlan",
    "check_lossless", "chi_square_pvalue", "LosslessReport",
]
