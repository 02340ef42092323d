"""At temperature > 0, speculation inside the engine samples the target's own distribution: the
first two generated tokens of many seeded requests pass a chi-square test against the exact
distribution computed from the target model (same statistic as check_lossless).

Candidate kinds covered: SAMPLED (draft chains at temperature > 0) and DETERMINISTIC (top-k
trees, the kind n-gram drafts also use: on a random tiny target prompt lookup almost never
proposes a token the target samples, which would leave such a test without power)."""
import pytest
import torch

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier, chi_square_pvalue

from sampling_cases import TEMP, TOP_K, TOP_P

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
    params = [SamplingParams(temperature=TEMP, top_p=TOP_P, top_k=TOP_K, max_new_tokens=2,
                             ignore_eos=True, seed=i) for i in range(N)]
    seqs = engine.generate([prompt] * N, params)
    first = torch.tensor([s.output[0] for s in seqs])
    pair = torch.tensor([s.output[0] * 96 + s.output[1] for s in seqs])
    p1, p12 = exact
    assert bool((p1[first] > 0).all()) and bool((p12.flatten()[pair] > 0).all()), "impossible token"
    _, p_first, _ = chi_square_pvalue(torch.bincount(first, minlength=96), p1)
    _, p_pair, _ = chi_square_pvalue(torch.bincount(pair, minlength=96 * 96), p12.flatten())
    accepted = sum(a for s in seqs for a in s.accept_lengths)
    assert p_first > 1e-3 and p_pair > 1e-3, (p_first, p_pair)
    if name != "none":
        assert accepted > 0.05 * N, "the drafter never got a token accepted: the test has no power"
