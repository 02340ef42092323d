"""Self-distillation data on disk: shards of token sequences (and optionally the target's hidden
states), plus a manifest that makes generation resumable.

Shard ``shard-00012.safetensors``: ``tokens`` int32 [T] (all sequences concatenated), ``offsets``
int64 [n + 1], ``prompt_lens`` int32 [n]; with stored features also ``hidden`` [T, h] and ``aux``
[T, 3h] (float16). ``manifest.json``: the target, the prompts consumed so far, the shard list.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

MANIFEST = "manifest.json"


@dataclass
class Example:
    tokens: list[int]
    prompt_len: int  # tokens[:prompt_len] are the prompt; the answer follows
    hidden: Optional[Tensor] = None  # [n, h]
    aux: Optional[Tensor] = None  # [n, 3h]


@dataclass
class Manifest:
    target: str
    prompts_done: int = 0
    shards: list[dict] = field(default_factory=list)  # {"file", "examples", "tokens"}
    info: dict = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> Optional["Manifest"]:
        f = directory / MANIFEST
        return cls(**json.loads(f.read_text())) if f.is_file() else None

    def save(self, directory: Path) -> None:
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        tmp.replace(directory / MANIFEST)  # atomic: an interrupted run keeps the last good manifest

    @property
    def num_examples(self) -> int:
        return sum(s["examples"] for s in self.shards)

    @property
    def num_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)


def write_shard(directory: Path, index: int, examples: list[Example]) -> dict:
    from safetensors.torch import save_file

    lens = [len(e.tokens) for e in examples]
    state = {"tokens": torch.tensor([t for e in examples for t in e.tokens], dtype=torch.int32),
             "offsets": torch.tensor([0] + lens, dtype=torch.int64).cumsum(0),
             "prompt_lens": torch.tensor([e.prompt_len for e in examples], dtype=torch.int32)}
    if examples and examples[0].hidden is not None:
        state["hidden"] = torch.cat([e.hidden for e in examples]).half().cpu()
        state["aux"] = torch.cat([e.aux for e in examples]).half().cpu()
    name = f"shard-{index:05d}.safetensors"
    tmp = directory / (name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(directory / name)
    return {"file": name, "examples": len(examples), "tokens": sum(lens)}


def read_shards(directory: Path) -> list[Example]:
    """Every example of a data directory (features attached when the shards hold them)."""
    from safetensors.torch import load_file

    manifest = Manifest.load(directory)
    if manifest is None or not manifest.shards:
        raise FileNotFoundError(f"no self-distillation data in {directory} (no {MANIFEST} with shards); "
                                f"generate it first (stage=data)")
    out = []
    for shard in manifest.shards:
        s = load_file(str(directory / shard["file"]))
        off = s["offsets"].tolist()
        for i, plen in enumerate(s["prompt_lens"].tolist()):
            a, b = off[i], off[i + 1]
            ex = Example(s["tokens"][a:b].tolist(), plen)
            if "hidden" in s:
                ex.hidden, ex.aux = s["hidden"][a:b], s["aux"][a:b]
            out.append(ex)
    return out
