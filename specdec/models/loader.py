"""`load_model`: one entry point for every checkpoint a run may name.

``path_or_id`` is, in the order tried:
  * ``None`` / ``"default"``: the embedded SmolLM2-135M-Instruct (`specdec.models.assets`);
  * a ``.gguf`` file, or a directory holding one and no config.json (transformers' GGUF support);
  * a local HF directory: config.json + model.safetensors, a sharded index, or pytorch_model.bin;
  * an HF hub id (``owner/name``), fetched with `huggingface_hub.snapshot_download`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ModelConfig
from .gguf import find_gguf, load_gguf_hf
from .llama import LlamaForCausalLM
from .registry import model_class
from .weights import load_weights, read_state_dict, weight_files

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.tiktoken"]
# Mistral repos also ship consolidated.safetensors (the same weights in Mistral's own layout), and
# Llama repos an original/ folder: skipping them halves the download.
HUB_IGNORE = ["consolidated*", "original/*"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
POINT_AT_LOCAL = ("set model.path to a local checkpoint instead: an HF directory (config.json + "
                  "*.safetensors + tokenizer files) or a .gguf file, e.g. "
                  "`python -m specdec.run model.path=/path/to/checkpoint`")


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    tokenizer: Any  # a transformers tokenizer, or None when the checkpoint has none
    config: ModelConfig
    max_model_len: int  # longest context this model runs exactly (see ModelConfig.max_model_len)
    source: str  # where the weights came from, for logs and summaries
    stop_token_ids: tuple[int, ...] = ()  # config eos ids + generation_config eos + tokenizer eos
    ranks: Any = None  # tensor parallelism: rank 0's handle on the other ranks (engine/tensor_parallel.py)


def load_model(path_or_id: Optional[str] = None, dtype: torch.dtype = torch.float32,
               device="cpu") -> LoadedModel:
    if path_or_id in (None, "", "default"):
        from .assets import default_model_dir

        return load_hf_dir(default_model_dir(), dtype, device, source="default:SmolLM2-135M-Instruct")
    path = Path(path_or_id).expanduser()
    if path.suffix == ".gguf" or (path.is_dir() and not (path / "config.json").is_file()
                                  and any(path.glob("*.gguf"))):
        if not path.exists():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return load_gguf(find_gguf(path), dtype, device)
    if path.is_dir():
        return load_hf_dir(path, dtype, device, source=str(path))
    if path.exists():
        raise ValueError(f"{path} is a file but not a .gguf; give the checkpoint directory instead")
    check_model_path(path_or_id)
    return load_hf_dir(download_from_hub(str(path_or_id)), dtype, device, source=str(path_or_id))


def check_model_path(path_or_id: Optional[str]) -> None:
    """Fail fast, before any weights load: a path that exists nowhere and is no hub id (owner/name)."""
    if path_or_id in (None, "", "default") or Path(path_or_id).expanduser().exists():
        return
    if HUB_ID.match(str(path_or_id)) and not str(path_or_id).startswith((".", "~")):
        return
    raise FileNotFoundError(f"model path {path_or_id!r} does not exist and is not an HF hub id "
                            f"(owner/name); {POINT_AT_LOCAL}")


def load_hf_dir(directory: Path, dtype: torch.dtype, device, source: str) -> LoadedModel:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json; {POINT_AT_LOCAL}")
    cfg = ModelConfig.from_hf(json.loads(config_file.read_text()))
    state = read_state_dict(weight_files(directory))
    model = build_model(cfg, state, dtype, device)
    tokenizer = load_tokenizer(directory)
    return LoadedModel(model, tokenizer, cfg, cfg.max_model_len, source,
                       stop_token_ids(cfg, tokenizer, directory))


def load_gguf(gguf_file: Path, dtype: torch.dtype, device) -> LoadedModel:
    hf_model, tokenizer = load_gguf_hf(gguf_file, torch.float32)
    cfg = ModelConfig.from_hf(hf_model.config.to_dict())
    state = {k: v for k, v in hf_model.state_dict().items()}
    model = build_model(cfg, state, dtype, device)
    gen = getattr(hf_model, "generation_config", None)
    extra = _ids(getattr(gen, "eos_token_id", None))
    return LoadedModel(model, tokenizer, cfg, cfg.max_model_len, str(gguf_file),
                       _merge(cfg.eos_token_ids, extra, _tokenizer_eos(tokenizer)))


def build_model(cfg: ModelConfig, state: dict, dtype: torch.dtype, device) -> LlamaForCausalLM:
    """Build on the meta device (no random init of billions of weights), then take the checkpoint's
    tensors; `load_weights` names every missing/unexpected/misshaped key."""
    with torch.device("meta"):
        model = model_class(cfg.model_type)(cfg)
    return load_weights(model, state, dtype, device)


def load_tokenizer(directory: Path):
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def stop_token_ids(cfg: ModelConfig, tokenizer, directory: Path) -> tuple[int, ...]:
    """Every id that ends a generation: config.json's eos, generation_config.json's eos (Llama-3
    Instruct lists <|eot_id|> there) and the tokenizer's eos (SmolLM2 chat: <|im_end|>)."""
    gen_file = directory / "generation_config.json"
    gen = _ids(json.loads(gen_file.read_text()).get("eos_token_id")) if gen_file.is_file() else ()
    return _merge(cfg.eos_token_ids, gen, _tokenizer_eos(tokenizer))


def _tokenizer_eos(tokenizer) -> tuple[int, ...]:
    return _ids(getattr(tokenizer, "eos_token_id", None)) if tokenizer is not None else ()


def _ids(x) -> tuple[int, ...]:
    if x is None:
        return ()
    return tuple(int(i) for i in x) if isinstance(x, (list, tuple)) else (int(x),)


def _merge(*groups: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(i for g in groups for i in g))


def download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS,
                                      ignore_patterns=HUB_IGNORE))
    except Exception as e:  # offline, unknown repo, gated repo: all end the same way for the user
        reason = " ".join(str(e).split())  # hub errors span lines; keep ours on one
        raise FileNotFoundError(f"could not fetch {repo_id!r} from the Hugging Face hub "
                                f"({type(e).__name__}: {reason}); if this machine is offline, "
                                f"{POINT_AT_LOCAL}") from e
