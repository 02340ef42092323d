"""At temperature 0, Medusa, EAGLE-1 (static tree), EAGLE-2 (dynamic tree), EAGLE-3 and the small
shared-embedding draft reproduce the target's own greedy output token for token, with continuous
batching, trees cut to fit max_model_len, and preemption (the drafters' own KV blocks included)."""
import copy

import pytest
import torch

from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.eagle.eagle3 import Eagle3Drafter
from specdec.drafters.medusa import MedusaDrafter
from specdec.drafters.none import NoDrafter
from specdec.drafters.small_draft import SmallDraftDrafter, save_small_draft
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.verifiers import LosslessVerifier

from eagle_cases import (EAGLE1_TREE, MEDUSA_63, PROMPTS, mimic_eagle, random_eagle3, random_medusa,
                         unit_rms_target, write)

PARAMS = SamplingParams(max_new_tokens=24, ignore_eos=True)
MAX_LEN = 40  # some prompts run into it: the last trees are cut


@pytest.fixture(scope="module")
def target(tiny_dir):
    return unit_rms_target(tiny_dir("llama", num_hidden_layers=1))


@pytest.fixture(scope="module")
def reference(target):
    engine = Engine(target, NoDrafter(), LosslessVerifier(), EngineConfig(device="cpu", max_model_len=MAX_LEN))
    return [s.output for s in engine.generate(PROMPTS, PARAMS)]


@pytest.fixture(scope="module")
def paths(target, tmp_path_factory):
    root = tmp_path_factory.mktemp("drafters")
    small = copy.deepcopy(target)  # a "small" draft equal to the one-layer target: always right
    save_small_draft(small, root / "draft", dtype=torch.float32)
    return {"eagle": str(write(mimic_eagle(target), root / "eagle")),
            "eagle3": str(write(random_eagle3(target), root / "eagle3", aux_layer_ids=(1, 1, 1))),
            "medusa": str(write(random_medusa(target), root / "medusa")), "draft": str(root / "draft")}


DRAFTERS = {
    "eagle2": lambda p: EagleDrafter(p["eagle"]),  # 60 nodes, depth 6, top_k 10
    "eagle2_small": lambda p: EagleDrafter(p["eagle"], total_tokens=10, depth=4, top_k=3, pool_all=False),
    "eagle1": lambda p: EagleDrafter(p["eagle"], tree_choices=EAGLE1_TREE),
    "eagle3": lambda p: Eagle3Drafter(p["eagle3"], total_tokens=16, depth=4, top_k=4),
    "medusa": lambda p: MedusaDrafter(p["medusa"], MEDUSA_63),
    "small_draft": lambda p: SmallDraftDrafter(p["draft"], num_tokens=4),
}
GOOD = {"eagle2", "eagle2_small", "eagle1", "small_draft"}  # drafts that mostly agree with the target


def run(target, drafter, **cfg):
    engine = Engine(target, drafter, LosslessVerifier(),
                    EngineConfig(**{"device": "cpu", "block_size": 4, "max_model_len": MAX_LEN, **cfg}))
    seqs = engine.generate(PROMPTS, PARAMS)
    assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"
    return engine, [s.output for s in seqs], seqs


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_equality(name, target, paths, reference):
    engine, outputs, seqs = run(target, DRAFTERS[name](paths))
    assert outputs == reference
    accepted = [a for s in seqs for a in s.accept_lengths]
    if name in GOOD:
        assert sum(accepted) / len(accepted) > 1.5, "these drafts should be accepted deep"


@pytest.mark.parametrize("name", ["eagle2", "eagle1", "eagle3", "medusa", "small_draft"])
def test_greedy_equality_under_preemption(name, target, paths, reference):
    engine, outputs, _ = run(target, DRAFTERS[name](paths), num_blocks=48, max_num_batched_tokens=64)
    assert engine.scheduler.num_preemptions > 0
    assert outputs == reference


def test_medusa_with_typical_acceptance(target, paths, reference):
    """verifier=typical (Medusa-2, lossy): greedy rows stay exact, sampled rows run and accept."""
    from specdec.verifiers import TypicalVerifier

    engine = Engine(target, DRAFTERS["medusa"](paths), TypicalVerifier(),
                    EngineConfig(device="cpu", block_size=4, max_model_len=MAX_LEN))
    greedy = engine.generate(PROMPTS, PARAMS)
    assert [s.output for s in greedy] == reference
    sampled = engine.generate(PROMPTS, SamplingParams(temperature=0.7, max_new_tokens=24, ignore_eos=True, seed=0))
    assert all(len(s.output) == 24 for s in sampled)
    assert engine.blocks.num_free == engine.blocks.num_blocks
