"""Hydra entry point: compose -> build -> run -> log.

    python -m specdec.run                                   # embedded default model, drafter=none
    python -m specdec.run drafter=ngram verifier.temperature=1 data=mt_bench data.num_prompts=20
    python -m specdec.run -m drafter=none,ngram verifier.temperature=0,1   # a sweep

Writes ``summary.json`` and ``outputs.jsonl`` into Hydra's run directory and prints a short table.
"""
from __future__ import annotations

import json
import platform
import random
import signal
import subprocess
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from specdec import data as data_mod
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.metrics import run_summary

SAMPLING_KEYS = ("temperature", "top_p", "top_k")
REPO = Path(__file__).resolve().parent.parent


def sampling_params(cfg: DictConfig) -> SamplingParams:
    v = cfg.verifier
    return SamplingParams(temperature=float(v.temperature), top_p=float(v.top_p), top_k=int(v.top_k),
                          max_new_tokens=int(cfg.max_new_tokens), seed=int(cfg.seed))


def build_verifier(cfg: DictConfig):
    args = {k: v for k, v in OmegaConf.to_container(cfg.verifier, resolve=True).items()
            if k not in SAMPLING_KEYS}
    return instantiate(args)


def build_engine(cfg: DictConfig) -> Engine:
    """Validate what can be validated without weights, then load and assemble."""
    from specdec.models.loader import load_model

    engine_cfg = EngineConfig(**OmegaConf.to_container(cfg.engine, resolve=True))
    drafter, verifier = instantiate(cfg.drafter), build_verifier(cfg)
    device = engine_cfg.torch_device()
    loaded = load_model(str(cfg.model.path), dtype=engine_cfg.torch_dtype(device), device=device)
    return Engine(loaded.model, drafter, verifier, engine_cfg, tokenizer=loaded.tokenizer,
                  stop_token_ids=loaded.stop_token_ids, max_model_len=loaded.max_model_len)


def load_prompts(cfg: DictConfig, tokenizer) -> list[tuple[data_mod.Prompt, list[int]]]:
    prompts = data_mod.select(instantiate(cfg.data.loader), cfg.data.num_prompts)
    return [(p, data_mod.render(p, tokenizer, cfg.data.chat_template, cfg.data.turn)) for p in prompts]


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


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class OutputWriter:
    """outputs.jsonl, one line per request as it finishes: an interrupted run keeps them all."""

    def __init__(self, path: Path, tokenizer) -> None:
        self.file, self.tokenizer = open(path, "w"), tokenizer

    def write(self, prompt: data_mod.Prompt, seq) -> None:
        text = self.tokenizer.decode(seq.output, skip_special_tokens=True) if self.tokenizer else None
        self.file.write(json.dumps({"id": prompt.id, "category": prompt.category,
                                    "prompt": prompt.turns[0], "output_ids": seq.output,
                                    "output": text, "finish_reason": seq.finish_reason}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def serve(engine: Engine, prompts, params: SamplingParams, logger, writer: OutputWriter, cfg: DictConfig):
    """Run every prompt through the engine; Ctrl-C stops early and keeps what finished."""
    seqs = [engine.submit(ids, params) for _, ids in prompts]
    by_id = {seq.request_id: prompt for (prompt, _), seq in zip(prompts, seqs)}
    for seq in seqs:
        if seq.finished:  # rejected on arrival
            writer.write(by_id[seq.request_id], seq)
    bar = tqdm(total=len(seqs), desc="requests", unit="req", disable=not cfg.progress)
    bar.update(sum(s.finished for s in seqs))
    interrupted = False
    try:
        while engine.has_work():
            done = engine.step()
            for seq in done:
                writer.write(by_id[seq.request_id], seq)
            bar.update(len(done))
            if engine.stats.steps % cfg.log_every == 0:
                logger.log_step(engine.stats.steps, {"step_ms": 1000 * engine.stats.step_times[-1],
                                                     "running": len(engine.scheduler.running)})
    except KeyboardInterrupt:
        interrupted = True
    bar.close()
    return seqs, interrupted


def print_table(summary: dict) -> None:
    rows = [("drafter", summary["drafter"]), ("requests", summary["num_requests"]),
            ("output tokens", summary["output_tokens"]), ("wall s", f"{summary['wall_s']:.2f}"),
            ("tokens/s", f"{summary['tokens_per_s']:.1f}"),
            ("tau (accepted+1)", f"{summary['mean_accepted_length']:.2f}"),
            ("accepted draft tokens", f"{summary['mean_accepted_draft_tokens']:.2f}"),
            ("TTFT p50 ms", f"{summary['ttft_ms_p50']:.1f}"), ("ITL p50 ms", f"{summary['itl_ms_p50']:.1f}"),
            ("draft time share", f"{summary['draft_time_share']:.2f}")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = sampling_params(cfg)  # bad sampling values fail here, before any weights load
    logger = instantiate(cfg.logger)
    engine = build_engine(cfg)
    prompts = load_prompts(cfg, engine.tokenizer)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger.start(resolved, run_dir)
    writer = OutputWriter(run_dir / "outputs.jsonl", engine.tokenizer)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.perf_counter()
    seqs, interrupted = serve(engine, prompts, params, logger, writer, cfg)
    wall = time.perf_counter() - start
    signal.signal(signal.SIGINT, old)
    writer.close()
    summary = {"drafter": getattr(engine.drafter, "name", type(engine.drafter).__name__),
               "verifier": getattr(engine.verifier, "name", type(engine.verifier).__name__),
               "lossless": getattr(engine.verifier, "lossless", True),
               **run_summary([s for s in seqs if s.finished], engine.stats, wall),
               "num_requests_submitted": len(seqs), "interrupted": interrupted,
               "seed": cfg.seed, "git_sha": git_sha(), "versions": versions(),
               "device": str(engine.device), "dtype": str(engine.dtype).replace("torch.", ""),
               "config": resolved}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    logger.log_summary(summary)
    logger.finish()
    print_table(summary)
    print(f"summary: {run_dir / 'summary.json'}")
    if interrupted:
        print(f"interrupted: {summary['num_requests']} of {len(seqs)} requests finished; their "
              f"outputs and this summary are kept")
        raise SystemExit(130)
    return summary


if __name__ == "__main__":
    main()
