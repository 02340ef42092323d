"""A short model card (README.md) beside exported drafter weights: what it is, how it was trained
(data, steps, time), what it measured (tau), and how to use it."""
from __future__ import annotations

import json
from pathlib import Path

from . import curve

USE = {"eagle": "python -m specdec.run drafter=eagle drafter.path={path}",
       "eagle3": "python -m specdec.run drafter=eagle3 drafter.path={path}",
       "medusa": "python -m specdec.run drafter=medusa drafter.path={path}",
       "draft": "python -m specdec.run drafter=small_draft drafter.path={path}"}
WHAT = {"eagle": "EAGLE-1/2 draft head (one decoder layer; official EAGLE format)",
        "eagle3": "EAGLE-3 draft head (fused low/mid/high features, draft vocabulary; official EAGLE-3 format)",
        "medusa": "Medusa heads (official medusa_lm_head format; shared lm_head when so flagged)",
        "draft": "small draft model sharing the target's embedding and lm_head"}


def write_card(directory: Path, kind: str, target: str, data: dict, train: dict, evaluation: dict,
               command: str, started_from: str | None = None, points: list[dict] = ()) -> Path:
    """``evaluation`` empty: the run had no eval stage, and the card says tau was not measured.
    ``started_from``: the head the training went on from (method.options.init_from); ``points``:
    its learning curve (curve.py)."""
    files = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".json"))
    tau = evaluation.get("mean_accepted_length")
    sources = f" (answers to a prompt list of {data['sources']})" if data.get("sources") else ""
    lines = [
        f"# {WHAT.get(kind, kind)} for {target}", "",
        "Trained by specdec (`python -m specdec.train`) on the target's own answers (self-distillation).", "",
        "| | |", "|---|---|",
        f"| target | {target} |",
        f"| data | {data.get('examples')} examples, {data.get('tokens')} tokens{sources} |",
    ]
    if started_from:
        lines.append(f"| started from | {started_from} (method.options.init_from) |")
    lines += [
        f"| steps | {train.get('steps')} (batch {train.get('batch_size')}, lr {train.get('lr')}) |",
        f"| training time | {train.get('train_s', float('nan')):.0f} s on {train.get('device')} |",
    ]
    if tau is None:
        lines.append("| tau (T=0, accepted + 1) | not measured: the run had no eval stage "
                     "(`stages=[eval]` with the same work_dir measures it) |")
    else:
        lines += [
            f"| tau (T=0, accepted + 1) | {tau:.3f} on {evaluation.get('num_prompts')} "
            f"{evaluation.get('prompts', 'prompts')}, {evaluation.get('output_tokens')} tokens |",
            f"| accepted draft tokens / step | "
            f"{evaluation.get('mean_accepted_draft_tokens', float('nan')):.3f} |",
        ]
        if evaluation.get("check"):
            c = evaluation["check"]
            lines.append(f"| tau on the check set | {c['tau']:.3f} on the first {c['num_prompts']} of {c['prompts']}, "
                         f"{c['max_new_tokens']} new tokens ({c['dtype']}, {c['device']}; check.json: the CPU "
                         f"tests hold the head to 90% of it) |")
    lines += [
        f"| files | {', '.join(files)} |", "",
        f"Use: `{USE[kind].format(path=directory)}`", "",
        f"Reproduce: `{command}`", "",
    ]
    if tau is not None:
        lines += ["Acceptance per depth: "
                  + json.dumps([round(x, 3) for x in evaluation.get('accept_rate_per_depth', [])]), ""]
    lines += curve.markdown(list(points))
    path = directory / "README.md"
    path.write_text("\n".join(lines))
    return path
