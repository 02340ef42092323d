"""At temperature > 0, speculation inside the engine samples the target's own distribution: the
first two generated tokens of many seeded requests pass a chi-square test against the exact
distribution computed from the target model (same statistic as check_lossless).

Candidate kinds covered: SAMPLED (draft chains at temperature > 0) and DETERMINISTIC (top-k
trees, the kind n-gram drafts also use: on a random tiny target prompt lookup almost never
proposes a token the target samples, which would leave such a test without power)."""
import pytest

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

from sampling_cases import sample_first_two

N = 3000


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_model(str(tiny_dir("llama"))).model


DRAFTERS = {
    "none": lambda d: NoDrafter(),
    "draft_chain_sampled": lambda d: DraftModelDrafter(str(d("llama", seed=1)), num_tokens=3),
    "draft_tree_topk": lambda d: DraftModelDrafter(str(d("llama")), num_tokens=2, top_k=3),
    "draft_chain_self": lambda d: DraftModelDrafter(str(d("llama")), num_tokens=3),
}


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_first_two_tokens_follow_the_target(name, tiny_dir, target, prompt, exact):
    engine = Engine(target, DRAFTERS[name](tiny_dir), LosslessVerifier(),
                    EngineConfig(device="cpu", max_num_seqs=512, max_num_batched_tokens=8192))
    accepted = sample_first_two(engine, prompt, N, exact)
    if name != "none":
        assert accepted > 0.05 * N, "the drafter never got a token accepted: the test has no power"
