"""Shared test setup: GPU tests skip cleanly without CUDA; ../shared/data is optional."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


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


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the clone; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (a user's clone has no ../shared)")
    return SHARED_DATA


# ---- tiny random-weight checkpoints that the tests write themselves ----------------------------
TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
TINY_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
}


def write_tiny(directory: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a tiny random HF model (safetensors + config) into ``directory``; returns it."""
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
