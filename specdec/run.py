"""Hydra entry point: compose -> build -> serve -> baseline -> log.

    python -m specdec.run                                   # embedded default model, drafter=ngram
    python -m specdec.run drafter=ngram verifier.temperature=1 data=mt_bench data.num_prompts=20
    python -m specdec.run -m drafter=none,ngram verifier.temperature=0,1   # a sweep
    python -m specdec.run -m experiment=drafter_table       # a paper preset (configs/experiment/)

Writes ``summary.json``, ``outputs.jsonl`` (streamed as requests finish) and ``run.log`` (the run's
log, configs/hydra/job_logging/specdec.yaml) into Hydra's run directory and prints a short table. A
mistake in the command ends with one ``error: ...`` line and exit code 2 (specdec/errors.py). The speedup is measured against the autoregressive run of the
same model, data, engine, serving and sampling settings: a finished one is reused from the
baseline store (``speedup.baseline_dir``), else it is run here. A run directory that already holds
a finished summary of the same config is skipped (sweeps resume where they were stopped).
"""
from __future__ import annotations

import gc
import logging
import random
import signal
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from specdec import data as data_mod
from specdec import errors
from specdec import experiment as exp
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.results import OutputWriter, git_sha, summarize, versions  # noqa: F401 (re-exported)
from specdec.serving import ServeConfig, Server

SAMPLING_KEYS = ("temperature", "top_p", "top_k")
log = logging.getLogger("specdec.run")


# ---- the config turned into objects (each step validates what it reads; see specdec/errors.py) --
def sampling_params(cfg: DictConfig) -> SamplingParams:
    v = cfg.verifier
    sampling = {k: v[k] for k in SAMPLING_KEYS}
    errors.check_types(SamplingParams, sampling, "verifier")
    errors.check_types(SamplingParams, {"max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}, "")
    try:
        return SamplingParams(temperature=float(v.temperature), top_p=float(v.top_p), top_k=int(v.top_k),
                              max_new_tokens=int(cfg.max_new_tokens), seed=int(cfg.seed))
    except ValueError as err:  # its messages name the field: say which option that is
        text = str(err)
        raise errors.UserError(f"verifier.{text}" if text.startswith(SAMPLING_KEYS) else text) from None


def build(args: dict, prefix: str):
    """instantiate(args) after checking its values against the target's annotations."""
    errors.check_types(get_object(args["_target_"]), {k: v for k, v in args.items() if not k.startswith("_")},
                       prefix)
    return instantiate(args)


def build_verifier(cfg: DictConfig):
    args = {k: v for k, v in OmegaConf.to_container(cfg.verifier, resolve=True).items()
            if k not in SAMPLING_KEYS}
    return build(args, "verifier")


def build_drafter(cfg: DictConfig):
    return build(OmegaConf.to_container(cfg.drafter, resolve=True), "drafter")


def engine_config(cfg: DictConfig) -> EngineConfig:
    values = OmegaConf.to_container(cfg.engine, resolve=True)
    errors.check_types(EngineConfig, values, "engine")
    return EngineConfig(**values)


def serve_config(cfg: DictConfig) -> ServeConfig:
    s = cfg.serving
    errors.check_types(ServeConfig, {k: s[k] for k in ("request_rate", "concurrency", "warmup")}, "serving")
    errors.check_types(ServeConfig, {"max_turns": cfg.data.get("max_turns", 1)}, "data")
    rate = None if s.request_rate is None else float(s.request_rate)
    return ServeConfig(request_rate=rate, concurrency=s.concurrency, max_turns=cfg.data.get("max_turns", 1),
                       warmup=int(s.warmup), seed=int(cfg.seed))


def load_target(cfg: DictConfig, engine_cfg: EngineConfig):
    from specdec.models.loader import load_model

    device = engine_cfg.torch_device()
    return load_model(str(cfg.model.path), dtype=engine_cfg.torch_dtype(device), device=device)


def make_engine(loaded, drafter, verifier, engine_cfg: EngineConfig, policy=None) -> Engine:
    engine = Engine(loaded.model, drafter, verifier, engine_cfg, tokenizer=loaded.tokenizer,
                    stop_token_ids=loaded.stop_token_ids, max_model_len=loaded.max_model_len,
                    policy=policy)
    if engine.runner.graphs.mode == "capture":
        t = time.perf_counter()
        n = engine.warm_up_graphs()
        log.info(f"captured {n} CUDA graphs (target steps and drafting) in {time.perf_counter() - t:.1f} s")
    return engine


def build_policy(cfg: DictConfig):
    """The speculation policy (configs/speculation/); None (fixed) when the config has none."""
    return instantiate(cfg.speculation) if cfg.get("speculation") is not None else None


def build_engine(cfg: DictConfig) -> Engine:
    """Validate what can be validated without weights, then load and assemble."""
    engine_cfg = engine_config(cfg)
    drafter, verifier, policy = build_drafter(cfg), build_verifier(cfg), build_policy(cfg)
    return make_engine(load_target(cfg, engine_cfg), drafter, verifier, engine_cfg, policy)


def load_prompts(cfg: DictConfig) -> list[data_mod.Prompt]:
    if cfg.data.get("turn", 0) and cfg.data.get("max_turns", 1) != 1:
        raise data_mod.DataError("data.turn selects one turn of a single-turn run; with data.max_turns "
                                 "!= 1 every turn is asked from the first: leave data.turn at 0")
    return data_mod.select(instantiate(cfg.data.loader), cfg.data.num_prompts,
                           cfg.data.get("per_category"))


def renderer(cfg: DictConfig, tokenizer):
    """(prompt, turn, answers) -> token ids: the model's chat template, earlier answers in it.
    Single-turn runs ask ``data.turn``."""
    single = cfg.data.get("max_turns", 1) == 1
    base_turn = int(cfg.data.get("turn", 0))
    system = cfg.data.get("system")

    def render(prompt: data_mod.Prompt, turn: int, answers: list[str]) -> list[int]:
        t = base_turn if single else turn
        return data_mod.render(prompt, tokenizer, cfg.data.chat_template, t, system,
                               answers if answers or not single else None)

    return render


def serve(engine: Engine, prompts: list[data_mod.Prompt], params: SamplingParams, cfg: DictConfig,
          out_dir: Path, logger=None, progress: bool = True, desc: str = "requests"):
    """Serve every prompt (every turn up to data.max_turns) and write outputs.jsonl as requests
    finish; Ctrl-C stops early and keeps what finished. ``desc`` labels the progress bar."""
    writer = OutputWriter(out_dir / "outputs.jsonl", engine.tokenizer)

    def on_step(e: Engine) -> None:
        if logger is not None and e.stats.steps % cfg.log_every == 0:
            logger.log_step(e.stats.steps, {"step_ms": 1000 * e.stats.step_times[-1],
                                            "running": len(e.scheduler.running)})

    decode = (lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=True)) if engine.tokenizer else str
    server = Server(engine, renderer(cfg, engine.tokenizer), decode, params, serve_config(cfg),
                    on_finish=writer.write, on_step=on_step, progress=progress, desc=desc)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.warmup(prompts)
        result = server.run(prompts)
    finally:
        signal.signal(signal.SIGINT, old)
        writer.close()
    return result


def print_table(summary: dict) -> None:
    rows = [("drafter", summary["drafter"]), ("requests", summary["num_requests"]),
            ("output tokens", summary["output_tokens"]), ("wall s", f"{summary['wall_s']:.2f}"),
            ("tokens/s", f"{summary['tokens_per_s']:.1f}"),
            ("tau (accepted+1)", f"{summary['mean_accepted_length']:.2f}"),
            ("accepted draft tokens", f"{summary['mean_accepted_draft_tokens']:.2f}"),
            ("TTFT p50 ms", f"{summary['ttft_ms_p50']:.1f}"), ("ITL p50 ms", f"{summary['itl_ms_p50']:.1f}"),
            ("draft time share", f"{summary['draft_time_share']:.2f}")]
    if summary.get("speedup") is not None:
        rows.append(("speedup vs autoregressive", f"{summary['speedup']:.2f}x "
                                                  f"({summary['baseline']['source']})"))
    width = max(len(k) for k, _ in rows)
    log.info("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


# ---- the autoregressive baseline ---------------------------------------------------------------
def baseline_store(cfg: DictConfig, run_dir: Path) -> exp.BaselineStore:
    """speedup.baseline_dir, else ``baselines/`` beside the run (in a sweep: in the sweep dir)."""
    root = cfg.speedup.baseline_dir
    return exp.BaselineStore(Path(root) if root else run_dir.parent / "baselines")


def run_baseline(cfg: DictConfig, resolved: dict, loaded, verifier, engine_cfg: EngineConfig, prompts,
                 params, out_dir: Path, key: str) -> dict:
    """The autoregressive run of the same settings, here and now, on the already loaded target;
    its summary reads like a drafter=none run's (config, speedup 1 over itself)."""
    log.info(f"running the autoregressive baseline (drafter=none, the speedup's reference; "
             f"speedup.baseline=off skips it) into {out_dir}")
    base_verifier = verifier if getattr(verifier, "lossless", True) else instantiate(
        {"_target_": "specdec.verifiers.LosslessVerifier"})
    engine = make_engine(loaded, NoDrafter(), base_verifier, engine_cfg)
    result = serve(engine, prompts, params, cfg, out_dir, progress=cfg.progress,
                   desc="baseline (drafter=none) requests")
    summary = {**summarize(engine, result, int(cfg.seed), role="baseline"), "method": "none", "overrides": [],
               "sweep_name": resolved.get("sweep_name"), "reused": False, "baseline_key": key}
    del engine
    gc.collect()
    if not summary["interrupted"]:
        summary.update(exp.speedup_fields(summary, summary, "self", key, out_dir / "summary.json"))
    config = {**resolved, "drafter": {"_target_": "specdec.drafters.none.NoDrafter"}}
    if not getattr(verifier, "lossless", True):
        config["verifier"] = {"_target_": "specdec.verifiers.LosslessVerifier",
                              **{k: resolved["verifier"][k] for k in SAMPLING_KEYS}}
    return {**summary, "config": config}


def speedup_mode(cfg: DictConfig) -> str:
    mode = str(cfg.speedup.baseline)
    if mode not in ("auto", "reuse", "off"):
        raise ValueError(f"speedup.baseline must be auto (reuse or run), reuse (only reuse) or off; "
                         f"got {mode!r}")
    return mode


def shown(path) -> str:
    """A path as summaries record it: relative to the working directory when under it (results
    committed from a sweep then name no machine's folders), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def attach_speedup(summary: dict, cfg: DictConfig, store: exp.BaselineStore, key: str, run_dir: Path,
                   baseline_runner) -> dict:
    """Add speedup fields: this run itself (drafter none), a stored baseline, or a fresh one."""
    mode = speedup_mode(cfg)
    summary["baseline_key"] = key
    if mode == "off":
        return summary
    if summary["drafter"] == "none" and summary["lossless"]:
        return {**summary, **exp.speedup_fields(summary, summary, "self", key, run_dir / "summary.json")}
    found = store.find(key)
    if found is not None:
        source = f"reused: {shown(found.get('registered_from') or store.dir(key))}"
        return {**summary, **exp.speedup_fields(summary, found, source, key, store.dir(key) / "summary.json")}
    if mode == "reuse":
        log.info(f"no finished autoregressive run with these settings in {store.root}: no speedup")
        return summary
    base = baseline_runner(store.dir(key))
    base_path = store.dir(key) / "summary.json"
    if base["interrupted"]:
        exp.write_json(base_path, base)
        summary["interrupted"] = True  # without its baseline the run is not finished
        return summary
    exp.write_json(base_path, base)
    return {**summary, **exp.speedup_fields(summary, base, f"ran: {shown(store.dir(key))}", key, base_path)}


# ---- the run -----------------------------------------------------------------------------------
def sweep_info(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {"method": method_name(hc.runtime.choices, cfg),
            "sweep_name": str(cfg.sweep_name) if multirun else None,
            "job_num": hc.job.num if multirun else None, "overrides": list(hc.overrides.task)}


def method_name(choices, cfg: DictConfig) -> str:
    """The drafter config chosen (ngram_tree, eagle ...), with '+<verifier>' when not lossless."""
    name = str(choices.get("drafter") or "drafter")
    verifier = str(choices.get("verifier") or "lossless")
    return name if verifier == "lossless" else f"{name}+{verifier}"


def make_logger(cfg: DictConfig, info: dict):
    """logger.group defaults to the sweep name, so that W&B groups a sweep's runs."""
    if info["sweep_name"] and "group" in cfg.logger and cfg.logger.group is None:
        return instantiate(cfg.logger, group=info["sweep_name"])
    return instantiate(cfg.logger)


def reuse(run_dir: Path, summary: dict) -> dict:
    """A finished run of the same config: skipped, and its summary says so."""
    summary["reused"] = True
    summary.setdefault("reused_at", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
    exp.write_json(run_dir / "summary.json", summary)
    log.info(f"skipped: {run_dir} already holds a finished run of this config (resume=false re-runs it)")
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@errors.reported
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with errors.boundary():
        errors.check_required(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.resume and (done := exp.finished_run(run_dir, resolved)) is not None:
        return reuse(run_dir, done)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    with errors.boundary():  # every setting is checked here, the cheap ones before any weights load
        params = sampling_params(cfg)
        serve_config(cfg)
        speedup_mode(cfg)
        engine_cfg = engine_config(cfg)
        info = sweep_info(cfg)
        logger = make_logger(cfg, info)
        drafter, verifier, policy = build_drafter(cfg), build_verifier(cfg), build_policy(cfg)
        prompts = load_prompts(cfg)
        loaded = load_target(cfg, engine_cfg)
        engine = make_engine(loaded, drafter, verifier, engine_cfg, policy)
    log.info(f"run {info['method']} (T={params.temperature:g}): {len(prompts)} prompts of data={cfg.data.name}, "
             f"model {loaded.source}, {engine.device} {str(engine.dtype).replace('torch.', '')} -> {run_dir}")
    logger.start(resolved, run_dir)
    result = serve(engine, prompts, params, cfg, run_dir, logger, progress=cfg.progress,
                   desc=f"{info['method']} requests")
    summary = {**summarize(engine, result, int(cfg.seed), role="run"), **info, "reused": False}
    device, dtype = summary["device"], summary["dtype"]
    del engine
    gc.collect()
    key = exp.settings_key(exp.baseline_settings(resolved, device, dtype))
    store = baseline_store(cfg, run_dir)
    if not result.interrupted:
        summary = attach_speedup(summary, cfg, store, key, run_dir, lambda d: run_baseline(
            cfg, resolved, loaded, verifier, engine_cfg, prompts, params, d, key))
    summary["config"] = resolved
    exp.write_json(run_dir / "summary.json", summary)
    if summary["drafter"] == "none" and summary["lossless"] and not summary["interrupted"]:
        store.register(key, summary, run_dir)
    logger.log_summary(summary)
    logger.finish()
    print_table(summary)
    log.info(f"summary: {run_dir / 'summary.json'}")
    if summary["interrupted"]:
        log.info(f"interrupted: {summary['num_requests']} of {summary['num_requests_planned']} requests "
                 f"finished; their outputs and this summary are kept")
        raise SystemExit(130)
    return summary


if __name__ == "__main__":
    errors.cli(main, "specdec.run")
