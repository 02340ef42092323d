"""Checkpoint files of the official drafter formats (ARCHITECTURE.md "Checkpoint formats"):
find them (local directory or hub id), read them (safetensors, or pickles with
``torch.load(weights_only=True)``), check them against the module they fill (one error that lists
every missing key, unexpected key and shape mismatch), and write them (safetensors, sharded under
``MAX_FILE_BYTES`` so that every file fits what the GPU machine hands back).

The per-format knowledge (which keys, which config fields) lives in medusa_net.py / eagle/format.py;
this module is the format-independent plumbing they share.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from specdec.models.weights import index_shards, state_problems

MAX_FILE_BYTES = 15 * 2**20  # shipped files stay under 16 MB

HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.pt", "*.md"]


class CheckpointError(ValueError):
    """A drafter checkpoint that cannot be used; the message says what is wrong and how to fix it."""


def check_path(path_or_id: str, what: str) -> None:
    """Fail fast (before the target loads) on a path that exists nowhere and is no hub id."""
    from specdec.models.loader import HUB_ID

    if path_or_id in (None, "", "???"):
        raise CheckpointError(f"{what}: no checkpoint given; set drafter.path to a local directory "
                              f"or an HF hub id (owner/name)")
    p = Path(str(path_or_id)).expanduser()
    if p.exists() or (HUB_ID.match(str(path_or_id)) and not str(path_or_id).startswith((".", "~", "/"))):
        return
    raise FileNotFoundError(f"{what}: checkpoint {path_or_id!r} does not exist and is not an HF hub "
                            f"id (owner/name); set drafter.path to a local directory holding the "
                            f"config.json and weights")


SHIPPED = Path(__file__).resolve().parent / "weights" / "smollm2-135m-instruct"


def shipped(kind: str) -> Path:
    """Where the drafters trained for the embedded default target live (``path: default``)."""
    return SHIPPED / kind


def expand_default(path_or_id: str, kind: str) -> str:
    """``default`` -> the shipped checkpoint of this drafter kind, with a clear error if absent."""
    if str(path_or_id) != "default":
        return str(path_or_id)
    path = shipped(kind)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"drafter.path=default names the {kind} drafter shipped for the "
                                f"embedded SmolLM2 target, but {path} is not in this checkout; train "
                                f"it (experiments/train_smollm2.sh) or set drafter.path to a "
                                f"checkpoint directory or hub id")
    return str(path)


def resolve_dir(path_or_id: str, what: str) -> Path:
    """The local directory of a checkpoint: a directory, the directory of a file, or a hub snapshot."""
    check_path(path_or_id, what)
    p = Path(str(path_or_id)).expanduser()
    if p.is_dir():
        return p
    if p.is_file():
        return p.parent
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown or gated repo: one clear line
        reason = " ".join(str(e).split())
        raise FileNotFoundError(f"{what}: could not fetch {path_or_id!r} from the Hugging Face hub "
                                f"({type(e).__name__}: {reason}); on an offline machine point "
                                f"drafter.path at a local directory") from e


def find_weights(directory: Path, stems: Iterable[str], what: str) -> list[Path]:
    """Weight files for the first stem present: ``{stem}.safetensors.index.json`` (sharded),
    ``{stem}.safetensors``, ``{stem}.bin`` or ``{stem}.pt``."""
    stems = list(stems)
    for stem in stems:
        index = directory / f"{stem}.safetensors.index.json"
        if index.is_file():
            shards, missing = index_shards(index)
            if missing:
                raise CheckpointError(f"{what}: {index} names shards missing from {directory}: {missing}")
            return shards
        for suffix in (".safetensors", ".bin", ".pt"):
            f = directory / f"{stem}{suffix}"
            if f.is_file():
                return [f]
    found = sorted(p.name for p in directory.iterdir())
    wanted = ", ".join(f"{s}.safetensors / {s}.bin / {s}.pt" for s in stems)
    raise CheckpointError(f"{what}: no weights in {directory}: expected one of {wanted}; found {found}")


def read_file(path: Path, what: str) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # weights_only: a malicious pickle cannot run code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{what}: could not read {path} ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]}); the file is corrupt, truncated "
                              f"or not a tensor state dict") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: {path} does not hold a state dict of tensors")
    return state


def read_weights(files: Iterable[Path], what: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for f in files:
        out.update(read_file(f, what))
    return out


def read_config(directory: Path, what: str) -> dict:
    f = directory / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{what}: {directory} has no config.json")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{what}: {f} is not valid JSON ({e.msg}, line {e.lineno})") from None


def check_state(expected: dict[str, tuple], state: dict[str, Tensor], what: str,
                optional: Iterable[str] = ()) -> None:
    """One CheckpointError naming every missing key, unexpected key and shape mismatch."""
    problems = state_problems(expected, state, optional)
    if problems:
        raise CheckpointError(f"{what} does not fit the architecture its config.json describes "
                              f"(and the target): " + "; ".join(problems))


def load_module(module: nn.Module, state: dict[str, Tensor], what: str, dtype: torch.dtype,
                device, optional: Iterable[str] = (), extra: Iterable[str] = ()) -> nn.Module:
    """Check ``state`` against ``module`` (keys in ``extra`` are allowed and ignored), then copy it
    in: floating tensors in ``dtype``, integer/bool buffers as they are."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    extra = set(extra)
    check_state({**expected, **{k: tuple(state[k].shape) for k in extra if k in state}}, state, what,
                optional)
    own = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
           for k, v in state.items() if k in expected}
    module.load_state_dict(own, strict=False, assign=True)
    return module.to(device).requires_grad_(False).eval()


# ---- writing ------------------------------------------------------------------------------------
def write_weights(state: dict[str, Tensor], directory: Path, stem: str,
                  max_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """``{stem}.safetensors``, or shards ``{stem}-0000i-of-0000n.safetensors`` plus
    ``{stem}.safetensors.index.json`` (HF's layout) when the tensors exceed ``max_bytes``.
    A single tensor larger than ``max_bytes`` is an error (it cannot be shipped)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    shards = _pack(state, max_bytes)
    if len(shards) == 1:
        path = directory / f"{stem}.safetensors"
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards):
        path = directory / f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        paths.append(path)
        weight_map.update({k: path.name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


def _pack(state: dict[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if n > max_bytes:
            raise CheckpointError(f"tensor {k} ({n / 2**20:.1f} MiB) exceeds the {max_bytes / 2**20:.0f}"
                                  f" MiB file limit; shrink it (e.g. a smaller draft vocabulary)")
        if size + n > max_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    return shards


def write_config(config: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


def remove_weights(directory: Path, stems: Iterable[str]) -> None:
    """Delete earlier weight files of these stems, so that a re-export leaves no stale shard."""
    for stem in stems:
        for pattern in (f"{stem}.safetensors", f"{stem}-*-of-*.safetensors",
                        f"{stem}.safetensors.index.json", f"{stem}.bin", f"{stem}.pt"):
            for f in directory.glob(pattern):
                f.unlink()


def optional_int(config: dict, key: str, default: Optional[int] = None) -> Optional[int]:
    v = config.get(key, default)
    return None if v is None else int(v)
