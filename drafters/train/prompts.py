"""Training prompts for self-distillation: a folder of public instruction sets (GSM8K questions,
Code Alpaca instructions, the Alpaca seed tasks; by default ``builtin:train``, the 375 shipped in
specdec/prompts/train/, or a folder of the full files under the same names), self-instruct prompts that
the target writes from the seed tasks (Wang et al. 2023, "Self-Instruct"), Magpie prompts, user
turns the target writes from its chat template's empty user turn (Xu et al. 2024, "Magpie"), which
follow its own instruction-tuning distribution, copy-heavy tasks over the same files' text
(summarize, extract, translate, answer from a passage or from several, rewrite), whose answers
repeat their prompts, and second turns (a follow-up a template or the target writes, asked after
the target's own first answer). Never MT-bench, and never the rows of the evaluation mix: only the
first ``TRAIN_ROWS`` rows of each file are read (experiments/build_mix.py takes rows past them)."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Optional, Sequence

from specdec.data import DataError, resolve_path

SOURCES = ("gsm8k_train.jsonl", "code_alpaca.json", "alpaca_seed_tasks.jsonl")
TRAIN_ROWS = 4000  # rows of a source file training may read; the evaluation mix is built from the rest


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _with_input(instruction: str, extra: str) -> str:
    return instruction.strip() + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")


def clean_answer(answer: str) -> str:
    """A GSM8K worked answer as prose: calculator annotations and the final ``####`` line removed."""
    text = re.sub(r"<<[^>]*>>", "", answer)
    return re.sub(r"\n####.*$", "", text).strip()


def prompts_of(path: Path) -> list[str]:
    recs = _records(path)[:TRAIN_ROWS]
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
    the sources interleaved, each shuffled with ``seed`` (the first ``TRAIN_ROWS`` of each file)."""
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


def magpie_prefix(tokenizer, history: Sequence[dict] = ()) -> list[int]:
    """Token ids of the chat template up to where a user's message begins (Magpie's pre-query
    template), after the messages ``history`` (e.g. a first question and its answer): what the
    target continues with a user turn of its own."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("data.magpie and target-written follow-ups need a target with a chat template "
                         "(the user turn is sampled from it); this tokenizer has none: set data.magpie=0 "
                         "and data.follow_up_source=template")
    text = tokenizer.apply_chat_template([*history, {"role": "user", "content": MAGPIE_MARK}],
                                         tokenize=False, add_generation_prompt=False)
    if MAGPIE_MARK not in text:
        raise ValueError("the chat template dropped the user message; data.magpie cannot find where "
                         "a user turn begins: set data.magpie=0")
    return list(tokenizer.encode(text[: text.index(MAGPIE_MARK)], add_special_tokens=False))


def parse_query(text: str, min_chars: int = 15, max_chars: int = 1500) -> Optional[str]:
    """A sampled user turn, stripped; None when too short or too long to be a usable prompt."""
    text = text.strip()
    return text if min_chars <= len(text) <= max_chars else None


# ---- copy-heavy tasks -----------------------------------------------------------------------------
# Several wordings per task, none of them the evaluation mix's (experiments/build_mix.py): the heads
# should learn to copy from a prompt, not one template.
LANGUAGES = ("French", "Spanish", "German", "Italian", "Portuguese")
SUMMARIZE = ("Summarize the following in a few sentences.\n\n{text}",
             "Give a short summary of the text below, keeping every number.\n\n{text}",
             "TL;DR:\n\n{text}",
             "Condense this explanation into three bullet points.\n\n{text}")
EXTRACT = ("Extract every number from the text below and say what each one refers to.\n\n{text}",
           "List the people, objects and amounts mentioned in this text.\n\n{text}",
           "Pull the key facts out of the following text, one per line.\n\n{text}")
TRANSLATE = ("Translate into {lang}:\n\n{text}", "Please give a {lang} version of this text.\n\n{text}",
             "How would you say the following in {lang}?\n\n{text}")
REWRITE = ("Rewrite the following in simpler words.\n\n{text}", "Paraphrase this text.\n\n{text}",
           "Correct any mistakes in the following text and return the whole corrected text.\n\n{text}",
           "Rewrite this as a formal report.\n\n{text}")
PASSAGE_QA = ("{passage}\n\nBased on the text above: {question}",
              "Read this:\n{passage}\n\nQuestion: {question}\nAnswer from the text, quoting it.")
PASSAGE_QUESTIONS = ("what is being asked, and what is the answer?", "which numbers are given?",
                     "what is the first step of the solution?", "what is computed last, and how?")
DOCUMENTS = ("Answer using only these documents: which of them involves the largest number? Quote it.\n\n{docs}",
             "Here are some documents.\n\n{docs}\n\nSummarize what each one is about, one line each.",
             "{docs}\n\nWhich document mentions the most people or items? Quote the sentence.")
CODE = ("Add comments to the following code.\n\n{code}", "Rewrite this code with clearer names.\n\n{code}",
        "Explain what this code does, line by line.\n\n{code}")


def copy_tasks(data_dir, count: int, seed: int = 0) -> list[str]:
    """``count`` copy-heavy prompts over the folder's text (GSM8K questions and worked answers,
    Code Alpaca inputs that are code), the task kinds in turn; [] without a folder or count."""
    folder = prompt_folder(data_dir)
    if folder is None or count <= 0:
        return []
    rng = random.Random(seed)
    gsm = [r for f in [folder / "gsm8k_train.jsonl"] if f.is_file() for r in _records(f)[:TRAIN_ROWS]]
    code = [r["input"] for f in [folder / "code_alpaca.json"] if f.is_file() for r in _records(f)[:TRAIN_ROWS]
            if _is_code(r.get("input", ""))]
    if not gsm:
        raise DataError(f"data.copy_tasks={count} needs gsm8k_train.jsonl in data.prompts_dir={data_dir} "
                        f"(its questions and worked answers are the passages)")
    rng.shuffle(gsm)
    rng.shuffle(code)
    text = lambda r: f"{r['question']}\n{clean_answer(r['answer'])}"  # noqa: E731
    kinds = [
        lambda i: rng.choice(SUMMARIZE).format(text=text(gsm[i % len(gsm)])),
        lambda i: rng.choice(EXTRACT).format(text=gsm[i % len(gsm)]["question"]),
        lambda i: rng.choice(TRANSLATE).format(lang=rng.choice(LANGUAGES), text=gsm[i % len(gsm)]["question"]),
        lambda i: rng.choice(REWRITE).format(text=gsm[i % len(gsm)]["question"]),
        lambda i: rng.choice(PASSAGE_QA).format(passage=text(gsm[i % len(gsm)]),
                                                question=rng.choice(PASSAGE_QUESTIONS)),
        lambda i: rng.choice(DOCUMENTS).format(docs="\n".join(
            f"[{d + 1}] {gsm[(i + d * 7919) % len(gsm)]['question']}" for d in range(rng.randint(2, 4)))),
    ]
    if code:
        kinds.append(lambda i: rng.choice(CODE).format(code=code[i % len(code)]))
    return [kinds[i % len(kinds)](i) for i in range(count)]  # prompt i: passage i, kind i mod K


def _is_code(text: str) -> bool:
    return len(text) >= 40 and sum(text.count(c) for c in "(){};=") >= 4


# ---- second turns -------------------------------------------------------------------------------
FOLLOW_UPS = ("Summarize your answer in two sentences.", "Rewrite your answer as a bulleted list.",
              "Translate your answer into French.", "Translate your answer into Spanish.",
              "Explain the most important step in more detail.", "Can you make your answer shorter?",
              "Rewrite your answer so that a ten-year-old could follow it.",
              "Quote the sentence of your answer that matters most, then explain why.",
              "Check your answer for mistakes and give a corrected version if needed.",
              "Give one more example like the one in your answer.", "Now write it more formally.",
              "List the key terms of your answer with a one-line definition each.")
