"""CUDA graphs for every graphed computation of the package: the engine's step, each drafter's
draft, the benchmark scripts' floors.

A small model's step is host-bound: eagerly, SmolLM2-135M launches ~350 kernels per forward,
each a few microseconds of Python and driver time, while the GPU work is ~1 ms. Captured once
per shape bucket (as vLLM, SGLang and nano-vllm capture their decode steps) a step costs one
replay. A computation that wants this is written as ``body(inputs) -> outputs`` over named
inputs and run through `GraphRunner.run`:

  * ``key=None``: eager. Host arrays become device tensors and ``body`` runs on them (exact
    shapes);
  * a key (whatever fixes the shapes: a batch bucket, a node bucket, a sampling plan): the inputs
    are staged into that key's static buffers, host arrays through pinned memory (one copy per
    dtype), tensors (the drafter's, on the device or the host) copied into the leading corner of
    theirs; the graph is captured the first time the key is seen and replayed after that.

A body must read nothing back to the host (no ``.item()``, ``.tolist()``, data-dependent shapes)
and must derive everything from its inputs. Outputs are the graph's static tensors, valid until
the runner's next `run` (one memory pool serves all of a runner's graphs, so another key's replay
may write where this one's outputs live): consume them within the step.

Modes (``engine.cuda_graphs``): ``capture`` on CUDA; ``emulate`` runs ``body`` eagerly on the
staged static buffers instead of replaying, on any device: the bucketing, staging and padding
logic, testable on the CPU; ``None``: every key runs eagerly.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

_DTYPES = {np.dtype(np.int64): torch.long, np.dtype(np.int32): torch.int32,
           np.dtype(np.float32): torch.float32, np.dtype(np.int8): torch.int8}
MODES = ("capture", "emulate")

Body = Callable[[dict[str, Tensor]], Any]


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then multiples of 8 up to 32, then of 16: padding stays under ~1/3."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b = b * 2 if b < 8 else b + (8 if b < 32 else 16)
    return tuple(out) + (max_batch,)


def bucket(n: int, buckets: tuple[int, ...]) -> Optional[int]:
    """The smallest bucket that holds ``n``; None past the largest."""
    return next((b for b in buckets if b >= n), None)


def capture(fn: Callable[[], Any], device, pool=None, warmup: int = 2, what: str = "a step"):
    """Run ``fn`` ``warmup`` times on a side stream (kernel compilation, allocator warm-up), then
    capture one call in a CUDA graph on ``pool`` (a new pool when None). Returns ``(graph,
    pool, outputs)``: the outputs are the static tensors each replay rewrites."""
    device = torch.device(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=pool):
            outputs = fn()
    except RuntimeError as e:
        raise RuntimeError(f"capturing {what} in a CUDA graph failed: it did something a graph "
                           f"cannot hold, such as reading a value back to the host. Run with "
                           f"engine.cuda_graphs=false to run it eagerly.\n{e}") from e
    return graph, pool, outputs


class _Entry:
    """One key's static inputs (host fields: views into one device buffer per dtype, staged
    through pinned memory; device fields: their own buffers) and its graph."""

    def __init__(self, host: dict[str, np.ndarray], dev: dict[str, tuple[Tensor, tuple]], device,
                 pin: bool):
        self.fields: dict[str, tuple[np.dtype, int, int, tuple]] = {}  # name -> dtype, start, end, shape
        sizes: dict[np.dtype, int] = {}
        for name, arr in host.items():
            if arr.dtype not in _DTYPES:
                raise TypeError(f"staged input {name!r} has dtype {arr.dtype}; use int64, int32, "
                                f"float32 or int8")
            at = sizes.get(arr.dtype, 0)
            self.fields[name] = (arr.dtype, at, at + arr.size, arr.shape)
            sizes[arr.dtype] = at + arr.size
        self.pinned = {dt: torch.zeros(n, dtype=_DTYPES[dt], pin_memory=pin) for dt, n in sizes.items()}
        self.pinned_np = {dt: t.numpy() for dt, t in self.pinned.items()}
        self.buffers = {dt: torch.zeros(n, dtype=_DTYPES[dt], device=device) for dt, n in sizes.items()}
        self.views: dict[str, Tensor] = {name: self.buffers[dt][a:b].view(shape)
                                         for name, (dt, a, b, shape) in self.fields.items()}
        for name, (t, shape) in dev.items():  # zeros: padding stays finite
            self.views[name] = torch.zeros(shape, dtype=t.dtype, device=device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Any = None
        self.replays = 0

    def stage(self, host: dict[str, np.ndarray], dev: dict[str, tuple[Tensor, tuple]]) -> None:
        """An input may come from the host one run and from the device another (a step's tree:
        root-only trees are made on the host, drafted ones on the device): a field the key first
        saw as a tensor is then copied like one, and the other way round."""
        late = []
        for name, arr in host.items():
            if name not in self.fields:
                late.append((name, torch.from_numpy(arr)))
                continue
            dt, a, b, shape = self.fields[name]
            if arr.shape != shape or arr.dtype != dt:
                raise ValueError(f"staged input {name!r}: {arr.dtype}{list(arr.shape)} given for a "
                                 f"graph of {dt}{list(shape)} (a key must fix every shape)")
            self.pinned_np[dt][a:b] = arr.reshape(-1)
        for dt, buf in self.buffers.items():
            buf.copy_(self.pinned[dt], non_blocking=True)
        # the leading corner; the rest keeps stale values (after the upload: a field staged
        # through the host buffers may come as a tensor)
        for name, t in [(name, t) for name, (t, _) in dev.items()] + late:
            if name not in self.views:
                raise KeyError(f"staged input {name!r} is not an input of this graph (its key "
                               f"must fix the set of inputs)")
            self.views[name][tuple(slice(0, n) for n in t.shape)].copy_(t, non_blocking=True)


class GraphRunner:
    """Eager or graphed runs of bodies over named inputs, one graph per key, one memory pool."""

    def __init__(self, device, mode: Optional[str] = "capture"):
        if mode not in MODES + (None,):
            raise ValueError(f"graph mode must be one of {MODES} or None; got {mode!r}")
        self.device, self.mode = torch.device(device), mode
        if mode == "capture" and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; got {self.device} (engine.cuda_graphs="
                             f"emulate runs the same staging eagerly)")
        self.entries: dict[Hashable, _Entry] = {}
        self.pool = None
        self.replays = 0  # runs served by a graph (or by the emulation)

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def run(self, key: Optional[Hashable], host: dict[str, np.ndarray], body: Body,
            dev: Optional[dict[str, tuple[Tensor, tuple]]] = None) -> Any:
        """``body`` over ``host`` arrays and ``dev`` tensors (``{name: (tensor, static shape)}``;
        the tensor fills the leading corner of a static buffer of that shape). ``key=None`` (or
        a runner without graphs): eagerly on exact shapes. Otherwise staged into ``key``'s static
        inputs and replayed (captured the first time)."""
        dev = dev or {}
        if key is None or self.mode is None:
            inputs = {k: torch.from_numpy(a).to(self.device) for k, a in host.items()}
            inputs.update({k: t.to(self.device) for k, (t, _) in dev.items()})  # a host tree too
            return body(inputs)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry(host, dev, self.device, self.mode == "capture")
        entry.stage(host, dev)
        self.replays += 1
        entry.replays += 1
        if self.mode == "emulate":
            return body(entry.views)
        if entry.graph is None:
            entry.graph, self.pool, entry.outputs = capture(lambda: body(entry.views), self.device,
                                                            self.pool, what=f"graph {key}")
        entry.graph.replay()
        return entry.outputs

    def warm_up(self, cases: Iterable[tuple[Hashable, dict[str, np.ndarray], Body, dict]]) -> int:
        """Capture now the graph of each ``(key, host, body, dev)`` case not captured yet (dummy
        inputs that store nothing), so that no timed step pays a capture or a kernel
        compilation. Returns the number of graphs added."""
        if self.mode is None:
            return 0
        before = len(self.entries)
        for key, host, body, dev in cases:
            if key not in self.entries:
                self.run(key, host, body, dev)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return len(self.entries) - before
