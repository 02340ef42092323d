"""The training pipeline as plain functions over dataclasses (specdec/train.py is its Hydra
front): data -> train -> export -> eval, each stage resumable or skippable.

With ``dist`` (torchrun, distributed.py) rank 0 runs the data stage while the other ranks wait
for it, every rank trains on its slice of each global batch, and rank 0 alone exports,
evaluates and writes the card; the other ranks return after training (their summary holds only
the training result)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from specdec.data import default_prompts, load_prompt_file, resolve_path, select
from specdec.drafters import formats
from specdec.engine.config import EngineConfig

from . import check, checkpoint, curve, distributed
from .batches import BatchSource
from .card import write_card
from .evaluate import baseline_outputs, evaluate
from .objective import make_objective
from .selfdistill import DataConfig, generate
from .shards import Manifest, read_shards
from .trainer import TrainConfig, Trainer

STAGES = ("data", "train", "export", "eval")


@dataclass
class EvalConfig:
    prompts_path: Optional[str] = None  # MT-bench-format jsonl or builtin:mt_bench.jsonl; None: the default prompts
    num_prompts: Optional[int] = None
    max_new_tokens: int = 256
    compare: bool = True  # also run the target alone and count outputs equal to it
    check: bool = True  # also measure tau on the check set the test suite holds the head to (check.py)


@dataclass
class Plan:
    kind: str  # eagle | eagle3 | medusa | draft
    work_dir: Path
    options: dict = field(default_factory=dict)  # the objective's (configs/train/method/<kind>.yaml)
    drafter_options: dict = field(default_factory=dict)  # the drafter's at evaluation
    stages: tuple[str, ...] = STAGES
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data_dir: Optional[Path] = None  # default work_dir/data (point several methods at one)
    export_dir: Optional[Path] = None  # default work_dir/export
    export_dtype: str = "bfloat16"
    command: str = ""

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stages {bad}; stages are {list(STAGES)}")
        self.work_dir = Path(self.work_dir)
        self.data_dir = Path(self.data_dir or self.work_dir / "data")
        self.export_dir = Path(self.export_dir or self.work_dir / "export")

    @property
    def ckpt_dir(self) -> Path:
        return self.work_dir / "checkpoint"


def run(loaded, plan: Plan, logger=None, log=print, dist: Optional[distributed.DistContext] = None) -> dict:
    """Run the plan's stages with ``loaded`` (a `LoadedModel`: the target); returns the summary.
    ``dist``: this process's rank of a data-parallel run (None: one process)."""
    from specdec.loggers import NullLogger

    logger = logger or NullLogger()
    main = dist is None or dist.main
    summary: dict = {"kind": plan.kind, "target": loaded.source}
    if "data" in plan.stages:
        if main:
            generate(loaded, plan.data_dir, _data_cfg(plan, loaded), plan.engine, log)
        if dist is not None:
            distributed.wait_for_main(dist, plan.train.data_wait_s, "self-distillation data")
    objective, examples = _objective(loaded, plan)
    device = plan.engine.torch_device()
    if "train" in plan.stages:
        distributed.check_split(dist, plan.train.batch_size, len(examples))
        stored = (Manifest.load(plan.data_dir).info.get("config") or {}).get("layers") or ()
        part = (dist.rank, dist.world) if dist is not None else (0, 1)
        source = BatchSource(examples, plan.train.batch_size, plan.train.max_len, plan.train.seed,
                             loaded.model, objective.layers, device, stored_layers=tuple(stored), part=part)
        result = Trainer(objective, source, plan.train, plan.ckpt_dir, logger, device, dist).run()
        summary["train"] = {k: v for k, v in result.items() if k != "loss_history"}
        summary["loss_history"] = result["loss_history"]
    if not main:  # export, evaluation and the card are rank 0's
        return summary
    if "train" not in plan.stages and checkpoint.load(plan.ckpt_dir, objective.module, None) is None \
            and plan.stages != ("data",):
        raise FileNotFoundError(f"no training checkpoint in {plan.ckpt_dir}: run the train stage first")
    if "export" in plan.stages:
        objective.module.to(device)
        files = objective.export(plan.export_dir, getattr(torch, plan.export_dtype))
        summary["export"] = [str(f) for f in files]
    if "eval" in plan.stages:
        summary["eval"] = _evaluate(loaded, plan, objective)
        logger.log_summary({f"eval_{k}": v for k, v in summary["eval"].items()})
    if "export" in plan.stages:
        _card(plan, summary, loaded, str(device))
    return summary


def _data_cfg(plan: Plan, loaded) -> DataConfig:
    """EAGLE-3 data that stores hidden states also stores its three feature layers."""
    if plan.kind != "eagle3" or not plan.data.store_hidden:
        return plan.data
    from specdec.drafters.eagle.format import default_feature_layers

    layers = plan.options.get("feature_layers") or default_feature_layers(loaded.model.config.num_hidden_layers)
    return dataclasses.replace(plan.data, layers=tuple(int(i) for i in layers))


def _objective(loaded, plan: Plan):
    examples = read_shards(plan.data_dir)
    options = dict(plan.options)
    if plan.kind in ("eagle", "eagle3"):  # the draft vocabulary keeps the stop tokens
        options.setdefault("always", list(loaded.stop_token_ids))
    if plan.kind == "medusa":
        options.setdefault("base_model", loaded.source)
    return make_objective(plan.kind, loaded.model, examples, **options), examples


def eval_prompts(cfg: EvalConfig):
    """(prompts, their name for the model card): the file ``prompts_path`` names (a missing one is
    an error), or the built-in default prompts when it is None."""
    path = cfg.prompts_path
    prompts = load_prompt_file(path) if path else default_prompts()
    return select(prompts, cfg.num_prompts), (resolve_path(path).name if path else "built-in prompts")


def _evaluate(loaded, plan: Plan, objective) -> dict:
    prompts, name = eval_prompts(plan.eval)
    base = None
    if plan.eval.compare:
        base, base_wall = baseline_outputs(loaded, prompts, plan.engine, plan.eval.max_new_tokens)
    drafter = objective.drafter(str(plan.export_dir), **plan.drafter_options)
    out = evaluate(loaded, drafter, prompts, plan.engine, plan.eval.max_new_tokens, base)
    out["prompts"] = name
    if base is not None:
        out["baseline_wall_s"] = base_wall
    if plan.eval.check:
        drafter = objective.drafter(str(plan.export_dir), **plan.drafter_options)
        out["check"] = check.measure(loaded, drafter, plan.engine)
        check.write(plan.export_dir, out["check"])
    return out


def _card(plan: Plan, summary: dict, loaded, device: str) -> None:
    manifest = Manifest.load(plan.data_dir)
    data = {}
    if manifest:
        src = {**manifest.info.get("sources", {}),
               **{f"second turns, {k}": v for k, v in manifest.info.get("second turns", {}).items() if v}}
        data = {"examples": manifest.num_examples, "tokens": manifest.num_tokens,
                "sources": ", ".join(f"{k}: {v}" for k, v in src.items())}
    world = summary.get("train", {}).get("world_size", 1)
    train = {**summary.get("train", {}), "batch_size": plan.train.batch_size, "lr": plan.train.lr,
             "device": device if world == 1 else f"{world} ranks ({device} on rank 0; data-parallel)"}
    train.setdefault("steps", plan.train.steps)
    train.setdefault("train_s", float("nan"))
    points = _curve(plan, summary.get("eval", {}))
    write_card(plan.export_dir, plan.kind, loaded.source, data, train, summary.get("eval", {}), plan.command,
               plan.options.get("init_from"), points)


def _curve(plan: Plan, evaluation: dict) -> list[dict]:
    """The exported head's learning curve: the curve of the head this round went on from, then
    this round's point (its tokens over every run of its checkpoint). A point of this round
    already there (exported again, or into the folder it started from) is replaced, not added."""
    init = plan.options.get("init_from")
    prior = curve.load(formats.expand_default(str(init), plan.kind)) if init else []
    meta = checkpoint.info(plan.ckpt_dir)
    points = curve.extend([p for p in prior if p.get("round") != meta.get("round")], meta.get("tokens", 0),
                          meta.get("step", 0), evaluation, round_id=meta.get("round"))
    curve.write(plan.export_dir, points)
    return points
