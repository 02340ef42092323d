"""Data-parallel training under torchrun: the process group, the DDP wrapper, the per-step
statistics every rank agrees on, and errors that name the rank that failed.

``python -m torch.distributed.run --nproc-per-node N -m specdec.train ...`` sets RANK, WORLD_SIZE
and LOCAL_RANK; `init` then joins a process group (NCCL when the run's device is CUDA, each rank on
``cuda:LOCAL_RANK``; gloo on CPU) whose collectives time out after ``train.dist_timeout_s``, plus
a gloo side group for control messages (the work dir, "the data is ready", finding a rank that no
longer answers). Without torchrun `init` returns None and training runs as one process, as before.

The split:
- ``train.batch_size`` stays the *global* batch: step s's examples are the ones a single process
  would take (`BatchSource.indices`), cut into WORLD_SIZE equal contiguous slices, rank r taking
  slice r. So the learning rate, the schedule, resume and a checkpoint mean the same at any
  world size. ``batch_size`` must be a multiple of the world size.
- DDP averages the ranks' gradients: the mean of the ranks' losses, each the objective's masked
  mean over its own slice. That equals the single-process loss exactly when the slices hold equal
  numbers of counted tokens, and is the usual DDP approximation otherwise.
- Every rank reports its loss, metrics and elapsed time once a step (`StepStats`, one all-gather):
  the logged loss is the ranks' mean, and the time checks (``time_limit_s``, ``fit_to_time``) use
  the slowest rank's clock, so all ranks stop, fit and checkpoint at the same step.
- Rank 0 alone writes checkpoints, logs, W&B, the export, the card and summary.json, and runs the
  data stage (self-distillation) and the evaluation; the others wait for the data on the side
  group (up to ``train.data_wait_s``) and end after training. Every rank resumes from the same
  checkpoint (weights, AdamW state, step, fitted schedule).

Failures: a rank that raises logs ``rank R of N failed: ...`` and exits non-zero; torchrun then
stops the others and names the rank in its summary. A rank that stalls leaves the others blocked
in a collective until ``dist_timeout_s``; they then ask the side group which ranks still answer
(a gloo monitored barrier) and raise `RankFailure` naming the missing ones.
"""
from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("specdec.train")

FAULT_ENV = "SPECDEC_TRAIN_FAULT"  # tests only: "RANK:STEP:raise|stall" injects a failure
PROBE_S = 10.0  # (at most dist_timeout_s) how long the ranks that noticed a failure
# wait for each other to find the missing ones


class RankFailure(RuntimeError):
    """Another rank died or stalled; the message names it where it could be found."""


def launched() -> bool:
    """Is this process one rank of a torchrun launch (RANK and WORLD_SIZE set)?"""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    backend: str  # nccl | gloo
    timeout_s: float
    side: Any  # the gloo group for control messages

    @property
    def main(self) -> bool:
        return self.rank == 0

    def label(self) -> str:
        return f"rank {self.rank} of {self.world}"


def device_for(device: torch.device, local_rank: int) -> torch.device:
    """The rank's device: ``cuda:LOCAL_RANK`` when the run asks for CUDA, else the one asked."""
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def init(timeout_s: float, device: torch.device) -> Optional[DistContext]:
    """Join torchrun's process group (None without torchrun). ``device``: the run's device before
    the rank is applied (cuda -> NCCL and cuda:LOCAL_RANK; cpu -> gloo)."""
    if not launched():
        return None
    if timeout_s <= 0:
        raise ValueError(f"train.dist_timeout_s must be > 0 seconds; got {timeout_s}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=timeout, **kwargs)
    side = dist.new_group(backend="gloo", timeout=timeout)  # apart: a failed collective may spoil its group
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, timeout_s, side)
    log.info(f"[specdec.train] data-parallel: {ctx.world} ranks ({backend}), this is {ctx.label()}")
    return ctx


def shutdown(ctx: Optional[DistContext]) -> None:
    if ctx is not None and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(ctx: DistContext, obj):
    """Rank 0's ``obj`` on every rank (pickled, over the gloo side group)."""
    box = [obj]
    _collective(ctx, "broadcast of rank 0's settings",
                lambda: dist.broadcast_object_list(box, src=0, group=ctx.side))
    return box[0]


def wait_for_main(ctx: DistContext, timeout_s: float, what: str) -> None:
    """Ranks other than 0 wait (up to ``timeout_s``) for rank 0 to finish ``what``; rank 0 calls
    it when done. A rank 0 that raises instead exits, and the wait ends with its connection."""
    _collective(ctx, f"waiting for rank 0's {what}",
                lambda: dist.monitored_barrier(ctx.side, timeout=datetime.timedelta(seconds=timeout_s)))


def check_split(ctx: Optional[DistContext], batch_size: int, num_examples: Optional[int] = None) -> None:
    """The global batch must split evenly, and every rank needs examples of its own."""
    from specdec.errors import UserError

    if ctx is None:
        return
    if batch_size % ctx.world:
        raise UserError(f"train.batch_size={batch_size} is the global batch and must split evenly over "
                         f"{ctx.world} ranks: use a multiple of {ctx.world}")
    if num_examples is not None and num_examples < ctx.world:
        raise UserError(f"{num_examples} training example(s) for {ctx.world} ranks: each rank needs one of "
                         f"its own; generate more data (data.max_prompts) or launch fewer ranks")


class _Loss(nn.Module):
    """The objective's loss as a module's forward, so that DDP sees the forward that uses the
    trained parameters (the objectives call their nets in several places: unrolled steps, fusing,
    logits) and synchronises their gradients in backward."""

    def __init__(self, objective) -> None:
        super().__init__()
        self.objective = objective
        self.trained = objective.module  # registers the parameters

    def forward(self, batch):
        return self.objective.loss(batch)


def wrap(objective, ctx: Optional[DistContext], device: torch.device):
    """A callable batch -> (loss, metrics): the objective itself on one process, a DDP module
    across ranks. Every trained parameter takes part in each loss (checked for the four kinds), so
    DDP runs without the unused-parameter search; buffers (EAGLE-3's vocabulary maps) are constant
    and not re-broadcast each step. DDP's construction copies rank 0's weights to every rank."""
    if ctx is None:
        return objective.loss
    from torch.nn.parallel import DistributedDataParallel as DDP

    import inspect

    ids = [device.index] if device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(DDP).parameters  # torch >= 2.13's name
    buffers = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    return _collective(ctx, "DDP setup (rank 0's weights to every rank)",
                       lambda: DDP(_Loss(objective), device_ids=ids, **buffers))


SUMMED = ("tokens",)  # metrics that add up over the ranks (the rest are averaged)


class StepStats:
    """One all-gather a step of (loss, metrics..., elapsed seconds) from every rank: the mean of
    the values (the sum of those in SUMMED) and the largest elapsed time, the same on every rank."""

    def __init__(self, ctx: Optional[DistContext]) -> None:
        self.ctx = ctx

    def reduce(self, step: int, loss: float, metrics: dict, elapsed_s: float) -> tuple[float, dict, float]:
        if self.ctx is None:
            return loss, metrics, elapsed_s
        keys = sorted(metrics)
        mine = torch.tensor([loss, *(metrics[k] for k in keys), elapsed_s], dtype=torch.float64)
        rows = [torch.empty_like(mine) for _ in range(self.ctx.world)]
        _collective(self.ctx, f"step {step + 1}'s statistics", lambda: dist.all_gather(rows, mine, group=self.ctx.side))
        every = torch.stack(rows)  # [world, 2 + len(keys)]
        mean = every[:, :-1].mean(0).tolist()
        out = {k: v * self.ctx.world if k in SUMMED else v for k, v in zip(keys, mean[1:])}
        return mean[0], out, float(every[:, -1].max())


def collective_step(ctx: Optional[DistContext], step: int, fn):
    """Run ``fn`` (a training step: its backward all-reduces the gradients) with failures named."""
    if ctx is None:
        return fn()
    return _collective(ctx, f"step {step + 1}", fn)


def _collective(ctx: DistContext, what: str, fn):
    start = time.perf_counter()
    try:
        return fn()
    except RankFailure:
        raise
    except RuntimeError as err:  # gloo / NCCL: a timeout, or a peer that closed its connection
        if not _is_comm_error(err):
            raise
        waited = time.perf_counter() - start
        raise RankFailure(f"{ctx.label()}: {what} failed after {waited:.1f} s "
                          f"(train.dist_timeout_s={ctx.timeout_s:g}): {missing_ranks(ctx)}; "
                          f"the collective said: {_first_line(err)}") from err


def _is_comm_error(err: BaseException) -> bool:
    base = getattr(dist, "DistError", None)
    if base is not None and isinstance(err, base):
        return True
    text = str(err)
    return any(s in text for s in ("Timed out", "Connection closed by peer", "Connection reset", "gloo", "NCCL",
                                   "monitoredBarrier"))


def missing_ranks(ctx: DistContext) -> str:
    """Which ranks no longer answer, by a monitored barrier on the side group: rank 0 lists the
    ones that did not arrive within PROBE_S; the other ranks can only say whether rank 0 answered."""
    probe = min(PROBE_S, ctx.timeout_s)
    try:
        dist.monitored_barrier(ctx.side, timeout=datetime.timedelta(seconds=probe), wait_all_ranks=True)
    except RuntimeError as err:
        text = str(err)
        if "failed to pass monitoredBarrier" in text:  # rank 0: "Ranks 1, 3 failed to pass ..."
            ranks = text.split("Ranks", 1)[-1].split("failed", 1)[0].strip() if "Ranks" in text else "?"
            return f"rank(s) {ranks} died or stalled (did not answer within {probe:g} s)"
        if "Connection closed" in text or "Connection reset" in text:
            return "a rank died (its connection closed); its log and the torchrun summary name it"
        if ctx.rank != 0:
            return "rank 0 died or stalled (it did not answer); its log says more"
        return f"the ranks could not be asked ({_first_line(err)})"
    return "every rank still answers (the failure was in the collective itself)"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def inject_fault(ctx: Optional[DistContext], step: int) -> None:
    """Tests only: ``SPECDEC_TRAIN_FAULT=RANK:STEP:raise`` makes that rank raise before that step,
    ``...:stall`` makes it sleep (until the others time out and torchrun stops it)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, at, kind = spec.split(":")
    here = ctx.rank if ctx is not None else 0
    if int(rank) != here or int(at) != step:
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")
    if kind == "stall":
        log.warning(f"[specdec.train] {FAULT_ENV}: rank {here} stalls at step {step}")
        while True:
            time.sleep(1)
    raise ValueError(f"{FAULT_ENV}={spec}: the kind must be raise or stall")
