"""At temperature 0 every drafter reproduces autoregressive output token for token, with
continuous batching, trees of different sizes per sequence, and preemption."""
import pytest
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

# repetitive prompts give the n-gram drafter something to match
PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [9, 8], [20, 21, 22, 20, 21, 22, 23, 20, 21],
           [40, 41, 42, 43], [5, 5, 5, 5, 5, 5]]
PARAMS = SamplingParams(max_new_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_model(str(tiny_dir("llama"))).model


@pytest.fixture(scope="module")
def paths(tiny_dir):
    return {"self": str(tiny_dir("llama")), "other": str(tiny_dir("llama", seed=1))}


@pytest.fixture(scope="module")
def reference(target):
    engine = Engine(target, NoDrafter(), LosslessVerifier(), EngineConfig(device="cpu"))
    return [s.output for s in engine.generate(PROMPTS, PARAMS)]


def run(target, drafter, **cfg):
    engine = Engine(target, drafter, LosslessVerifier(),
                    EngineConfig(**{"device": "cpu", "block_size": 4, **cfg}))
    seqs = engine.generate(PROMPTS, PARAMS)
    assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"
    return engine, [s.output for s in seqs], seqs


DRAFTERS = {
    "ngram_chain": lambda path: NgramDrafter(num_tokens=5),
    "ngram_tree": lambda path: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12),
    "draft_chain": lambda path: DraftModelDrafter(path, num_tokens=4),
    "draft_tree": lambda path: DraftModelDrafter(path, num_tokens=3, top_k=3, max_nodes=8),
}


@pytest.mark.parametrize("name, self_draft", [
    ("ngram_chain", True), ("ngram_tree", True), ("draft_chain", True), ("draft_chain", False),
    ("draft_tree", True), ("draft_tree", False)])
def test_greedy_equality(name, self_draft, target, paths, reference):
    engine, outputs, seqs = run(target, DRAFTERS[name](paths["self" if self_draft else "other"]))
    assert outputs == reference
    accepted = [a for s in seqs for a in s.accept_lengths]
    assert len(accepted) > 0
    if name.startswith("draft") and self_draft:  # a perfect draft: the greedy path is accepted
        assert sum(accepted) / len(accepted) > 2.0


@pytest.mark.parametrize("name", ["ngram_tree", "draft_tree"])
def test_greedy_equality_under_preemption(name, target, paths, reference):
    engine, outputs, _ = run(target, DRAFTERS[name](paths["self"]), num_blocks=22, max_num_batched_tokens=16)
    assert engine.scheduler.num_preemptions > 0
    assert outputs == reference


def test_vocab_mismatch_names_both_sizes(tiny_dir, target):
    drafter = DraftModelDrafter(str(tiny_dir("llama", seed=2, vocab_size=80)))
    with pytest.raises(ValueError, match=r"draft model vocabulary \(80 tokens\) differs from the target's \(96 tokens\)"):
        Engine(target, drafter, LosslessVerifier(), EngineConfig(device="cpu"))
