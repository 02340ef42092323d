"""Build the multi-category evaluation mix (specdec/prompts/mix.jsonl) from public prompt files:
MT-bench's 8 categories (first turns) and five more, where speculation behaves differently:

  * copy-heavy: summarization, extraction, translation, QA over a passage, RAG (an answer from
    retrieved passages): the answer repeats its prompt, where prompt lookup shines;
  * math reasoning (GSM8K questions) and code (Code Alpaca instructions): answers the target
    writes itself, where a draft head shines.

Passages come from the same public files (GSM8K questions and worked answers, Code Alpaca
instructions and inputs), taken from rows the shipped drafters' training did not read (past the
first 4000 of each file), and wrapped in fixed task templates. Deterministic: the same files give
the same mix.

    python experiments/build_mix.py --source DIR --out specdec/prompts/mix.jsonl

DIR holds ``mt_bench.jsonl`` (lm-sys/FastChat, fastchat/llm_judge/data/mt_bench/question.jsonl),
``train/gsm8k_train.jsonl`` (openai/grade-school-math, grade_school_math/data/train.jsonl) and
``train/code_alpaca.json`` (sahil280114/codealpaca, data/new_codealpaca.json).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from specdec.drafters.train.prompts import TRAIN_ROWS, clean_answer as clean

PER_CATEGORY = 8
SKIP = TRAIN_ROWS  # the rows training reads (the first ones of each file): the mix takes the rest


def build(source: Path) -> list[dict]:
    rng = random.Random(0)
    mt = [json.loads(line) for line in (source / "mt_bench.jsonl").read_text().splitlines() if line.strip()]
    gsm = [json.loads(line) for line in (source / "train" / "gsm8k_train.jsonl").read_text().splitlines()
           if line.strip()][SKIP:]
    code = json.loads((source / "train" / "code_alpaca.json").read_text())[SKIP:]
    rng.shuffle(gsm)
    rng.shuffle(code)
    rows = []

    def add(category: str, text: str) -> None:
        rows.append({"question_id": f"mix-{len(rows)}", "category": category, "turns": [text]})

    for cat in sorted({q["category"] for q in mt}):  # MT-bench's own questions, first turns
        for q in [q for q in mt if q["category"] == cat][:PER_CATEGORY]:
            add(cat, q["turns"][0])
    g = iter(gsm)
    for _ in range(PER_CATEGORY):
        p = next(g)
        add("summarize", "Summarize the following solution in two or three sentences, keeping "
                             f"its numbers:\n\n{p['question']}\n{clean(p['answer'])}")
    for _ in range(PER_CATEGORY):
        p = next(g)
        add("extract_quantities", "List every quantity mentioned in the following problem, one per line, "
                          f"as 'quantity: what it counts':\n\n{p['question']}")
    for _ in range(PER_CATEGORY):
        p = next(g)
        add("translate", f"Translate the following text into French:\n\n{p['question']}")
    for _ in range(PER_CATEGORY):
        p = next(g)
        add("passage_qa", "Read the passage and answer the question, quoting the passage where "
                          f"you can.\n\nPassage: {p['question']} {clean(p['answer'])}\n\n"
                          "Question: How was the final number obtained?")
    for _ in range(PER_CATEGORY):
        docs = [next(g) for _ in range(3)]
        passages = "\n".join(f"[{i + 1}] {d['question']}" for i, d in enumerate(docs))
        add("rag", f"Using only the documents below, answer: which document asks about the "
                   f"largest amount of money, and what does it ask?\n\n{passages}")
    for _ in range(PER_CATEGORY):
        add("gsm8k", f"{next(g)['question']}\nSolve it step by step.")
    c = iter(code)
    for _ in range(PER_CATEGORY):
        item = next(c)
        task = item["instruction"] + (f"\n\nInput: {item['input']}" if item.get("input") else "")
        add("code_alpaca", task)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="folder of the public files (see the docstring)")
    ap.add_argument("--out", default="specdec/prompts/mix.jsonl")
    args = ap.parse_args()
    rows = build(Path(args.source))
    Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts = {}
    for r in rows:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    print(f"wrote {len(rows)} prompts to {args.out}: {counts}")


if __name__ == "__main__":
    main()
