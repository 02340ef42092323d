"""GGUF checkpoints through transformers' GGUF support (dequantization to float, llama.cpp's q/k
row permutation undone, tokenizer and chat template rebuilt from the file's metadata).

The conversion is slow (tens of seconds for 135M parameters), so `convert_gguf_to_hf_dir` writes the
result once as an ordinary HF directory (config.json, fp32 model.safetensors, tokenizer files) that
`specdec.models.loader` then reads like any other checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def find_gguf(path: Path) -> Path:
    """``path`` itself if it is a .gguf file, else the single .gguf file inside the directory."""
    if path.is_file():
        return path
    files = sorted(path.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected exactly one .gguf file in {path}; found "
                                f"{[f.name for f in files]}")
    return files[0]


def load_gguf_hf(gguf_file: Path, dtype: torch.dtype = torch.float32):
    """(HF model, tokenizer) from a GGUF file; the tokenizer is None if the file has none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = gguf_file.resolve()
    directory, name = str(gguf_file.parent), gguf_file.name
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"transformers could not load the GGUF file {gguf_file}: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    except (ValueError, KeyError, OSError):
        tokenizer = None
    return model, tokenizer


def convert_gguf_to_hf_dir(gguf_file: Path, out_dir: Path) -> Path:
    """Write ``out_dir`` as an HF checkpoint: config.json, fp32 model.safetensors (the exact
    dequantized values), generation config and tokenizer files (chat template included)."""
    from safetensors.torch import save_file

    model, tokenizer = load_gguf_hf(gguf_file, torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers refuses `save_pretrained` on a model it loaded from GGUF, so write the pieces.
    config = hf_config_dict(model.config)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # shares the embedding's storage; safetensors forbids that
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


def hf_config_dict(config) -> dict:
    """The HF config as config.json would hold it, without the GGUF quantization marker (the saved
    weights are plain fp32)."""
    d = config.to_dict()
    d.pop("quantization_config", None)
    d["architectures"] = d.get("architectures") or [f"{type(config).__name__[:-6]}ForCausalLM"]
    return d
