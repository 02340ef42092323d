"""The embedded default model through the engine (slow: it fetches SmolLM2 once per session):
greedy output equals HF transformers `generate`, and every drafter reproduces it."""
import pytest
import torch
import transformers

from specdec import assets
from specdec.data import default_prompts, render
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.verifiers import LosslessVerifier

N_NEW = 24
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def prompts(smollm2):
    return [render(p, smollm2.tokenizer) for p in default_prompts()[:2]]


@pytest.fixture(scope="module")
def reference(smollm2, prompts, default_cache):
    hf_dir = default_cache[0] / assets.MODEL_DIR / "hf"
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    outs = []
    for ids in prompts:
        x = torch.tensor([ids])
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N_NEW, do_sample=False,
                          eos_token_id=list(smollm2.stop_token_ids), pad_token_id=0)
        outs.append(out[0, len(ids):].tolist())
    return outs


def generate(smollm2, prompts, drafter):
    engine = Engine(smollm2.model, drafter, LosslessVerifier(), EngineConfig(device="cpu", max_num_seqs=3),
                    tokenizer=smollm2.tokenizer, stop_token_ids=smollm2.stop_token_ids)
    seqs = engine.generate(prompts, SamplingParams(max_new_tokens=N_NEW))
    return [s.output for s in seqs], seqs


def test_engine_equals_hf_generate(smollm2, prompts, reference):
    outputs, _ = generate(smollm2, prompts, NoDrafter())
    assert outputs == reference


@pytest.mark.parametrize("make", [
    lambda c: NgramDrafter(num_tokens=6),
    lambda c: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=16),
    lambda c: DraftModelDrafter(str(c[0] / assets.MODEL_DIR / "hf"), num_tokens=4),
    lambda c: DraftModelDrafter(str(c[0] / assets.MODEL_DIR / "hf"), num_tokens=3, top_k=3, max_nodes=10),
], ids=["ngram", "ngram_tree", "draft_chain_self", "draft_tree_self"])
def test_drafters_reproduce_greedy_output(smollm2, prompts, reference, default_cache, make):
    outputs, seqs = generate(smollm2, prompts, make(default_cache))
    assert outputs == reference
    assert any(a > 0 for s in seqs for a in s.accept_lengths)
