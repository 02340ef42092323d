"""Resumable training checkpoints: the trained module (fp32), optionally AdamW's state, and the
step, as safetensors shards (`formats.write_weights`) plus ``trainer.json``. A new
checkpoint is written beside the old one and swapped in by renames, so an interrupted save
leaves the previous checkpoint intact."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from specdec.drafters import formats

STATE = "state"
CHECKPOINT_SHARD_BYTES = 2**30  # by default (train.checkpoint_mb): not shipped, no file limit to fit
META = "trainer.json"


def save(directory: Path, module: nn.Module, opt: Optional[torch.optim.Optimizer], step: int,
         info: dict, max_bytes: int = CHECKPOINT_SHARD_BYTES) -> None:
    """``max_bytes``: the largest file (a checkpoint that must travel in pieces of a transfer
    limit, e.g. back from a GPU machine, is written in shards that fit it)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = {f"model.{k}": v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    groups = None
    if opt is not None:
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            tensors.update({f"opt.{idx}.{name}": t for name, t in st.items() if torch.is_tensor(t)})
        groups = sd["param_groups"]
    formats.write_weights(_split(tensors, max_bytes), tmp, STATE, max_bytes=max_bytes)
    (tmp / META).write_text(json.dumps({"step": step, "param_groups": groups, **info}, indent=2))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def info(directory: Path) -> dict:
    """The checkpoint's ``trainer.json`` ({} when there is none)."""
    f = directory / META
    return json.loads(f.read_text()) if f.is_file() else {}


def load(directory: Path, module: nn.Module, opt: Optional[torch.optim.Optimizer]) -> Optional[int]:
    """Restore into ``module`` (and ``opt`` when the checkpoint has its state); the step, or None
    when there is no checkpoint."""
    if not (directory / META).is_file():
        return None
    meta = json.loads((directory / META).read_text())
    tensors = _joined(formats.read_weights(formats.find_weights(directory, (STATE,), "training checkpoint"),
                                           "training checkpoint"))
    own = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    module.load_state_dict(own)
    if opt is not None and meta.get("param_groups") is not None:
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


PART = "@part"  # a tensor larger than a checkpoint file may be is stored as row blocks: name@partI


def _split(tensors: dict[str, torch.Tensor], max_bytes: int) -> dict[str, torch.Tensor]:
    """Tensors over ``max_bytes`` cut into blocks of rows that fit (a file limit holds for every
    file, an lm_head's AdamW moments included)."""
    out = {}
    for name, t in tensors.items():
        if t.dim() == 0 or t.numel() * t.element_size() <= max_bytes or t.shape[0] == 1:
            out[name] = t
            continue
        rows = max(1, max_bytes // max(1, t[0].numel() * t.element_size()))
        for i, block in enumerate(t.split(rows)):
            out[f"{name}{PART}{i}"] = block.contiguous()
    return out


def _joined(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`_split` undone: each tensor's row blocks concatenated in order."""
    out, parts = {}, {}
    for name, t in tensors.items():
        base, sep, index = name.rpartition(PART)
        if sep and index.isdigit():
            parts.setdefault(base, {})[int(index)] = t
        else:
            out[name] = t
    for base, blocks in parts.items():
        if sorted(blocks) != list(range(len(blocks))):
            raise ValueError(f"training checkpoint: tensor {base} is missing row blocks (has "
                             f"{sorted(blocks)}): a piece of the checkpoint was not copied")
        out[base] = torch.cat([blocks[i] for i in range(len(blocks))])
    return out
