"""The engine's greedy output equals HF transformers `generate`, token for token (fp32, CPU)."""
import pytest
import torch
import transformers

from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

PROMPTS = [[3, 17, 42, 9, 11], [5, 6], [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73], [7]]


def hf_greedy(directory, prompt, n):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids))
    return out[0, len(prompt):].tolist()


def engine_for(directory, drafter=None, **cfg):
    loaded = load_model(str(directory))
    config = EngineConfig(**{"device": "cpu", "block_size": 4, **cfg})
    return Engine(loaded.model, drafter or NoDrafter(), LosslessVerifier(), config,
                  max_model_len=loaded.max_model_len)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_greedy_matches_hf_generate(tiny_dir, family):
    directory = tiny_dir(family)
    engine = engine_for(directory, max_num_batched_tokens=8)  # forces chunked prefill
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    seqs = engine.generate(PROMPTS, params)
    for prompt, seq in zip(PROMPTS, seqs):
        assert seq.finish_reason == "length"
        assert seq.output == hf_greedy(directory, prompt, 12), f"prompt {prompt}"
