"""What a run writes: outputs.jsonl (streamed, one line per finished request) and the body of
summary.json (run metrics, per-request rows with their question / category / turn, provenance)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from specdec import experiment as exp
from specdec.metrics import run_summary
from specdec.serving import Request, ServeResult

REPO = Path(__file__).resolve().parent.parent


def versions() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "specdec": __import__("specdec").__version__}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


GIT_SHA_ENV = "SPECDEC_GIT_SHA"  # the commit of a tree that is no checkout (an installed export)


def git_sha() -> str:
    """The code's commit: ``$SPECDEC_GIT_SHA`` when set (experiments/ab_trees.sh sets it for the
    trees it installs), else the checkout's HEAD, else "unknown"."""
    if os.environ.get(GIT_SHA_ENV):
        return os.environ[GIT_SHA_ENV]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class OutputWriter:
    """outputs.jsonl, one line per request as it finishes: an interrupted run keeps them all."""

    def __init__(self, path: Path, tokenizer) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file, self.tokenizer = open(path, "w"), tokenizer

    def write(self, req: Request) -> None:
        seq, prompt = req.seq, req.prompt
        text = self.tokenizer.decode(seq.output, skip_special_tokens=True) if self.tokenizer else None
        self.file.write(json.dumps({"id": prompt.id, "category": prompt.category, "turn": req.turn,
                                    "prompt": prompt.turns[req.turn], "output_ids": seq.output,
                                    "output": text, "finish_reason": seq.finish_reason}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def summarize(engine, result: ServeResult, seed: int, role: str) -> dict:
    """summary.json's run-level numbers (config, sweep and speedup are added by the caller)."""
    reqs = result.finished
    body = run_summary([r.seq for r in reqs], result.stats, result.wall_s)
    by_id = {r.seq.request_id: r for r in reqs}
    for row in body["requests"]:  # which question, category and turn each request served
        req = by_id[row["request_id"]]
        row.update(prompt_id=req.prompt.id, category=req.prompt.category, turn=req.turn,
                   decode_steps=len(req.seq.accept_lengths))
    drafter, verifier = engine.drafter, engine.verifier
    return {"drafter": getattr(drafter, "name", type(drafter).__name__),
            "verifier": getattr(verifier, "name", type(verifier).__name__),
            "lossless": getattr(verifier, "lossless", True), "role": role,
            "tree_budget": int(drafter.max_nodes),
            **body, "questions": exp.question_stats(body["requests"]),
            "num_requests_submitted": result.submitted, "num_requests_planned": result.planned,
            "interrupted": result.interrupted, "seed": seed, "git_sha": git_sha(),
            "versions": versions(), "device": str(engine.device),
            "dtype": str(engine.dtype).replace("torch.", ""),
            "speculation": engine.policy.summary()}
