"""Hydra entry point for drafter training: compose -> load the target -> data -> train -> export
-> eval (drafters/train/pipeline.py does the work).

    python -m specdec.train train/method=eagle                      # EAGLE-2 head for the default target
    python -m specdec.train train/method=eagle3 work_dir=runs/e3 train.steps=3000
    python -m specdec.train train/method=medusa data.dir=runs/data  # reuse shared data

Writes ``summary.json`` and ``train.log`` into the work dir (``outputs/train/<date>/<time>-train-<kind>/``
unless ``work_dir`` says otherwise), beside ``data/`` (self-distillation shards), ``checkpoint/``
and ``export/`` (the weights in the official format and a model card).

Data-parallel training: launch the same command under torchrun,

    python -m torch.distributed.run --nproc-per-node 2 -m specdec.train train/method=eagle

(NCCL and ``cuda:LOCAL_RANK`` on GPUs, gloo on CPU; ``train.batch_size`` stays the global batch;
``train.dist_timeout_s`` bounds how long a rank waits for a dead or stalled one). Every rank
uses rank 0's work dir; rank 0 writes everything in it (ranks > 0 add only ``train.rank<R>.log``),
Hydra's ``.hydra/`` and W&B included. See drafters/train/distributed.py.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import shlex
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from specdec import errors

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("specdec.train")


def build_plan(cfg: DictConfig):
    """The Plan of the composed config; every setting is checked here, before the target loads."""
    from specdec.data import load_prompt_file
    from specdec.drafters.train.pipeline import EvalConfig, Plan
    from specdec.drafters.train.prompts import prompt_folder
    from specdec.drafters.train.selfdistill import DataConfig
    from specdec.drafters.train.trainer import TrainConfig
    from specdec.engine.config import EngineConfig

    errors.check_required(cfg)
    c = OmegaConf.to_container(cfg, resolve=True)
    data = {k: v for k, v in c["data"].items() if k != "dir"}
    for cls, section in ((DataConfig, "data"), (TrainConfig, "train"), (EngineConfig, "engine"),
                         (EvalConfig, "eval")):
        errors.check_types(cls, {k: v for k, v in c[section].items() if k != "dir"}, section)
    prompt_folder(data["prompts_dir"])  # a folder that is not there fails now, not after the load
    if c["eval"]["prompts_path"] and "eval" in c["stages"]:
        load_prompt_file(c["eval"]["prompts_path"])
    drafter_options = dict(c["method"].get("drafter") or {})
    if c["method"]["kind"] == "medusa" and not drafter_options.get("tree_choices"):
        drafter_options["tree_choices"] = OmegaConf.load(REPO / "configs/drafter/medusa.yaml").tree_choices
    return Plan(kind=c["method"]["kind"], work_dir=Path(c["work_dir"]), options=dict(c["method"].get("options") or {}),
                drafter_options=drafter_options, stages=tuple(c["stages"]), data=DataConfig(**data, seed=c["seed"]),
                train=TrainConfig(**c["train"], seed=c["seed"]), engine=EngineConfig(**c["engine"]),
                eval=EvalConfig(**c["eval"]), data_dir=Path(c["data"]["dir"]),
                export_dir=Path(c["export"]["dir"]), export_dtype=c["export"]["dtype"],
                command="python -m specdec.train " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
@errors.reported
def main(cfg: DictConfig) -> dict:
    from specdec.drafters.train import distributed

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    with errors.boundary():
        plan = build_plan(cfg)
        ctx = distributed.init(plan.train.dist_timeout_s, plan.engine.torch_device())
    if ctx is None:
        return _train(cfg, plan, None)
    try:
        summary = _train(cfg, plan, ctx)
    except BaseException as err:
        log.error(f"[specdec.train] {ctx.label()} failed: {type(err).__name__}: {err}")
        raise  # torchrun stops the other ranks and names this one; no teardown of a broken group
    distributed.shutdown(ctx)
    return summary


def _train(cfg: DictConfig, plan, ctx) -> dict:
    from specdec.drafters.train import distributed
    from specdec.drafters.train.pipeline import run
    from specdec.loggers import NullLogger
    from specdec.models.loader import load_model

    first = ctx is None or ctx.main  # the process that writes (rank 0, or the only one)
    with errors.boundary():  # bad settings fail here, before or while the target loads
        if ctx is not None:
            plan = _rank_plan(cfg, plan, ctx)
        plan.work_dir.mkdir(parents=True, exist_ok=True)
        device = plan.engine.torch_device()
        loaded = load_model(str(cfg.model.path), dtype=plan.engine.torch_dtype(device), device=device)
        logger = instantiate(cfg.logger) if first else NullLogger()
    logger.start(OmegaConf.to_container(cfg, resolve=True), plan.work_dir)
    summary = run(loaded, plan, logger, log=log.info, dist=ctx)
    logger.finish()
    if not first:
        return summary
    (plan.work_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    ev = summary.get("eval", {})
    if ev:
        log.info(f"tau (accepted + 1) = {ev['mean_accepted_length']:.3f} on {ev['num_prompts']} prompts; "
                 f"greedy outputs equal to the target's: {ev.get('greedy_equal', 'n/a')}")
    if "export" in plan.stages:
        log.info(f"drafter: {plan.export_dir} (use it: python -m specdec.run "
                 f"drafter={DRAFTER_CONFIG[plan.kind]} drafter.path={plan.export_dir})")
    log.info(f"summary: {plan.work_dir / 'summary.json'}")
    return summary


def _rank_plan(cfg: DictConfig, plan, ctx):
    """This rank's plan: rank 0's work dir (the default one is named by the time each rank
    started), its own device (cuda:LOCAL_RANK on GPUs), and a global batch that splits evenly."""
    from specdec.drafters.train import distributed

    distributed.check_split(ctx, plan.train.batch_size)
    work_dir = distributed.broadcast(ctx, str(plan.work_dir) if ctx.main else None)
    if not ctx.main:
        cfg.work_dir = work_dir  # data.dir, export.dir follow it unless set apart
        plan = build_plan(cfg)
        plan.work_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(plan.work_dir / f"train.rank{ctx.rank}.log", delay=True)
        handler.setFormatter(logging.Formatter(f"[%(asctime)s][rank {ctx.rank}][%(levelname)s] %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger("specdec.errors").addHandler(handler)
    device = distributed.device_for(plan.engine.torch_device(), ctx.local_rank)
    return dataclasses.replace(plan, engine=dataclasses.replace(plan.engine, device=str(device)))


# the run config that loads each trained kind (configs/drafter/)
DRAFTER_CONFIG = {"eagle": "eagle", "eagle3": "eagle3", "medusa": "medusa", "draft": "small_draft"}


def _launch() -> None:
    """The program; under torchrun ranks > 0 keep Hydra's files out of the run (rank 0 writes the
    work dir's .hydra/ and train.log; they log to the terminal and train.rank<R>.log), and any
    rank's uncaught error reaches torchrun's failure summary (``record``)."""
    from specdec.drafters.train import distributed

    if not distributed.launched():
        errors.cli(main, "specdec.train")
        return
    from torch.distributed.elastic.multiprocessing.errors import record

    if distributed.env_rank() != 0:
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=specdec_rank"]
    record(lambda: errors.cli(main, "specdec.train"))()


if __name__ == "__main__":
    _launch()
