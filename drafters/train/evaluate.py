"""Acceptance of a trained drafter through the engine: greedy (T = 0) runs over evaluation prompts
(MT-bench first turns when available), tau and per-depth acceptance as `specdec.metrics` defines
them, and whether every output equals the target's own greedy output."""
from __future__ import annotations

import time
from typing import Optional

from specdec.data import Prompt, render
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.metrics import acceptance
from specdec.verifiers import LosslessVerifier


def run_engine(loaded, drafter, prompts: list[Prompt], engine_cfg: EngineConfig, max_new_tokens: int):
    engine = Engine(loaded.model, drafter, LosslessVerifier(), engine_cfg, tokenizer=loaded.tokenizer,
                    stop_token_ids=loaded.stop_token_ids, max_model_len=loaded.max_model_len)
    ids = [render(p, loaded.tokenizer) for p in prompts]
    start = time.perf_counter()
    seqs = engine.generate(ids, SamplingParams(max_new_tokens=max_new_tokens), progress=True)
    return seqs, time.perf_counter() - start


def evaluate(loaded, drafter, prompts: list[Prompt], engine_cfg: EngineConfig, max_new_tokens: int,
             baseline: Optional[list[list[int]]] = None) -> dict:
    seqs, wall = run_engine(loaded, drafter, prompts, engine_cfg, max_new_tokens)
    out = {k: v for k, v in acceptance(seqs).items()}
    tokens = sum(len(s.output) for s in seqs)
    out.update(num_prompts=len(prompts), output_tokens=tokens, wall_s=wall, tokens_per_s=tokens / wall)
    if baseline is not None:
        out["greedy_equal"] = sum(s.output == b for s, b in zip(seqs, baseline))
    return out


def baseline_outputs(loaded, prompts: list[Prompt], engine_cfg: EngineConfig, max_new_tokens: int) -> tuple[list[list[int]], float]:
    from specdec.drafters.none import NoDrafter

    seqs, wall = run_engine(loaded, NoDrafter(), prompts, engine_cfg, max_new_tokens)
    return [s.output for s in seqs], wall
