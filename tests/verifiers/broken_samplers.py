"""Deliberately broken samplers for check_lossless's power tests, each wrapping `verify_tree`.
``*_at(k)`` bugs are confined to one emitted position k (1 = a step's first token): they change
the law of y_k on the draws that reach it and leave the conditional law of every other position
intact."""
import torch

from specdec.verifiers import CandidateKind, DraftTree, processed_probs, sample_from_probs, verify_tree


def _stopped_at(tree, result):
    """[B] bool: the step's last accepted node had children, so all of them were rejected and
    the bonus came from the residual."""
    return tree.num_children.gather(1, result.last_node[:, None])[:, 0] > 0


def _bonus_from_p(tree, logits, temperature, top_p, top_k, uniforms, where):
    """verify_tree, except that rows ``where(result)`` draw their bonus token from p at the last
    accepted node instead of the residual."""
    result = verify_tree(tree, logits, temperature, top_p, top_k, uniforms)
    rows = torch.arange(tree.batch_size)
    p = processed_probs(logits[rows, result.last_node], temperature, top_p, top_k)
    result.bonus_token = torch.where(where(result), sample_from_probs(p, uniforms[:, 0]), result.bonus_token)
    return result


def forgets_residual(tree, logits, temperature, top_p, top_k, uniforms):
    """Broken: after a rejection, draws the bonus token from p instead of the residual."""
    return _bonus_from_p(tree, logits, temperature, top_p, top_k, uniforms, lambda r: torch.ones_like(r.bonus_token, dtype=torch.bool))


def forgets_residual_from(k: int):
    """The issue's sampler: exact for the first k - 1 tokens; from position k on, the bonus after
    a rejection comes from p instead of the residual."""
    def verify(tree, logits, temperature, top_p, top_k, uniforms):
        return _bonus_from_p(tree, logits, temperature, top_p, top_k, uniforms,
                             lambda r: (r.num_accepted >= k - 1) & _stopped_at(tree, r))
    verify.__name__ = f"forgets_residual_from_{k}"
    return verify


def forgets_residual_at(k: int):
    """Broken at position k only: a bonus there after a rejection comes from p, not the residual."""
    def verify(tree, logits, temperature, top_p, top_k, uniforms):
        return _bonus_from_p(tree, logits, temperature, top_p, top_k, uniforms,
                             lambda r: (r.num_accepted == k - 1) & _stopped_at(tree, r))
    verify.__name__ = f"forgets_residual_at_{k}"
    return verify


def overaccepts_at(k: int, factor: float = 0.8):
    """Broken at position k only: the acceptance tests of the candidates at depth k use
    ``factor * u`` (accept with min(1, p / (factor q)), resp. p(c) / factor): too often."""
    def verify(tree, logits, temperature, top_p, top_k, uniforms):
        u = uniforms.clone()
        width = tree.max_nodes
        u[:, :width] = torch.where(tree.depth == k, u[:, :width] * factor, u[:, :width])
        return verify_tree(tree, logits, temperature, top_p, top_k, u)
    verify.__name__ = f"overaccepts_at_{k}"
    return verify


def parent_logits_at(k: int):
    """Broken at position k >= 2 only: an off-by-one row index — the candidates at depth k are
    tested, and a bonus at position k drawn, with the logits of their grandparent (the node one
    level up from the right one)."""
    assert k >= 2

    def verify(tree, logits, temperature, top_p, top_k, uniforms):
        at = (tree.depth == k - 1)[:, :, None]  # nodes whose logits give position k
        up = logits.gather(1, tree.parent_index[:, :, None].expand_as(logits))
        return verify_tree(tree, torch.where(at, up, logits), temperature, top_p, top_k, uniforms)
    verify.__name__ = f"parent_logits_at_{k}"
    return verify


def _relabelled(tree, kind):
    return DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=torch.full_like(tree.kind, int(kind)),
                     draft_probs=tree.draft_probs)


def topk_as_sampled(tree, logits, temperature, top_p, top_k, uniforms):
    """Broken: treats top-k (deterministic) candidates as if drawn from q: min(1, p / q)."""
    return verify_tree(_relabelled(tree, CandidateKind.SAMPLED), logits, temperature, top_p, top_k, uniforms)


def no_replacement_as_iid(tree, logits, temperature, top_p, top_k, uniforms):
    """Broken (subtly): drafts drawn without replacement verified as if i.i.d."""
    return verify_tree(_relabelled(tree, CandidateKind.SAMPLED), logits, temperature, top_p, top_k, uniforms)
