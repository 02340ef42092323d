"""Training prompts for self-distillation: a folder of public instruction sets (GSM8K questions,
Code Alpaca instructions, the Alpaca seed tasks; by default ``builtin:train``, the 375 shipped in
specdec/prompts/train/, or a folder of the full files under the same names), self-instruct prompts that
the target writes from the seed tasks (Wang et al. 2023, "Self-Instruct") and Magpie prompts, user
turns the target writes from its chat template's empty user turn (Xu et al. 2024, "Magpie"), which
follow its own instruction-tuning distribution. Never MT-bench."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Optional

from specdec.data import DataError, resolve_path

SOURCES = ("gsm8k_train.jsonl", "code_alpaca.json", "alpaca_seed_tasks.jsonl")


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _with_input(instruction: str, extra: str) -> str:
    return instruction.strip() + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")


def prompts_of(path: Path) -> list[str]:
    recs = _records(path)
    if path.name.startswith("gsm8k"):
        return [r["question"].strip() for r in recs]
    if path.name.startswith("code_alpaca"):
        return [_with_input(r["instruction"], r.get("input", "")) for r in recs]
    return [_with_input(r["instruction"], (r.get("instances") or [{}])[0].get("input", "")) for r in recs]


def prompt_folder(data_dir) -> Optional[Path]:
    """The folder ``data.prompts_dir`` names (``builtin:train`` is the shipped one); None for none.
    A folder that does not exist, or holds none of the source files, is an error: a typo must not
    train on nothing."""
    if data_dir is None:
        return None
    path = resolve_path(data_dir)
    if not path.is_dir():
        raise DataError(f"data.prompts_dir={data_dir}: no such folder; use builtin:train (the "
                        f"shipped prompts), a folder holding {', '.join(SOURCES)}, or null for none")
    if not any((path / name).is_file() for name in SOURCES):
        raise DataError(f"data.prompts_dir={data_dir}: holds none of {', '.join(SOURCES)}")
    return path


def training_prompts(data_dir, max_prompts: int, seed: int = 0) -> list[str]:
    """Up to ``max_prompts`` prompts of the folder ``data_dir`` (see prompt_folder; None: []),
    the sources interleaved, each shuffled with ``seed``."""
    folder = prompt_folder(data_dir)
    if folder is None:
        return []
    rng = random.Random(seed)
    pools = []
    for name in SOURCES:
        f = folder / name
        if f.is_file():
            pool = [p for p in prompts_of(f) if p]
            rng.shuffle(pool)
            pools.append(pool)
    out: list[str] = []
    while len(out) < max_prompts and any(pools):
        for pool in pools:
            if pool and len(out) < max_prompts:
                out.append(pool.pop())
    return out


def seed_tasks(data_dir) -> list[str]:
    folder = prompt_folder(data_dir)
    f = folder / "alpaca_seed_tasks.jsonl" if folder else None
    return [r["instruction"].strip() for r in _records(f)] if f and f.is_file() else []


def self_instruct_prompt(examples: list[str]) -> str:
    listed = "\n".join(f"{i + 1}. {e}" for i, e in enumerate(examples))
    return (f"Here are some example tasks:\n{listed}\n\nWrite one new task that is different from "
            f"all of them. Reply with the task only, on one line.")


def parse_instruction(text: str, min_chars: int = 15, max_chars: int = 400) -> Optional[str]:
    """The first non-empty line, without numbering or a 'Task:' label; None if unusable."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(\d+[.)]\s*|[-*]\s*|task\s*\d*\s*:\s*)", "", line.strip(), flags=re.I).strip()
        if line:
            return line if min_chars <= len(line) <= max_chars else None
    return None


MAGPIE_MARK = "\x00specdec-magpie\x00"


def magpie_prefix(tokenizer) -> list[int]:
    """Token ids of the chat template up to where a user's message begins (Magpie's pre-query
    template): what the target continues with a user turn of its own."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("data.magpie needs a target with a chat template (the user turn is sampled "
                         "from it); this tokenizer has none: set data.magpie=0")
    text = tokenizer.apply_chat_template([{"role": "user", "content": MAGPIE_MARK}], tokenize=False,
                                         add_generation_prompt=False)
    if MAGPIE_MARK not in text:
        raise ValueError("the chat template dropped the user message; data.magpie cannot find where "
                         "a user turn begins: set data.magpie=0")
    return list(tokenizer.encode(text[: text.index(MAGPIE_MARK)], add_special_tokens=False))


def parse_query(text: str, min_chars: int = 15, max_chars: int = 1500) -> Optional[str]:
    """A sampled user turn, stripped; None when too short or too long to be a usable prompt."""
    text = text.strip()
    return text if min_chars <= len(text) <= max_chars else None
