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
CHECKPOINT_SHARD_BYTES = 2**30  # not shipped: shards need not fit the 15 MiB file limit
META = "trainer.json"


def save(directory: Path, module: nn.Module, opt: Optional[torch.optim.Optimizer], step: int,
         info: dict) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = {f"model.{k}": v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    groups = None
    if opt is not None:
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            tensors.update({f"opt.{idx}.{name}": t for name, t in st.items() if torch.is_tensor(t)})
        groups = sd["param_groups"]
    formats.write_weights(tensors, tmp, STATE, max_bytes=CHECKPOINT_SHARD_BYTES)
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
    tensors = formats.read_weights(formats.find_weights(directory, (STATE,), "training checkpoint"),
                                   "training checkpoint")
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
