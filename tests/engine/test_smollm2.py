"""The embedded default model through the engine (slow: it fetches SmolLM2 once per session):
greedy output equals HF transformers `generate`, and every drafter reproduces it."""
import json
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from specdec.models import assets
from specdec.data import default_prompts, render
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.eagle.eagle3 import Eagle3Drafter
from specdec.drafters.medusa import MedusaDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.drafters.small_draft import SmallDraftDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.verifiers import LosslessVerifier

from cli import run_specdec

N_NEW = 24
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MEDUSA_63 = yaml.safe_load((REPO / "configs/drafter/medusa.yaml").read_text())["tree_choices"]


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


@pytest.mark.parametrize("make", [
    lambda: EagleDrafter("default"),
    lambda: EagleDrafter("default", total_tokens=16, depth=4, top_k=4),
    lambda: Eagle3Drafter("default"),
    lambda: MedusaDrafter("default", MEDUSA_63),
    lambda: SmallDraftDrafter("default"),
], ids=["eagle2", "eagle2_small_tree", "eagle3", "medusa", "small_draft"])
def test_shipped_drafters_reproduce_greedy_output(smollm2, prompts, reference, make):
    """The heads trained for SmolLM2 (drafters/weights/), loaded through `path: default`: the
    engine's output is the target's own, and they do get draft tokens accepted."""
    outputs, seqs = generate(smollm2, prompts, make())
    assert outputs == reference
    accepted = [a for s in seqs for a in s.accept_lengths]
    assert sum(accepted) / len(accepted) > 0.2  # accepted draft tokens per step


def test_run_drafter_eagle_offline_on_the_default_model(smollm2, default_cache, tmp_path):
    """The README's first use: `python -m specdec.run drafter=eagle`, the embedded target and
    the shipped head, with no network (HF_HUB_OFFLINE) and the model already in the cache."""
    run_specdec("drafter=eagle", "logger=none", "data.num_prompts=2", "max_new_tokens=16",
                "speedup.baseline=off", f"hydra.run.dir={tmp_path}", timeout=600,
                env={assets.CACHE_ENV: str(default_cache[0]), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["drafter"] == "eagle" and summary["num_requests"] == 2
    assert summary["config"]["drafter"]["path"] == "default" and summary["mean_accepted_length"] > 1.0
