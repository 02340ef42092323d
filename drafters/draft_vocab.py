"""A truncated drafting vocabulary for drafters that score the target's full vocabulary
(EAGLE-1/2 through the target's lm_head): the draft ranks only the target ids of a fixed subset,
the most frequent tokens of the data the head was trained on, and maps its picks back to target
ids. This is FR-Spec's frequency-ranked draft vocabulary (Zhao et al. 2025, "FR-Spec: Accelerating
Large-Vocabulary Language Models via Frequency-Ranked Speculative Sampling") and EAGLE-3's
``d2t`` idea applied to an EAGLE-2 head without retraining it.

It is lossless: the verifier still checks every drafted token against the full target
distribution; a token outside the subset can only never be drafted. What it buys: the per-level
``[rows, h] x [h, V]`` head, its log-softmax and the vocabulary top-k run over ``Vd`` columns
instead of ``V`` (49,152 -> 8,192 on SmolLM2): a quarter less time in an EAGLE-2 draft graph
on an H200, for 0.5% of tau (BENCHMARKS.md, "A truncated drafting vocabulary").

Sources of the subset (``drafter.draft_vocab``):
  * ``default``: the vocabulary that comes with the head, ``draft_vocab.safetensors`` beside its
    weights (specdec's EAGLE exports write one; the head shipped for SmolLM2 has one);
  * a ``.safetensors`` file with an int64 ``ids`` tensor, or a ``.json`` list of target ids;
  * a directory holding ``draft_vocab.safetensors``, or an EAGLE-3 checkpoint (its ``d2t``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from . import formats
from .eagle.format import EAGLE_STEMS

FILE = "draft_vocab.safetensors"


def check_spec(spec, what: str) -> None:
    """Fail before the target loads on a draft_vocab that names nothing readable."""
    if spec is None or str(spec) == "default":
        return
    if not Path(str(spec)).expanduser().exists():
        raise FileNotFoundError(f"{what}: draft_vocab {spec!r} does not exist; give a "
                                f"{FILE} / .json file of target ids, a directory holding {FILE} "
                                f"or an EAGLE-3 checkpoint, `default`, or null (full vocabulary)")


def resolve(spec, head_dir: Callable[[], Path], what: str) -> Path:
    """The file or directory a ``draft_vocab`` setting names (``default``: the file in the head's
    directory, ``head_dir()``: called only then, since a hub head is fetched to find it)."""
    if str(spec) == "default":
        head_dir = head_dir()
        path = head_dir / FILE
        if not path.is_file():
            raise FileNotFoundError(f"{what}: draft_vocab=default reads the head's own {FILE}, but "
                                    f"{head_dir} has none; set draft_vocab to a file of target ids "
                                    f"or an EAGLE-3 checkpoint, or null (full vocabulary)")
        return path
    check_spec(spec, what)
    return Path(str(spec)).expanduser()


def load(path: Path, vocab_size: int, what: str) -> Tensor:
    """The subset's target ids ``[Vd]`` int64, ascending, checked against the target's vocabulary."""
    if path.is_dir() and (path / FILE).is_file():
        path = path / FILE
    if path.is_dir():
        ids = _from_eagle3(path, what)
    elif path.suffix == ".json":
        ids = _from_json(path, what)
    else:
        state = formats.read_file(path, what)
        if "ids" not in state:
            raise formats.CheckpointError(f"{what}: {path} has no `ids` tensor (keys: {sorted(state)})")
        ids = state["ids"]
    return check(ids, vocab_size, f"{what}: draft vocabulary {path}")


def _from_eagle3(path: Path, what: str) -> Tensor:
    if (path / "config.json").is_file():  # an EAGLE-3 checkpoint: target id = draft id + d2t
        state = formats.read_weights(formats.find_weights(path, EAGLE_STEMS, what), what)
        if "d2t" in state:
            d2t = state["d2t"].long()
            return torch.arange(d2t.numel()) + d2t
    raise formats.CheckpointError(f"{what}: {path} holds neither {FILE} nor an EAGLE-3 checkpoint "
                                  f"with a d2t mapping")


def _from_json(path: Path, what: str) -> Tensor:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise formats.CheckpointError(f"{what}: {path} is not valid JSON ({e.msg})") from None
    if not isinstance(data, list) or not all(isinstance(x, int) for x in data):
        raise formats.CheckpointError(f"{what}: {path} must hold a JSON list of integer target ids")
    return torch.tensor(data, dtype=torch.long)


def check(ids: Tensor, vocab_size: int, what: str) -> Tensor:
    """Sorted int64 ids; an error when they are empty, not integers, repeat or leave [0, V)."""
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1 or ids.numel() == 0:
        raise formats.CheckpointError(f"{what}: expected a non-empty 1-d integer tensor of target ids, "
                                      f"got {tuple(ids.shape)} {ids.dtype}")
    ids = ids.long()
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise formats.CheckpointError(f"{what}: ids must lie in the target vocabulary [0, {vocab_size}); "
                                      f"found {int(ids.min())}..{int(ids.max())}")
    out = ids.unique()  # sorted
    if out.numel() != ids.numel():
        raise formats.CheckpointError(f"{what}: {ids.numel() - out.numel()} ids repeat")
    return out


def save(ids: Tensor, directory: Path) -> Path:
    """``directory/draft_vocab.safetensors`` holding ``ids`` (what `load` reads)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE
    save_file({"ids": ids.long().contiguous().cpu()}, str(path), metadata={"format": "pt"})
    return path
