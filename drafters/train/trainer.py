"""The training loop: AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast on
CUDA, metrics to a specdec logger (W&B like runs), resumable checkpoints, and a wall-clock limit
that saves and stops cleanly (so one GPU call of bounded length can resume the next). With
``fit_to_time`` the schedule itself is fitted to that limit: after a few timed steps the step
count shrinks to what the remaining time allows, so the cosine decays to its end instead of
being cut at a high learning rate; it is fitted again at each doubling of the steps run, while
less than half of the schedule has run, as the pace settles.

Data-parallel (``dist``, a `distributed.DistContext`: torchrun): the head is wrapped in DDP,
each rank trains on its slice of every global batch, and the loss, metrics and clock the loop
acts on are the ranks' common ones (`distributed.StepStats`), so every rank logs, fits, stops and
checkpoints at the same step; rank 0 alone writes the checkpoints and logs (distributed.py)."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from . import checkpoint, distributed
from .batches import BatchSource

log = logging.getLogger("specdec.train")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    max_len: int = 1024
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 0.5
    log_every: int = 10
    save_every: int = 200
    save_optimizer: bool = True  # False keeps checkpoints small (weights only; AdamW restarts)
    checkpoint_mb: float = 1024.0  # largest checkpoint file: pieces that fit a transfer limit (e.g. 15)
    time_limit_s: Optional[float] = None  # stop and checkpoint after this much training time
    fit_to_time: bool = False  # shrink ``steps`` to what time_limit_s allows at the measured pace
    dist_timeout_s: float = 600.0  # torchrun: a collective waiting longer ends the run (a rank died or stalled)
    data_wait_s: float = 86400.0  # torchrun: how long ranks > 0 wait for rank 0's self-distillation data
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fit_to_time and not self.time_limit_s:
            raise ValueError("train.fit_to_time needs train.time_limit_s (the seconds to fit the "
                             "schedule into); set both or neither")
        for key in ("dist_timeout_s", "data_wait_s"):
            if getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be > 0 seconds; got {getattr(self, key)}")
        if self.checkpoint_mb <= 0:
            raise ValueError(f"train.checkpoint_mb must be > 0 (MB); got {self.checkpoint_mb}")


FIT_SKIP, FIT_TIMED = 10, 40  # steps left untimed (compilation, allocator warm-up), then timed
# Then fitted again at 2x, 4x, ... (FIT_SKIP + FIT_TIMED) steps, from the pace since the last fit,
# while the run is in the first half of its schedule: on an H200 (2026-12-04) a head's step took
# 165 ms over steps 10-50 and 70-80 ms from step ~1000 on (every new batch shape tunes kernels
# and grows the allocator's pools), so one early fit ended those runs at half their time.
FIT_MARGIN = 0.95  # of the remaining time: checkpoints and the last step's spread


def fitted_steps(cfg: TrainConfig, step: int, elapsed_s: float, per_step_s: float) -> int:
    """The schedule length that ends inside ``cfg.time_limit_s`` at ``per_step_s`` seconds a step,
    never longer than ``cfg.steps`` nor shorter than the steps already run."""
    remaining = max(cfg.time_limit_s - elapsed_s, 0.0) * FIT_MARGIN
    return max(step, min(cfg.steps, step + int(remaining / max(per_step_s, 1e-9))))


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


class Trainer:
    def __init__(self, objective, source: BatchSource, cfg: TrainConfig, ckpt_dir: Path, logger, device,
                 dist: Optional[distributed.DistContext] = None) -> None:
        self.objective, self.source, self.cfg, self.ckpt_dir = objective, source, cfg, ckpt_dir
        self.logger, self.device, self.dist = logger, torch.device(device), dist
        self.main = dist is None or dist.main  # writes checkpoints
        self._asked = cfg.steps
        self.module = objective.module.to(self.device).float().train().requires_grad_(True)
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                     weight_decay=cfg.weight_decay)
        self.stats = distributed.StepStats(dist)

    def run(self) -> dict:
        step = checkpoint.load(self.ckpt_dir, self.module, self.opt) or 0  # every rank, the same one
        self.loss_fn = distributed.wrap(self.objective, self.dist, self.device)
        if self.dist is not None:  # independent input noise per rank (uniform_noise draws per row)
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.dist.rank + 1)
        saved = checkpoint.info(self.ckpt_dir) if step else {}
        fitted = saved.get("fitted_steps")
        self._tokens = int(saved.get("tokens", 0))  # this round's training tokens, over its runs
        self._round = saved.get("round") or uuid.uuid4().hex[:12]  # names the round on its curve
        if self.cfg.fit_to_time and fitted:  # a resumed fitted run keeps its schedule
            self.cfg = dataclasses.replace(self.cfg, steps=int(fitted))
        self._fitted = fitted if self.cfg.fit_to_time else None
        self._fit_at = FIT_SKIP + FIT_TIMED if self.cfg.fit_to_time and not fitted else None
        cfg = self.cfg
        start_step, start, history, tokens = step, time.perf_counter(), [], 0.0
        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {self.objective.kind}", unit="step",
                   disable=not self.main)
        while step < cfg.steps:
            distributed.inject_fault(self.dist, step)
            loss, metrics = distributed.collective_step(self.dist, step, lambda: self._step(step))
            # the ranks' mean loss and metrics, the slowest rank's clock: the same on every rank
            loss, metrics, now = self.stats.reduce(step, loss, metrics, time.perf_counter() - start)
            step += 1
            history.append(loss)
            tokens += metrics["tokens"]
            self._tokens += int(metrics["tokens"])
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                bar.set_postfix(loss=f"{loss:.4f}")
                self.logger.log_step(step, {"loss": loss, "lr": lr_at(step - 1, cfg), **metrics})
            if self._fit_at is not None:
                self._fit(step - start_step, step, now)
                cfg = self.cfg
                bar.total = cfg.steps
            out_of_time = cfg.time_limit_s is not None and now > cfg.time_limit_s
            if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
                self.save(step)
            if out_of_time:
                break
        bar.close()
        train_s = time.perf_counter() - start
        return {"steps": step, "steps_this_run": step - start_step, "finished": step >= cfg.steps,
                "schedule_steps": cfg.steps, "train_s": train_s, "loss_history": history,
                "world_size": self.dist.world if self.dist is not None else 1, "tokens": int(tokens),
                "round_tokens": self._tokens,  # this checkpoint's, over its runs
                "tokens_per_s": tokens / train_s if train_s > 0 else None,
                "loss_first": history[0] if history else None, "loss_last": history[-1] if history else None}

    def _fit(self, done: int, step: int, elapsed_s: float) -> None:
        """Time this run's steps from FIT_SKIP on; at ``done == self._fit_at`` fit the schedule to
        the pace since the last fit and double ``_fit_at``, until half of the schedule has run."""
        if done == FIT_SKIP:
            self._fit_from = (done, elapsed_s)
        if done != self._fit_at:
            return
        done_before, elapsed_before = self._fit_from
        pace = (elapsed_s - elapsed_before) / (done - done_before)
        asked = dataclasses.replace(self.cfg, steps=self._asked)  # the cap is what was asked
        self.cfg = dataclasses.replace(self.cfg, steps=fitted_steps(asked, step, elapsed_s, pace))
        self._fitted, self._fit_from = self.cfg.steps, (done, elapsed_s)
        self._fit_at = 2 * done if 2 * step < self.cfg.steps else None
        log.info(f"[specdec.train] fit_to_time at step {step}: {pace * 1e3:.1f} ms a step -> schedule of "
                 f"{self.cfg.steps} steps (train.steps {self._asked}) in {self.cfg.time_limit_s:.0f} s")

    def _step(self, step: int) -> tuple[float, dict]:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, self.cfg)
        batch = self.source.batch(step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss, metrics = self.loss_fn(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip))
        self.opt.step()
        metrics["tokens"] = float(batch.valid.sum())  # this rank's real tokens (summed over ranks)
        return float(loss.detach()), metrics

    def save(self, step: int) -> None:
        if not self.main:
            return
        info = {"kind": self.objective.kind, "tokens": self._tokens, "round": self._round}
        if getattr(self, "_fitted", None):
            info["fitted_steps"] = self._fitted
        checkpoint.save(self.ckpt_dir, self.module, self.opt if self.cfg.save_optimizer else None, step, info,
                        max_bytes=int(self.cfg.checkpoint_mb * 2**20))
        log.info(f"[specdec.train] checkpoint: step {step} in {self.ckpt_dir}")
