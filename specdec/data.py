"""Prompt sets: the built-in default prompts, MT-bench-format jsonl, and any jsonl/json file with a
chosen prompt field. Errors name the file and every bad line, not only the first."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

# A handful of short, varied instructions written for this project (the default `data=default`).
DEFAULT_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in two sentences why the sky is blue.",
    "List three tips for writing clear technical documentation.",
    "Translate 'Good morning, how are you?' into Spanish.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "What is 17 multiplied by 23? Show your working.",
    "Give me a haiku about autumn leaves.",
]


@dataclass
class Prompt:
    id: str
    turns: list[str]  # user turns; the first is what single-turn runs use
    category: str = ""
    meta: dict = field(default_factory=dict)


class DataError(ValueError):
    """A prompt file that cannot be used; the message names the file and the bad lines."""


def default_prompts() -> list[Prompt]:
    return [Prompt(f"default-{i}", [t], "default") for i, t in enumerate(DEFAULT_PROMPTS)]


def read_records(path: str | Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """(line number, record) pairs from a .jsonl file (one object per line) or a .json list, and
    (line number, message) for every line that is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist (set data.path to a jsonl/json file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json prompt file must hold a list of objects")
        return [(i + 1, rec) for i, rec in enumerate(data)], []
    records, errors = [], []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append((no, f"{path}:{no}: invalid JSON: {err.msg}"))
            continue
        records.append((no, rec))
    return records, errors


def load_prompt_file(path: str | Path, field_name: str = "turns", id_field: Optional[str] = None,
                     category_field: Optional[str] = "category") -> list[Prompt]:
    """Prompts from a file whose ``field_name`` holds a string or a list of turns (MT-bench:
    ``turns``). Every record without a usable prompt is reported at once."""
    prompts = []
    records, errors = read_records(path)
    for no, rec in records:
        where = f"{path}:{no}"
        if not isinstance(rec, dict):
            errors.append((no, f"{where}: expected a JSON object, got {type(rec).__name__}"))
            continue
        if field_name not in rec:
            errors.append((no, f"{where}: no field {field_name!r} (fields: {sorted(rec)}); "
                               f"set the data config's field_name to the prompt field"))
            continue
        turns = rec[field_name]
        turns = [turns] if isinstance(turns, str) else turns
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            errors.append((no, f"{where}: field {field_name!r} must be a non-empty string or "
                               f"list of strings"))
            continue
        pid = str(rec.get(id_field, no)) if id_field else str(rec.get("question_id", no))
        cat = str(rec.get(category_field, "")) if category_field else ""
        prompts.append(Prompt(pid, turns, cat))
    if errors:
        lines = [msg for _, msg in sorted(errors)]
        raise DataError(f"{len(errors)} bad record(s) in {path}:\n" + "\n".join(lines))
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts


def select(prompts: list[Prompt], num_prompts: Optional[int]) -> list[Prompt]:
    if num_prompts is None:
        return prompts
    if num_prompts < 1:
        raise DataError(f"data.num_prompts must be >= 1 or null; got {num_prompts}")
    return prompts[:num_prompts]


def render(prompt: Prompt, tokenizer, chat_template: bool = True, turn: int = 0,
           system: Optional[str] = None) -> list[int]:
    """Token ids of the prompt's first ``turn + 1`` user turns (earlier answers are not known, so
    multi-turn rendering takes them from ``prompt.meta['answers']`` when present)."""
    text = prompt.turns[turn]
    if not chat_template or getattr(tokenizer, "chat_template", None) is None:
        return tokenizer.encode(text, add_special_tokens=True)
    messages = [{"role": "system", "content": system}] if system else []
    answers: Sequence[str] = prompt.meta.get("answers", [])
    for i in range(turn + 1):
        messages.append({"role": "user", "content": prompt.turns[i]})
        if i < turn:
            messages.append({"role": "assistant", "content": answers[i] if i < len(answers) else ""})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)
