"""The ranks of a tensor-parallel engine (``engine.tensor_parallel_size=N``), on torch.distributed:
NCCL between GPUs (rank r on cuda:r), gloo on the CPU.

Rank 0 runs the whole engine: scheduler, drafter (at TP = 1, as vLLM's
``draft_tensor_parallel_size=1``), policy and the host side of every step. Ranks 1..N-1 hold their
share of the target (specdec/models/tensor_parallel.py) and its KV cache and run only the step body
(engine/tp_serve.py), in lockstep: for each forward rank 0 broadcasts what it staged (the step's
shape, sampling plan and host arrays as one message, then its device inputs, draft trees included,
tensor by tensor from device to device: rank 0 never waits for the drafter), then every rank runs
the same body (forward with its all-reduces, logits from the replicated lm_head, the verifier on
the same uniforms, the KV commit into its own heads). The verifier is deterministic given its
inputs, so every rank accepts the same nodes without another message; only rank 0 reads the step
back.

Processes: `start` spawns ranks 1..N-1 itself (one process per rank, as nano-vllm), or, under
`torchrun`, joins the ranks torchrun started (``RANK`` / ``WORLD_SIZE`` in the environment),
where ranks above 0 serve here and exit when rank 0 closes. Faults: a rank that exits or stalls
makes rank 0's next message or all-reduce fail within ``engine.tp_timeout_s`` with a `RankError`
naming the rank (loading is waited for apart, up to `tp_serve.LOAD_TIMEOUT_S`: a slow load is
no stall); spawned ranks are daemons that rank 0 stops (and, if need be, kills) when it
ends, and a rank whose peer vanished leaves its loop with an error: no process outlives the run.
"""
from __future__ import annotations

import atexit
import datetime
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specdec.models.tensor_parallel import shard_

# (FAULT_ENV and RankError: re-exported, the names callers know)
from .tp_serve import (FAULT_ENV, RankError, exit_rank, loading_group, pack_inputs, rank_device,  # noqa: F401
                       serve_rank)


@dataclass
class Ranks:
    """Rank 0's handle on the ranks of one process group."""
    size: int
    timeout_s: float
    device: torch.device  # rank 0's: where a collective's tensors must be (NCCL: its GPU)
    procs: list = field(default_factory=list)  # spawned ranks 1..N-1 ([] under torchrun)
    next_id: int = 0  # runner ids: several engines (a run and its baseline) share the ranks
    closed: bool = False
    failed: bool = False  # a collective failed: close without waiting on the ranks

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def mirror(self, runner, verifier, prepare: tuple, kwargs: dict) -> None:
        """Have the other ranks build ``runner``'s twin on their shares (``prepare``: the model's
        dtype and positions; ``kwargs``: the runner's settings), and ``runner`` send them each
        step it stages."""
        runner.id, runner.mirror = self.new_id(), self.send
        self.send(("runner", runner.id, verifier, prepare, kwargs))

    def send(self, msg: tuple, dev: Optional[dict] = None) -> None:
        """Broadcast ``msg`` to ranks 1..N-1 (each runs it; see `serve`). A step's device inputs
        ``dev`` (``{name: (tensor, static shape)}``) go as tensors after the message, which ends
        with their dtypes and shapes (`tp_serve.pack_inputs`)."""
        self.check()
        tensors = []
        if dev is not None:
            meta, tensors = pack_inputs(dev, self.device)
            msg = (*msg, meta)
        try:
            dist.broadcast_object_list([msg], src=0)
            for t in tensors:
                dist.broadcast(t, src=0)
        except Exception as e:  # a peer gone or silent past the timeout
            self.failed = True
            raise RankError(self.explain(e)) from e

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The row-parallel layers' sum over the ranks (in place)."""
        try:
            dist.all_reduce(x)
        except Exception as e:
            self.failed = True
            raise RankError(self.explain(e)) from e
        return x

    def exited(self) -> list[tuple[int, int]]:
        """(rank, exit code) of each spawned rank that has ended."""
        return [(r, p.exitcode) for r, p in enumerate(self.procs, 1) if p.exitcode is not None]

    def check(self) -> None:
        if dead := self.exited():
            raise RankError(_dead(dead))

    def explain(self, error: Exception) -> str:
        """What went wrong, naming the rank: one that exited, else the collective's own words."""
        deadline = time.monotonic() + 2.0  # a rank that just died: give its exit a moment to show
        dead = self.exited()
        while not dead and self.procs and time.monotonic() < deadline:
            time.sleep(0.05)
            dead = self.exited()
        if dead:
            return _dead(dead)
        return (f"tensor-parallel ranks 1..{self.size - 1} did not answer rank 0 within "
                f"engine.tp_timeout_s={self.timeout_s:g} s (a rank stalled or died): "
                f"{type(error).__name__}: {str(error)[:300]}")

    def close(self) -> None:
        """Stop the other ranks (they leave `serve`), then end the process group."""
        if self.closed:
            return
        self.closed = True
        try:
            if not self.failed and not self.exited():
                dist.broadcast_object_list([("stop",)], src=0)
                dist.barrier()  # every rank has it: none tears its connections down under another
        except Exception:
            self.failed = True  # a rank already gone: the rest end on their own error
        for p in self.procs:
            p.join(timeout=1 if self.failed else 10)
            if p.exitcode is None:
                p.kill()
                p.join(timeout=5)
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def check_split(size: int, model, ranks: Optional[Ranks]) -> None:
    """An engine's ``engine.tensor_parallel_size``, its model's split and its ranks agree."""
    if size != model.tp_size:
        raise ValueError(f"engine.tensor_parallel_size={size} but the model is split over {model.tp_size} "
                         f"rank(s): load it with specdec.engine.tensor_parallel.start (python -m "
                         f"specdec.run does)")
    if (ranks.size if ranks is not None else 1) != model.tp_size:
        raise ValueError(f"the model is split over {model.tp_size} ranks but the engine got "
                         f"{'no ranks' if ranks is None else f'{ranks.size} ranks'}: start a "
                         f"tensor-parallel target with specdec.engine.tensor_parallel.start")


def _dead(dead: list[tuple[int, int]]) -> str:
    return "; ".join(f"tensor-parallel rank {r} exited with code {c} (its error, if any, is printed "
                     f"above)" for r, c in dead)


def start(size: int, load: Callable[[torch.device], Any], device: torch.device, timeout_s: float):
    """The loaded target of rank 0, sharded, and its `Ranks`. ``load(device)`` loads the whole
    model on a device (each rank loads its own copy, then keeps its share). Under torchrun a
    rank above 0 serves here and the process exits when rank 0 closes."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if world != size:
            raise ValueError(f"engine.tensor_parallel_size={size} but torchrun started {world} "
                             f"processes (--nproc-per-node); make them equal")
        _init(backend, rank, world, timeout, None)
        if rank != 0:
            exit_rank(serve_rank(rank, size, load, device, timeout_s))
        ranks = Ranks(size, timeout_s, rank_device(device, 0))
        loading = loading_group(timeout_s)
    else:
        if device.type == "cuda" and torch.cuda.device_count() < size:
            raise ValueError(f"engine.tensor_parallel_size={size} needs {size} GPUs; this machine "
                             f"has {torch.cuda.device_count()}")
        port = _free_port()
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_spawned, args=(r, size, port, load, device, timeout_s), daemon=True,
                             name=f"specdec-tp-rank{r}") for r in range(1, size)]
        for p in procs:
            p.start()
        ranks = Ranks(size, timeout_s, rank_device(device, 0), procs)
        try:
            _init(backend, 0, size, timeout, port)
            loading = loading_group(timeout_s)
        except Exception as e:
            ranks.close()
            raise RankError(ranks.explain(e)) from e
    atexit.register(ranks.close)
    loaded = load(rank_device(device, 0))
    shard_(loaded.model, 0, size, ranks.reduce)  # (it refuses a size that does not split the model)
    try:  # every rank has its share before the first step's message
        dist.barrier(group=loading)
    except Exception as e:
        ranks.failed = True
        raise RankError(ranks.explain(e)) from e
    loaded.ranks = ranks
    return loaded


def _init(backend: str, rank: int, world: int, timeout, port: Optional[int]) -> None:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    init = None if port is None else f"tcp://127.0.0.1:{port}"
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank: int, size: int, port: int, load, device: torch.device, timeout_s: float) -> None:
    """A spawned rank's process."""
    try:
        _init("nccl" if device.type == "cuda" else "gloo", rank, size,
              datetime.timedelta(seconds=timeout_s), port)
    except Exception:
        traceback.print_exc()
        exit_rank(3)
    exit_rank(serve_rank(rank, size, load, device, timeout_s))


