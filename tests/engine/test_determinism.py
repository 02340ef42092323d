"""Sampled outputs depend only on a request's seed: identical across runs, batch compositions,
arrival orders, engine settings and preemption (counter-based per-request randomness; draft trees
never cut to fit)."""
import pytest

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

PROMPTS = [[1, 2, 3, 4, 1, 2, 3], [9, 8], [20, 21, 22, 20, 21, 22], [40, 41, 42, 43, 44]]
OTHERS = [[5, 6, 7], [50, 51, 52, 53, 54, 55, 56, 57]]


def params(seed):
    return SamplingParams(temperature=0.9, top_p=0.95, top_k=30, max_new_tokens=16, ignore_eos=True, seed=seed)


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_model(str(tiny_dir("llama"))).model


DRAFTERS = {
    "none": lambda d: NoDrafter(),
    "ngram_tree": lambda d: NgramDrafter(num_tokens=3, max_matches=3, max_nodes=8),
    "draft_chain": lambda d: DraftModelDrafter(str(d("llama", seed=1)), num_tokens=3),
}


def run(target, drafter, prompts, seeds, **cfg):
    engine = Engine(target, drafter, LosslessVerifier(), EngineConfig(device="cpu", block_size=4, **cfg))
    seqs = engine.generate(prompts, [params(s) for s in seeds])
    if cfg.get("num_blocks") == 14:
        assert engine.scheduler.num_preemptions > 0
    return [s.output for s in seqs]


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_same_seed_same_output_in_any_company(name, tiny_dir, target):
    make = DRAFTERS[name]
    seeds = [11, 12, 13, 14]
    alone = [run(target, make(tiny_dir), [p], [s])[0] for p, s in zip(PROMPTS, seeds)]
    together = run(target, make(tiny_dir), PROMPTS, seeds)
    reversed_with_others = run(target, make(tiny_dir), OTHERS + PROMPTS[::-1], [1, 2] + seeds[::-1],
                               max_num_seqs=3, max_num_batched_tokens=12, num_blocks=40)
    preempted = run(target, make(tiny_dir), PROMPTS, seeds, num_blocks=14)
    assert together == alone
    assert reversed_with_others[2:] == alone[::-1]
    assert preempted == alone
    assert run(target, make(tiny_dir), PROMPTS, seeds) == together  # and across runs
    assert len({tuple(o) for o in alone}) == len(alone)
    different = run(target, make(tiny_dir), PROMPTS, [s + 100 for s in seeds])
    assert different != together  # the seed matters


def test_an_unseeded_request_leaves_torchs_global_generator_alone():
    """A request without a seed draws its own from the OS: a user's torch.manual_seed still fixes
    what torch draws afterwards, however many requests were made in between."""
    import torch

    from specdec.engine.sequence import Sequence

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    seeds = {Sequence([1, 2], SamplingParams(temperature=1.0)).seed for _ in range(8)}
    assert torch.equal(torch.rand(4), expected)
    assert len(seeds) == 8 and all(0 <= s < 2**62 for s in seeds)
