"""The engine on each device (the Triton kernels on CUDA): greedy output equals HF transformers
`generate` on the same device, and every drafter reproduces it. fp32 keeps argmax ties out of the
comparison; a bf16 run checks the production dtype end to end."""
import pytest
import torch
import transformers

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [9, 8], [20, 21, 22, 20, 21, 22, 23, 20, 21], [7] * 70]
PARAMS = SamplingParams(max_new_tokens=20, ignore_eos=True)
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]


def hf_outputs(directory, device):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()
    model.generation_config.eos_token_id = None
    outs = []
    for p in PROMPTS:
        x = torch.tensor([p], device=device)
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=20, do_sample=False, pad_token_id=0)
        outs.append(y[0, len(p):].tolist())
    return outs


def engine_outputs(directory, device, drafter, dtype="float32", **cfg):
    loaded = load_model(str(directory), device=device)
    engine = Engine(loaded.model, drafter, LosslessVerifier(),
                    EngineConfig(device=device, dtype=dtype, block_size=16, **cfg))
    seqs = engine.generate(PROMPTS, PARAMS)
    assert engine.blocks.num_free == engine.blocks.num_blocks
    return [s.output for s in seqs], seqs


@pytest.mark.parametrize("device", DEVICES)
def test_drafters_equal_hf_greedy(tiny_dir, device):
    directory = tiny_dir("qwen2")  # qkv bias and GQA
    expected = hf_outputs(directory, device)
    drafters = {"none": NoDrafter(), "ngram": NgramDrafter(num_tokens=5),
                "ngram_tree": NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12),
                "draft_chain": DraftModelDrafter(str(directory), num_tokens=4),
                "draft_tree": DraftModelDrafter(str(directory), num_tokens=3, top_k=3, max_nodes=8)}
    for name, drafter in drafters.items():
        outputs, seqs = engine_outputs(directory, device, drafter, max_num_batched_tokens=32, num_blocks=24)
        assert outputs == expected, name
        if name.startswith("draft"):
            accepted = [a for s in seqs for a in s.accept_lengths]
            assert sum(accepted) / len(accepted) > 2.0, name  # a perfect draft: deep acceptance


@pytest.mark.gpu
def test_bf16_runs_and_agrees_with_fp32_mostly(tiny_dir):
    directory = tiny_dir("llama")
    ref, _ = engine_outputs(directory, "cuda", NoDrafter())
    got, seqs = engine_outputs(directory, "cuda", DraftModelDrafter(str(directory), num_tokens=3, top_k=2),
                               dtype="bfloat16")
    assert all(len(o) == 20 and all(0 <= t < 96 for t in o) for o in got)
    first = [o[0] for o in got] == [o[0] for o in ref]
    assert first, "bf16 changed the first greedy token of a tiny model: precision bug"
