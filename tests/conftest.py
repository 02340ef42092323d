"""Shared test setup: GPU tests skip cleanly without CUDA; tiny checkpoints the tests write; the
default model fetched once per session. Prompt data comes from the package (specdec/prompts/)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread: with two on a busy 2-core machine torch's intra-op
    spinning made tiny forwards ~100x slower. Tests that need more threads set them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---- tiny random-weight checkpoints that the tests write themselves ----------------------------
TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
TINY_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
}


def tiny_tokenizer():
    """A character-level tokenizer (50 ids < TINY vocab) with a ChatML template, so that tiny
    checkpoints run through everything a real one does (chat rendering, decoding, stop tokens)."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    chars = list(string.ascii_lowercase + string.digits + " .,?!'\n:-")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                          "assistant\n{% endif %}")
    return fast


def write_tiny(directory: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a tiny random HF model (safetensors + config + tokenizer) into ``directory``."""
    import transformers

    cfg_name, model_name, extra = TINY_FAMILIES[family]
    cfg = getattr(transformers, cfg_name)(**{**TINY, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(cfg).eval()
    with torch.no_grad():  # larger weights than the default init: peaked, tie-free logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory: tiny_dir(family, seed) -> a saved checkpoint directory (cached per session)."""
    made: dict = {}

    def make(family: str = "llama", seed: int = 0, **overrides) -> Path:
        key = (family, seed, tuple(sorted(overrides.items())))
        if key not in made:
            path = tmp_path_factory.mktemp(f"tiny-{family}-{seed}")
            made[key] = write_tiny(path, family, seed, **overrides)
        return made[key]

    return make


# ---- the embedded default model (SmolLM2-135M-Instruct), fetched once per test session ----------
@pytest.fixture(scope="session")
def default_cache(tmp_path_factory):
    """One fresh cache for the session: two processes race to fill it (download once)."""
    from specdec.models import assets

    cache = tmp_path_factory.mktemp("specdec_cache")
    env = {**os.environ, assets.CACHE_ENV: str(cache)}
    code = "from specdec.models.assets import default_model_dir; print(default_model_dir())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=900) + (p.returncode,) for p in procs]
    return cache, results


def load_default(default_cache, dtype=None):
    """The default model loaded from the session cache (CPU; fp32 unless ``dtype``)."""
    from specdec.models import assets
    from specdec.models.loader import load_model

    cache, results = default_cache
    if any(rc != 0 for _, _, rc in results):
        raise RuntimeError("fetching the default model failed:\n" + results[0][1][-3000:])
    old = os.environ.get(assets.CACHE_ENV)
    os.environ[assets.CACHE_ENV] = str(cache)
    try:
        return load_model("default") if dtype is None else load_model("default", dtype=dtype)
    finally:
        if old is None:
            os.environ.pop(assets.CACHE_ENV)
        else:
            os.environ[assets.CACHE_ENV] = old


@pytest.fixture(scope="session")
def smollm2(default_cache):
    """The default model loaded (fp32, CPU) from the session cache."""
    return load_default(default_cache)


@pytest.fixture(scope="session")
def smollm2_bf16(default_cache):
    """The default model in bfloat16 (CPU), a copy of its own (engines cast the model they run)."""
    return load_default(default_cache, torch.bfloat16)
