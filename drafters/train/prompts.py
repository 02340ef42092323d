"""Training prompts for self-distillation: the public instruction sets in ../shared/data/train
(GSM8K questions, Code Alpaca instructions, the Alpaca seed tasks) and self-instruct prompts that
the target writes from the seed tasks (Wang et al. 2023, "Self-Instruct"). Never MT-bench."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Optional

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


def training_prompts(data_dir: Optional[Path], max_prompts: int, seed: int = 0,
                     log=print) -> list[str]:
    """Up to ``max_prompts`` prompts, the sources interleaved (each shuffled with ``seed``);
    [] with a note when the folder is absent (a user's clone has no ../shared)."""
    if data_dir is None or not Path(data_dir).is_dir():
        log(f"[specdec.train] no training prompt folder at {data_dir}: skipping the public sets")
        return []
    rng = random.Random(seed)
    pools = []
    for name in SOURCES:
        f = Path(data_dir) / name
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


def seed_tasks(data_dir: Optional[Path]) -> list[str]:
    f = Path(data_dir or "") / "alpaca_seed_tasks.jsonl"
    return [r["instruction"].strip() for r in _records(f)] if f.is_file() else []


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
