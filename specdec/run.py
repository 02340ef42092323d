"""Hydra entry point: compose -> build -> serve -> baseline -> log.

    python -m specdec.run                                   # embedded default model, drafter=ngram
    python -m specdec.run drafter=ngram verifier.temperature=1 data=mt_bench data.num_prompts=20
    python -m specdec.run -m drafter=none,ngram verifier.temperature=0,1   # a sweep
    python -m specdec.run -m experiment=drafter_table       # a paper preset (configs/experiment/)

Writes ``summary.json``, ``outputs.jsonl`` (streamed as requests finish) and ``run.log`` (the run's
log, configs/hydra/job_logging/specdec.yaml) into Hydra's run directory and prints a short table. A
mistake in the command ends with one ``error: ...`` line and exit code 2 (specdec/errors.py).

The speedup is over the autoregressive baseline of the same model, data, engine, serving and
sampling settings, timed in turns with the run on the same loaded target (its outputs and summary
in ``<run dir>/baseline/``), or a stored one reused after a check (specdec/speedup.py says which
and how). A job whose folder holds a finished run of the same config is skipped, and no run writes
into another's folder; a run that raises leaves ``FAILED`` there (specdec/rundirs.py).
"""
from __future__ import annotations

import functools
import logging
import os
import random
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from specdec import baseline, errors, rundirs, speedup
from specdec import data as data_mod
from specdec import experiment as exp
from specdec.clock import OwnClock
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
    """The target on the engine's device; with ``engine.tensor_parallel_size`` N > 1 rank 0's
    share of it, the other ranks started (under torchrun, ranks above 0 serve from here)."""
    from specdec.models.loader import load_model

    device = engine_cfg.torch_device()
    load = functools.partial(load_model, str(cfg.model.path), engine_cfg.torch_dtype(device))
    if engine_cfg.tensor_parallel_size == 1:
        return load(device)
    from specdec.engine import tensor_parallel

    log.info(f"tensor parallelism: the target on {engine_cfg.tensor_parallel_size} ranks")
    return tensor_parallel.start(engine_cfg.tensor_parallel_size, load, device, engine_cfg.tp_timeout_s)


def make_engine(loaded, drafter, verifier, engine_cfg: EngineConfig, policy=None) -> Engine:
    engine = Engine(loaded.model, drafter, verifier, engine_cfg, tokenizer=loaded.tokenizer,
                    stop_token_ids=loaded.stop_token_ids, max_model_len=loaded.max_model_len,
                    policy=policy, ranks=loaded.ranks)
    t = time.perf_counter()
    n = engine.warm_up()  # graphs, and the adaptive policy's step costs where it times them
    if n:
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


def make_server(engine: Engine, cfg: DictConfig, params: SamplingParams, out_dir: Path, desc: str,
                logger=None, clock=None, position: int = 0) -> Server:
    """A server that writes outputs.jsonl into ``out_dir`` as requests finish (``server.writer``)
    and, with a logger, per-step metrics. ``desc`` labels the progress bar."""
    writer = OutputWriter(out_dir / "outputs.jsonl", engine.tokenizer)

    def on_step(e: Engine) -> None:
        if logger is not None and e.stats.steps % cfg.log_every == 0:
            logger.log_step(e.stats.steps, {"step_ms": 1000 * e.stats.step_times[-1],
                                            "running": len(e.scheduler.running)})

    decode = (lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=True)) if engine.tokenizer else str
    server = Server(engine, renderer(cfg, engine.tokenizer), decode, params, serve_config(cfg),
                    on_finish=writer.write, on_step=on_step, progress=cfg.progress, desc=desc, clock=clock,
                    position=position)
    server.writer = writer
    return server


def print_table(summary: dict) -> None:
    rows = [("drafter", summary["drafter"]), ("requests", summary["num_requests"]),
            ("output tokens", summary["output_tokens"]), ("wall s", f"{summary['wall_s']:.2f}"),
            ("tokens/s", f"{summary['tokens_per_s']:.1f}"),
            ("tau (accepted+1)", f"{summary['mean_accepted_length']:.2f}"),
            ("accepted draft tokens", f"{summary['mean_accepted_draft_tokens']:.2f}"),
            ("TTFT p50 ms", f"{summary['ttft_ms_p50']:.1f}"), ("ITL p50 ms", f"{summary['itl_ms_p50']:.1f}"),
            ("draft time share", f"{summary['draft_time_share']:.2f}")]
    base = summary.get("baseline") or {}
    if summary.get("speedup") is not None:
        value = f"{summary['speedup']:.2f}x ({base['method']}; mean question speed, as Spec-Bench)"
        rows.append(("speedup vs autoregressive", value))
        rows.append(("baseline", base["why"]))
    elif base.get("why"):
        rows.append(("speedup vs autoregressive", f"none: {base['why']}"))
    width = max(len(k) for k, _ in rows)
    log.info("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


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


def skipped(finished: Path) -> dict:
    """A finished run of the same config: skipped, its folder left as it is."""
    summary = exp.read_json(finished / "summary.json")
    log.info(f"skipped: {finished} already holds a finished run of this config (resume=false runs it again "
             f"in a new folder)")
    return {**summary, "reused": True}


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@errors.reported
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if (finished := rundirs.choice(run_dir).skip_of) is not None:
        return skipped(finished)
    rundirs.say(run_dir)
    state: dict = {}
    with rundirs.failures_marked(run_dir, list(HydraConfig.get().overrides.task), lambda: state.get("config")):
        return run(cfg, run_dir, state)


def run(cfg: DictConfig, run_dir: Path, state: dict) -> dict:
    """The run: build, serve with its baseline, write summary.json (``state['config']``: the
    resolved config, once it resolves, for a FAILED record)."""
    with errors.boundary():
        errors.check_required(cfg)
        resolved = state["config"] = OmegaConf.to_container(cfg, resolve=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    with errors.boundary():  # every setting is checked here, the cheap ones before any weights load
        params = sampling_params(cfg)
        serve_cfg = serve_config(cfg)
        mode = speedup.check_mode(str(cfg.speedup.baseline))
        engine_cfg = engine_config(cfg)
        info = sweep_info(cfg)
        logger = make_logger(cfg, info)
        drafter, verifier, policy = build_drafter(cfg), build_verifier(cfg), build_policy(cfg)
        prompts = load_prompts(cfg)
        loaded = load_target(cfg, engine_cfg)
        engine = make_engine(loaded, drafter, verifier, engine_cfg, policy)
    device, dtype = str(engine.device), str(engine.dtype).replace("torch.", "")
    log.info(f"run {info['method']} (T={params.temperature:g}): {len(prompts)} prompts of data={cfg.data.name}, "
             f"model {loaded.source}, {device} {dtype} -> {run_dir}")
    key = exp.settings_key(exp.baseline_settings(resolved, device, dtype))
    store = baseline.store_for(cfg.speedup.baseline_dir, run_dir)
    is_baseline = drafter.name == "none" and getattr(verifier, "lossless", True)
    plan = speedup.plan(mode, is_baseline, store, key, serve_cfg, [p.id for p in prompts],
                        float(cfg.speedup.get("check_fraction", speedup.CHECK_FRACTION)),
                        float(cfg.speedup.get("check_tolerance", speedup.CHECK_TOLERANCE)))
    if plan.method in ("interleaved", "check"):
        log.info(f"speedup: the autoregressive baseline (drafter=none) runs in turns with this run "
                 f"({'a sample, to check ' + plan.why if plan.method == 'check' else plan.why})")
    logger.start(resolved, run_dir)
    base_dir = run_dir / "baseline"

    def make_base() -> Server:
        in_flight = min(engine_cfg.max_num_seqs, serve_cfg.concurrency or len(prompts), len(prompts))
        longest = baseline.longest_sequence(renderer(cfg, loaded.tokenizer), prompts, serve_cfg.num_turns,
                                            int(cfg.max_new_tokens))
        base = baseline.make_engine(make_engine, loaded, engine, verifier, engine_cfg, in_flight, longest)
        return make_server(base, cfg, params, base_dir, "baseline (drafter=none) requests", clock=OwnClock(),
                           position=1)

    run_server = make_server(engine, cfg, params, run_dir, f"{info['method']} requests", logger,
                             clock=OwnClock() if plan.method in ("interleaved", "check") else None)
    result, base_server, base_result, measured = baseline.measure(plan, run_server, make_base, prompts)
    summary = {**summarize(engine, result, int(cfg.seed), role="run"), **info, "reused": False}
    base = None
    if base_result is not None:
        full = not measured.get("check", {}).get("passed")
        base = baseline.summary(base_server.engine, base_result, int(cfg.seed), resolved, verifier, key,
                                "baseline" if full else "baseline_check", base_dir)
        exp.write_json(base_dir / "summary.json", base)
        if full and not base["interrupted"] and speedup.one_at_a_time(serve_cfg):
            store.register(key, base, run_dir, base_dir)
    summary = baseline.attach_speedup(summary, plan, base, measured, key, run_dir)
    summary["config"] = resolved
    exp.write_json(run_dir / "summary.json", summary)
    if is_baseline and not summary["interrupted"]:
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


def serve_rank(argv: list[str]) -> None:
    """A torchrun rank above 0 (`torchrun --nproc-per-node N -m specdec.run ...
    engine.tensor_parallel_size=N`): the run's config composed from the same command line, its
    share of the target loaded, then rank 0's steps served until rank 0 ends; no run folder, log,
    logger or data of its own (those are rank 0's). Exits the process."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "--", "-"))]
    with initialize_config_dir(str(Path(__file__).resolve().parent.parent / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    engine_cfg = engine_config(cfg)
    if engine_cfg.tensor_parallel_size == 1:
        raise SystemExit("error: torchrun started several processes but engine.tensor_parallel_size is 1; "
                         "set engine.tensor_parallel_size to torchrun's --nproc-per-node")
    load_target(cfg, engine_cfg)  # a rank above 0 serves in there and exits


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0 and "WORLD_SIZE" in os.environ:
        serve_rank(sys.argv[1:])
    errors.cli(main, "specdec.run")
