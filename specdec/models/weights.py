"""Reading HF checkpoint weights (safetensors, sharded or not; pickled .bin as a fallback) and
copying them into our model with a strict check that names every missing, unexpected or misshaped
tensor."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor, nn

# Buffers some old checkpoints carry that our model recomputes.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
MAX_LISTED = 20


def index_shards(index: Path) -> tuple[list[Path], list[str]]:
    """The shard files a sharded checkpoint's ``*.index.json`` names (beside it, sorted), and the
    names of those that are missing."""
    names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [index.parent / n for n in names], [n for n in names if not (index.parent / n).is_file()]


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint files of an HF model directory, safetensors preferred."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards, missing = index_shards(index)
            if missing:
                raise FileNotFoundError(f"{index} names shards that are not in {directory}: {missing}")
            return shards
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    found = sorted(p.name for p in directory.iterdir())
    raise FileNotFoundError(f"no weights in {directory}: expected model.safetensors, a sharded "
                            f"model.safetensors.index.json, or pytorch_model.bin; found {found}")


def read_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # Pickled checkpoints: weights_only keeps a malicious file from running code .
    return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(files: Iterable[Path]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for f in files:
        out.update(read_file(f))
    return {k: v for k, v in out.items() if not k.endswith(IGNORED_SUFFIXES)}


def _listing(names: list[str]) -> str:
    head = ", ".join(names[:MAX_LISTED])
    return head + (f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def state_problems(expected: dict[str, tuple], state: dict[str, Tensor],
                   optional: Iterable[str] = ()) -> list[str]:
    """Every missing key, unexpected key and shape mismatch of ``state`` against ``expected``
    (name -> shape), as messages; keys in ``optional`` may be absent."""
    optional = set(optional)
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = sorted(f"{k}: checkpoint {tuple(v.shape)} vs expected {tuple(expected[k])}"
                    for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_listing(shapes)}")
    return problems


def check_state_dict(model: nn.Module, state: dict[str, Tensor], tied: bool) -> None:
    """Raise one ValueError naming every missing key, unexpected key and shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = state_problems(expected, state, {"lm_head.weight"} if tied else ())
    if problems:
        raise ValueError("checkpoint does not fit the model built from its config.json: "
                         + "; ".join(problems))


def load_weights(model: nn.Module, state: dict[str, Tensor], dtype: torch.dtype, device) -> nn.Module:
    """Check, then move the tensors into ``model`` (built on the meta device or not) in ``dtype``.
    A tied model takes its lm_head from the embedding (a checkpoint's copy, if any, is equal)."""
    tied = model.config.tie_word_embeddings
    check_state_dict(model, state, tied)
    if tied:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=not tied, assign=True)
    model.tie_weights()
    return model.requires_grad_(False).eval()  # inference weights; a trainer may re-enable grads
