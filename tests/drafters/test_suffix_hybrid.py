"""drafter=suffix and drafter=hybrid: greedy output equal to the target's in fp32 (continuous
batching, preemption, graph staging emulated), the suffix drafter's votes and bounded store, and
the tree merge (a path proposed twice is one node; best first; every prefix a subtree)."""
import copy

import numpy as np
import pytest
import torch

from specdec.drafters.eagle.eagle3 import Eagle3Drafter
from specdec.drafters.hybrid import HybridDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.drafters.suffix import SuffixDrafter, Text, vote_trie
from specdec.drafters.tree_merge import best_first, merge
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.engine.speculation import AdaptivePolicy
from specdec.verifiers import DraftTree, LosslessVerifier

from eagle_cases import PROMPTS, random_eagle3, unit_rms_target, write

GREEDY = SamplingParams(max_new_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def target(tiny_dir):
    return unit_rms_target(tiny_dir("llama", num_hidden_layers=1))


@pytest.fixture(scope="module")
def eagle3_path(target, tmp_path_factory):
    return str(write(random_eagle3(target), tmp_path_factory.mktemp("hybrid") / "eagle3", aux_layer_ids=(1, 1, 1)))


def run(target, drafter, policy=None, **cfg):
    config = EngineConfig(**{"device": "cpu", "dtype": "float32", "block_size": 4, "max_num_seqs": 3, **cfg})
    engine = Engine(copy.deepcopy(target), drafter, LosslessVerifier(), config, policy=policy)
    seqs = engine.generate(PROMPTS + PROMPTS[:2], GREEDY)  # repeats: the store has seen them
    assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"
    return engine, [s.output for s in seqs]


def hybrid(path):
    return HybridDrafter([Eagle3Drafter(path, total_tokens=12, depth=3, top_k=4),
                          SuffixDrafter(max_nodes=12, max_depth=6),
                          NgramDrafter(num_tokens=4, max_matches=3, max_nodes=10)], max_nodes=16)


@pytest.mark.parametrize("name", ["suffix", "hybrid"])
@pytest.mark.parametrize("cfg", [{}, {"cuda_graphs": "emulate"}, {"num_blocks": 22, "max_num_batched_tokens": 16}],
                         ids=["eager", "graphs", "preemption"])
def test_greedy_output_is_the_targets(target, eagle3_path, name, cfg):
    _, reference = run(target, NoDrafter(), **cfg)
    drafter = SuffixDrafter(max_nodes=16, max_depth=8) if name == "suffix" else hybrid(eagle3_path)
    engine, outputs = run(target, drafter, **cfg)
    assert outputs == reference
    if "num_blocks" in cfg:
        assert engine.scheduler.num_preemptions > 0
    assert sum(a for s in engine.sequences.values() for a in s.accept_lengths) > 0


def test_hybrid_under_the_adaptive_policy(target, eagle3_path, tmp_path):
    _, reference = run(target, NoDrafter())
    policy = AdaptivePolicy(cost_dir=str(tmp_path), min_samples=1, log=lambda m: None)
    _, outputs = run(target, hybrid(eagle3_path), policy)
    assert outputs == reference


def test_suffix_votes_follow_the_longest_match():
    """Two earlier contexts continue the bigram (7, 8) differently; the one that also matches the
    token before (5) wins, and a finished output joins the store."""
    drafter = SuffixDrafter(max_nodes=8, max_depth=4, alpha=4.0, min_share=0.0)
    own = Text()
    own.extend([1, 7, 8, 9, 9, 5, 7, 8, 3, 3, 0, 5, 7, 8])
    votes, depth = drafter.votes(own)
    assert [v.tolist()[:2] for v in votes] == [[3, 3]] and depth == 4  # match of 3 (5, 7, 8) x alpha 4
    tokens, parents, scores = drafter.tree(own, 8)
    assert tokens[:3] == [8, 3, 3] and parents[:3] == [-1, 0, 1] and scores[1] == 0.0


def test_suffix_store_is_bounded():
    drafter = SuffixDrafter(max_stored_tokens=10)

    class Seq:
        def __init__(self, i, out):
            self.seq_id, self.output, self.finished = i, out, True
    for i in range(6):
        drafter.release(Seq(i, [i] * 4))
    assert drafter.stored <= 10 and len(drafter.store) <= 3
    assert drafter.store_text.size == sum(len(o) + 1 for o in drafter.store)


def test_vote_trie_is_best_first_and_prefix_closed():
    votes = [np.array(v) for v in ([1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 9])]
    tokens, parents, scores = vote_trie(0, votes, 5, 3, 0.0)  # ties: the shallower node first
    assert tokens == [0, 1, 2, 7, 5] and parents == [-1, 0, 1, 0, 1]
    assert scores == sorted(scores, reverse=True) and np.isclose(np.exp(scores[1]), 0.75)


def test_merge_joins_shared_paths_and_keeps_the_best():
    """Tree a: root -> 1 -> 2; tree b: root -> 1 -> 3 and root -> 4. The shared node 1 takes the
    larger probability; the budget keeps the best nodes, parents first."""
    tok_a, par_a = torch.tensor([[0, 1, 2]]), torch.tensor([[-1, 0, 1]])
    tok_b, par_b = torch.tensor([[0, 1, 3, 4]]), torch.tensor([[-1, 0, 1, 0]])
    va, vb = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    pa, pb = torch.tensor([[1.0, 0.5, 0.4]]), torch.tensor([[1.0, 0.9, 0.6, 0.2]])
    da, db = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2, 1]])
    tok, par, valid, prob, depth, where = merge(tok_a, par_a, va, pa, da, tok_b, par_b, vb, pb, db, 4)
    assert where.tolist() == [[0, 1, 3, 4]]
    assert tok[0, :5].tolist() == [0, 1, 2, 3, 4] and par[0, :5].tolist() == [-1, 0, 1, 1, 0]
    assert prob[0, :5].tolist() == pytest.approx([1.0, 0.9, 0.4, 0.6, 0.2])
    tokens, parents, num, p, kept = best_first(tok, par, valid, prob, depth, 4, 4)
    assert tokens[0].tolist() == [0, 1, 3, 2] and parents[0].tolist() == [-1, 0, 1, 1] and num.tolist() == [4]
    DraftTree(tokens, parents, num)  # a valid tree (parents first)


@pytest.mark.parametrize("graphs", [False, "emulate"])
def test_eagle_budget_levels_under_the_adaptive_policy(target, eagle3_path, tmp_path, graphs):
    """The adaptive policy moves EAGLE-3 between its budget levels, each grown at its own depth
    (and graph key): the greedy output stays the target's."""
    _, reference = run(target, NoDrafter(), cuda_graphs=graphs)
    drafter = Eagle3Drafter(eagle3_path, total_tokens=32, depth=5, top_k=4)
    policy = AdaptivePolicy(cost_dir=str(tmp_path), min_samples=1, log=lambda m: None)
    # the tiny target's drafts are rarely accepted, so no level above the smallest could pay:
    # measure every level anyway, to move the drafter through all of them
    policy.worth_exploring = lambda b, levels, tokens, cost, rate: next(
        (n for i, n in enumerate(levels) if i not in rate), None)
    engine, outputs = run(target, drafter, policy, cuda_graphs=graphs)
    assert outputs == reference
    assert drafter.budget_levels == (8, 16, 24, 32)
    assert [g.depth for g in drafter.growths.values()] == [3, 4, 5, 5]
    assert len([n for n in policy.chosen if n > 1]) > 1, "one tree size only"
