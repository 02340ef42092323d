"""A head's learning curve: tau against the training tokens it has seen, one point per training
round, kept as ``curve.json`` beside the exported weights. A round that goes on from a head
(``method.options.init_from``) starts from that head's curve, so rounds on fresh machines add to
one curve; the model card lists it and ``python -m specdec.report`` plots every curve it finds.

A point: ``{"tokens": cumulative training tokens, "tau": tau or null (not measured), "prompts":
what tau was measured on, "num_prompts", "steps": this round's steps, "round_tokens", "date",
"round": the round's id (its checkpoint's), "note"}``.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Optional

FILE = "curve.json"


def load(directory) -> list[dict]:
    """The curve saved in a head's folder ([] when it has none)."""
    f = Path(directory) / FILE
    if not f.is_file():
        return []
    points = json.loads(f.read_text())
    if not isinstance(points, list) or not all(isinstance(p, dict) and "tokens" in p for p in points):
        raise ValueError(f"{f} is not a learning curve (a list of points with 'tokens'); remove it or fix it")
    return points


def extend(prior: list[dict], round_tokens: int, steps: int, evaluation: dict,
           date: Optional[str] = None, round_id: Optional[str] = None) -> list[dict]:
    """``prior`` and this round's point: its tokens on top of the prior's last."""
    base = prior[-1]["tokens"] if prior else 0
    tau = evaluation.get("mean_accepted_length")
    return prior + [{"tokens": base + int(round_tokens), "round_tokens": int(round_tokens), "steps": int(steps),
                     "tau": None if tau is None else round(float(tau), 4),
                     "prompts": evaluation.get("prompts"), "num_prompts": evaluation.get("num_prompts"),
                     "date": date or datetime.date.today().isoformat(), "round": round_id}]


def write(directory, points: list[dict]) -> Path:
    f = Path(directory) / FILE
    f.write_text(json.dumps(points, indent=1))
    return f


def markdown(points: list[dict]) -> list[str]:
    """The card's table of the curve (no lines for an empty curve)."""
    if not points:
        return []
    lines = ["Learning curve (tau, T = 0, against training tokens; `curve.json`):", "",
             "| training tokens | tau | measured on | date | note |", "|---|---|---|---|---|"]
    for p in points:
        tau = "not measured" if p.get("tau") is None else f"{p['tau']:.3f}"
        on = f"{p.get('num_prompts')} {p.get('prompts')}" if p.get("prompts") else ""
        lines.append(f"| {p['tokens']} | {tau} | {on} | {p.get('date', '')} | {p.get('note', '')} |")
    return lines + [""]
