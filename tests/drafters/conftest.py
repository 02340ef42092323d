"""Fixtures of the temperature > 0 tests; each test module supplies its own `target` model."""
import pytest
import torch

from sampling_cases import BASE, next_token_probs
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.verifiers import LosslessVerifier


@pytest.fixture(scope="module")
def prompt(target):
    """BASE, the target's greedy continuation of it, BASE again."""
    engine = Engine(target, NoDrafter(), LosslessVerifier(), EngineConfig(device="cpu"))
    cont = engine.generate([BASE], SamplingParams(max_new_tokens=6, ignore_eos=True))[0].output
    return BASE + cont + BASE


@pytest.fixture(scope="module")
def exact(target, prompt):
    """p(y1) [V] and p(y1, y2) [V, V] after the prompt."""
    p1 = next_token_probs(target, [prompt])[0]
    support = p1.nonzero().flatten().tolist()
    p2 = torch.zeros(p1.shape[0], p1.shape[0])
    p2[support] = next_token_probs(target, [prompt + [t] for t in support])
    return p1, p1[:, None] * p2
