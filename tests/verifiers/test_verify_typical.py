"""Typical acceptance equals a naive Medusa-style evaluation over root-to-leaf candidates."""
import math

import torch

from specdec.verifiers import (LosslessVerifier, TypicalVerifier, processed_probs, sample_from_probs,
                               verify_tree_typical)

from verifier_naive import friendly_logits, greedy_walk, random_tree


def _medusa_reference(tree, logits, temp, b, u0, eps=0.09, alpha=0.3):
    """Medusa's evaluate_posterior on the tree's leaf paths, then get_typical_one_token."""
    n = int(tree.num_nodes[b])
    probs = processed_probs(logits[b, :n], float(temp))  # [n, V]
    ent = -(probs * torch.log(probs + 1e-5)).sum(-1)
    thr = torch.minimum(torch.full_like(ent, eps), alpha * torch.exp(-ent))
    par, tok = tree.parents[b].tolist(), tree.tokens[b].tolist()
    paths, valid = tree.leaf_paths()
    best, best_len, best_ll = [0], 0, -math.inf
    for path, ok in zip(paths[b].tolist(), valid[b].tolist()):
        if not ok:
            continue
        nodes = [x for x in path if x >= 0]
        length, ll = 0, 0.0
        for node in nodes[1:]:
            pc = float(probs[par[node], tok[node]])
            if not pc > float(thr[par[node]]):
                break
            length, ll = length + 1, ll + math.log(pc)
        if length > best_len or (length == best_len and length > 0 and ll > best_ll):
            best, best_len, best_ll = nodes[: length + 1], length, ll
    leaf = best[-1]
    p = probs[leaf]
    bonus = int(sample_from_probs(torch.where(p >= thr[leaf], p, 0.0)[None], u0[None])[0])
    return best, bonus


def test_matches_medusa_reference():
    gen = torch.Generator().manual_seed(0)
    tree = random_tree(120, 16, 6, gen)
    logits = friendly_logits(tree, 6, gen, boost=3.0) * 1.5
    temp = torch.rand(120, generator=gen) + 0.3
    temp[::5] = 0.0
    u = torch.rand(120, 16, generator=gen)
    r = verify_tree_typical(tree, logits, temp, uniforms=u)
    lengths = []
    for b in range(120):
        if float(temp[b]) == 0:
            path, bonus = greedy_walk(tree, logits, b)
        else:
            path, bonus = _medusa_reference(tree, logits, temp[b], b, u[b, 0])
        n = len(path) - 1
        assert r.accepted_nodes[b, : n + 1].tolist() == path, b
        assert int(r.bonus_token[b]) == bonus, b
        lengths.append(n)
    assert max(lengths) >= 3 and min(lengths) == 0


def test_verifier_classes():
    typical, lossless = TypicalVerifier(posterior_threshold=0.2, posterior_alpha=0.5), LosslessVerifier()
    assert (typical.name, typical.lossless) == ("typical", False)
    assert (lossless.name, lossless.lossless) == ("lossless", True)
    assert (typical.posterior_threshold, typical.posterior_alpha) == (0.2, 0.5)
    gen = torch.Generator().manual_seed(1)
    tree = random_tree(8, 6, 5, gen)
    logits = friendly_logits(tree, 5, gen)
    u = torch.rand(8, 7, generator=gen)
    for v in (typical, lossless):
        r = v.verify(tree, logits, torch.full((8,), 0.8), torch.ones(8), torch.zeros(8, dtype=torch.long), u)
        assert r.bonus_token.shape == (8,) and r.accepted_nodes.shape[0] == 8
