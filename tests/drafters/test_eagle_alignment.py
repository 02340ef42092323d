"""The drafters see what training taught them to see. At every propose of a run with continuous
batching and preemption, the drafter's chain (a static tree [0], [0, 0], ...) must equal what the
training-time forward (`drafters.train.unroll`, dense attention over the whole sequence with the
target's features computed from scratch) predicts for pair L - 2: feature f_i paired with token
t_{i+1}, rope position i, depth-k nodes fed their parent's output. A feature taken from the wrong
position, a token shifted by one, a stale cache entry or a lost feature after preemption shows up
here, where greedy-equality tests cannot see it (they only see tau)."""
import pytest
import torch

from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.eagle.eagle3 import Eagle3Drafter
from specdec.drafters.medusa import MedusaDrafter
from specdec.drafters.train.features import target_features
from specdec.drafters.train.unroll import unroll
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

from eagle_cases import PROMPTS, mimic_eagle, random_eagle3, random_medusa, unit_rms_target, write

DEPTH = 4
CHAIN = [[0] * d for d in range(1, DEPTH + 1)]
PARAMS = SamplingParams(max_new_tokens=20, ignore_eos=True)
TIGHT = dict(num_blocks=40, max_num_batched_tokens=24)  # forces preemption


def record_proposals(drafter):
    """Wrap propose: keep (tokens of the sequence, proposed tree tokens) of every row."""
    seen, propose = [], drafter.propose

    def spy(seqs, budgets):
        tree = propose(seqs, budgets)
        for s, row, n in zip(seqs, tree.tokens.tolist(), tree.num_nodes.tolist()):
            seen.append((list(s.tokens), row[:n]))
        return tree

    drafter.propose = spy
    return seen


def run(target, drafter, **cfg):
    engine = Engine(target, drafter, LosslessVerifier(), EngineConfig(device="cpu", block_size=4, **cfg))
    seqs = engine.generate(PROMPTS, PARAMS)
    return engine, seqs


def reference_chain(net, target, tokens, chain, fused: bool, layers=()):
    """Top-1 continuation of pair L - 2 per step, by the training forward."""
    full = tokens + chain[1:]
    hidden, aux = target_features(target, [full], layers)
    first = (net.fuse(aux[0]) if fused else hidden[0])[None, :-1]  # [1, P, h]
    with torch.no_grad():
        outs = unroll(net, target.embed, first, torch.tensor([full]), len(chain) - 1)
    i = len(tokens) - 2
    picks = []
    for out in outs:
        o = out[0, i]
        if fused:
            picks.append(int(net.to_target(net.logits(o).argmax())))
        else:
            picks.append(int(target.compute_logits(o).argmax()))
    return picks


@pytest.fixture(scope="module")
def unit_target(tiny_dir):
    return unit_rms_target(tiny_dir("llama", num_hidden_layers=1))


@pytest.fixture(scope="module")
def deep_target(tiny_dir):
    return load_model(str(tiny_dir("llama", num_hidden_layers=4))).model


def test_eagle_chain_matches_training_forward_under_preemption(unit_target, tmp_path):
    net = mimic_eagle(unit_target)
    drafter = EagleDrafter(str(write(net, tmp_path / "eagle")), tree_choices=CHAIN)
    seen = record_proposals(drafter)
    engine, seqs = run(unit_target, drafter, **TIGHT)
    assert engine.scheduler.num_preemptions > 0
    assert sum(a for s in seqs for a in s.accept_lengths) > len(seen)  # deep paths were accepted
    for tokens, chain in seen:
        assert chain[1:] == reference_chain(drafter.net, unit_target, tokens, chain, fused=False), tokens


def test_eagle3_chain_matches_training_forward_under_preemption(deep_target, tmp_path):
    net = random_eagle3(deep_target)
    path = write(net, tmp_path / "eagle3", aux_layer_ids=(1, 2, 4))  # inputs of layers 1, 2, 4
    drafter = Eagle3Drafter(str(path), tree_choices=CHAIN)
    seen = record_proposals(drafter)
    engine, _ = run(deep_target, drafter, **TIGHT)
    assert drafter.layers == (0, 1, 3) and engine.scheduler.num_preemptions > 0
    for tokens, chain in seen:
        assert chain[1:] == reference_chain(drafter.net, deep_target, tokens, chain, True, (0, 1, 3)), tokens


def test_dynamic_tree_with_top_k_1_is_the_chain(unit_target, tmp_path):
    """EAGLE-2's growth with one child per level reduces to the static chain, node for node."""
    path = str(write(mimic_eagle(unit_target), tmp_path / "eagle"))
    outs = []
    for drafter in (EagleDrafter(path, tree_choices=CHAIN), EagleDrafter(path, total_tokens=DEPTH + 1, depth=DEPTH, top_k=1)):
        seen = record_proposals(drafter)
        run(unit_target, drafter)
        outs.append(seen)
    assert outs[0] == outs[1]


def test_medusa_reads_the_hidden_state_before_the_root(deep_target, tmp_path):
    drafter = MedusaDrafter(str(write(random_medusa(deep_target), tmp_path / "medusa")), CHAIN)
    seen, read = [], drafter._hidden_before_root

    def spy(seq):
        piece = read(seq)  # (step tensor, row, 1)
        t, row, _ = piece
        seen.append((list(seq.tokens), t[row].clone()))
        return piece

    drafter._hidden_before_root = spy
    engine, _ = run(deep_target, drafter, num_blocks=22, max_num_batched_tokens=16)
    assert engine.scheduler.num_preemptions > 0 and seen
    for tokens, h in seen:
        hidden, _ = target_features(deep_target, [tokens])
        torch.testing.assert_close(h, hidden[0][len(tokens) - 2], atol=1e-5, rtol=1e-5)
