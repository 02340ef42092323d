"""At temperature > 0 the tree drafters stay lossless: their nodes are top-k picks (DETERMINISTIC
candidates, accepted with probability p(c)), and the first two tokens of many seeded requests
pass the chi-square test against the target's exact distribution (as test_sampling_distribution
does for the other drafters)."""
import pytest

from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.medusa import MedusaDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.verifiers import CandidateKind, LosslessVerifier

from eagle_cases import mimic_eagle, random_medusa, unit_rms_target, write
from sampling_cases import sample_first_two

N = 3000


@pytest.fixture(scope="module")
def target(tiny_dir):
    return unit_rms_target(tiny_dir("llama", num_hidden_layers=1))


@pytest.fixture(scope="module")
def paths(target, tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling")
    return {"eagle": str(write(mimic_eagle(target), root / "eagle")),
            "medusa": str(write(random_medusa(target), root / "medusa"))}


DRAFTERS = {
    "eagle2": lambda p: EagleDrafter(p["eagle"], total_tokens=12, depth=3, top_k=4),
    # random heads: a wide first level (24 of the 96 tokens) gives the test its power
    "medusa": lambda p: MedusaDrafter(p["medusa"], [[r] for r in range(24)] + [[0, 0], [1, 0], [0, 0, 0]]),
}


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_first_two_tokens_follow_the_target(name, target, prompt, exact, paths):
    drafter = DRAFTERS[name](paths)
    engine = Engine(target, drafter, LosslessVerifier(),
                    EngineConfig(device="cpu", max_num_seqs=512, max_num_batched_tokens=8192))
    kinds, propose = [], drafter.propose

    def spy(seqs, budgets):
        tree = propose(seqs, budgets)
        kinds.append(tree.kind)
        return tree

    drafter.propose = spy
    accepted = sample_first_two(engine, prompt, N, exact)
    assert all(bool((k == CandidateKind.DETERMINISTIC).all()) for k in kinds)
    assert accepted > 0.05 * N, "the drafter never got a token accepted: the test has no power"
