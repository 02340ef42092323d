"""What ranks 1..N-1 of a tensor-parallel target run (engine/tensor_parallel.py is rank 0's
side): load and shard the target, then run each step body rank 0 sends, in lockstep, until it
says stop; and what both sides share (a rank's device, the loading barrier, the error type)."""
from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
from typing import Optional

import torch
import torch.distributed as dist

from specdec.models.tensor_parallel import shard_

FAULT_ENV = "SPECDEC_TP_FAULT"  # tests: "exit:<rank>:<step>" or "stall:<rank>:<step>"


class RankError(RuntimeError):
    """A tensor-parallel rank died, stalled or failed; the message names it."""


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank r's device: cuda:r on GPUs (one GPU per rank), the CPU otherwise."""
    return torch.device("cuda", rank) if device.type == "cuda" else torch.device("cpu")


LOAD_TIMEOUT_S = 900.0  # how long the ranks wait for each other's model load: loading is no stall


def loading_group(timeout_s: float):
    """A gloo group (every rank creates it, right after joining) whose barrier waits for every
    rank's load of the target: minutes for a large checkpoint on a busy machine, where the
    collectives' own ``engine.tp_timeout_s`` is meant for stalls between steps."""
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=max(timeout_s, LOAD_TIMEOUT_S)))


def pack_inputs(dev: dict, device: torch.device) -> tuple[dict, list]:
    """Rank 0's side of a step's device inputs ``{name: (tensor, static shape)}``: their dtypes
    and shapes, for the step's message, and the tensors on ``device``, broadcast in that order
    after it (`receive_inputs` is the other side)."""
    tensors = {k: (t.to(device).contiguous(), s) for k, (t, s) in dev.items()}
    return {k: (t.dtype, tuple(t.shape), s) for k, (t, s) in tensors.items()}, [t for t, _ in tensors.values()]


def receive_inputs(meta: dict, device: torch.device) -> dict:
    """A serving rank's side: the step's device inputs, received in `pack_inputs`' order."""
    dev = {}
    for name, (dtype, size, static) in meta.items():
        dev[name] = (torch.empty(size, dtype=dtype, device=device), static)
        dist.broadcast(dev[name][0], src=0)
    return dev


def exit_rank(code: int) -> None:
    """End a serving rank's process now: it owns no outputs, and the interpreter's teardown of
    the communication library's threads has aborted processes ("terminate called without an
    active exception") after a clean stop."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve_rank(rank: int, size: int, load, device: torch.device, timeout_s: float) -> int:
    """Load and shard the target, then `serve` rank 0 until it stops; the exit code."""
    try:
        if device.type == "cpu":  # the ranks share the cores
            torch.set_num_threads(max(1, torch.get_num_threads() // size))
        loading = loading_group(timeout_s)
        mine = rank_device(device, rank)
        model = load(mine).model
        shard_(model, rank, size, _all_reduce)
        dist.barrier(group=loading)  # rank 0 has its share too: steps may come
        serve(model, mine, rank)
        return 0
    except Exception:
        print(f"[specdec] tensor-parallel rank {rank} failed:", file=sys.stderr)
        traceback.print_exc()
        return 1
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    """A serving rank's sum over the ranks (in place); its errors end `serve_rank`."""
    dist.all_reduce(x)
    return x


def serve(model, device: torch.device, rank: int) -> None:
    """Run what rank 0 broadcasts, until it says stop: build a runner for each of its engines,
    run their step bodies, warm their graphs up."""
    from .model_runner import ModelRunner

    fault = _fault(rank)
    runners: dict[int, ModelRunner] = {}
    steps = 0
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        kind, *args = box[0]
        if kind == "stop":
            dist.barrier()
            return
        if kind == "runner":  # (id, verifier, prepare arguments, ModelRunner arguments)
            rid, verifier, (dtype, positions), kwargs = args
            model.prepare(device, dtype, positions)
            runners[rid] = ModelRunner(model, verifier, device=device, **kwargs)
        elif kind == "step":  # (id, shape, plan, host arrays, device inputs' dtypes and shapes)
            rid, shape, plan, host, meta = args
            steps += 1
            if fault and steps == fault[1]:
                _inject(fault[0], rank)
            with torch.inference_mode():
                runners[rid].execute(shape, plan, host, receive_inputs(meta, device))
        elif kind == "warm_up":
            rid, max_nodes = args
            runners[rid].warm_up(max_nodes)
        else:
            raise RankError(f"tensor-parallel rank {rank}: unknown message {kind!r} from rank 0")


def _fault(rank: int) -> Optional[tuple[str, int]]:
    """The fault a test asks this rank to play (``SPECDEC_TP_FAULT=exit|stall:<rank>:<step>``)."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    what, r, step = spec.split(":")
    return (what, int(step)) if int(r) == rank else None


def _inject(what: str, rank: int) -> None:
    print(f"[specdec] tensor-parallel rank {rank}: {FAULT_ENV} asks for a fault: {what}", file=sys.stderr)
    if what == "exit":
        os._exit(7)
    time.sleep(10**6)  # stall
