"""CUDA graphs of a drafter's device work: EAGLE's catch-up and tree growth, Medusa's heads, the
draft model's chain. One graph per key (a batch bucket and whatever else fixes the shapes).

A drafted tree is a few dozen small launches per level (a draft layer, the lm_head, top-k, the
tree bookkeeping); eagerly, Python and the driver cost ~20x the GPU time for SmolLM2-sized
targets. A drafter that uses this splits `propose` in two:

  * host staging: numpy arrays of FIXED shapes per key (token ids, positions, cache slots, block
    tables, ...; padding rows store nothing), plus device tensors it already has (target
    features), copied into static buffers with leading padding;
  * a device function of those static inputs that reads nothing back (no ``.item()``,
    ``.tolist()``, data-dependent shapes, or host tensors built inside).

`run` stages the inputs (one pinned host-to-device copy per dtype), captures the function the
first time a key is seen (two warm-up runs on a side stream, then the capture, as
specdec/engine/cuda_graphs.py does for the target) and replays it after that. Outputs are the
graph's static tensors: valid until the next `run` of any key (the graphs share one memory pool),
so the caller must consume them within the step. ``capture=False`` runs the function eagerly on
the staged buffers instead: the staging and padding logic, testable on the CPU.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from specdec.engine.cuda_graphs import batch_buckets, bucket

_DTYPES = {np.dtype(np.int64): torch.long, np.dtype(np.int32): torch.int32,
           np.dtype(np.float32): torch.float32}


class _Entry:
    """One key's static inputs (views into one device buffer per dtype) and its graph."""

    def __init__(self, host: dict[str, np.ndarray], dev: dict[str, tuple[Tensor, int]], device, pin: bool):
        self.fields: dict[str, tuple[np.dtype, int, int, tuple]] = {}  # name -> dtype, start, end, shape
        sizes: dict[np.dtype, int] = {}
        for name, arr in host.items():
            if arr.dtype not in _DTYPES:
                raise TypeError(f"staged input {name!r} has dtype {arr.dtype}; use int64, int32 or float32")
            at = sizes.get(arr.dtype, 0)
            self.fields[name] = (arr.dtype, at, at + arr.size, arr.shape)
            sizes[arr.dtype] = at + arr.size
        self.pinned = {dt: torch.zeros(n, dtype=_DTYPES[dt], pin_memory=pin) for dt, n in sizes.items()}
        self.pinned_np = {dt: t.numpy() for dt, t in self.pinned.items()}
        self.buffers = {dt: torch.zeros(n, dtype=_DTYPES[dt], device=device) for dt, n in sizes.items()}
        self.views: dict[str, Tensor] = {name: self.buffers[dt][a:b].view(shape)
                                         for name, (dt, a, b, shape) in self.fields.items()}
        for name, (t, rows) in dev.items():  # zeros: padding rows stay finite
            self.views[name] = torch.zeros((rows,) + tuple(t.shape[1:]), dtype=t.dtype, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: Any = None

    def stage(self, host: dict[str, np.ndarray], dev: dict[str, tuple[Tensor, int]]) -> None:
        for name, arr in host.items():
            dt, a, b, shape = self.fields[name]
            if arr.shape != shape or arr.dtype != dt:
                raise ValueError(f"staged input {name!r}: {arr.dtype}{list(arr.shape)} given for a "
                                 f"graph of {dt}{list(shape)} (a key must fix every shape)")
            self.pinned_np[dt][a:b] = arr.reshape(-1)
        for dt, buf in self.buffers.items():
            buf.copy_(self.pinned[dt], non_blocking=True)
        for name, (t, _) in dev.items():
            self.views[name][: t.shape[0]].copy_(t)


class DraftGraphs:
    """A drafter's graphs, one per key; batches of up to ``max_batch`` sequences (bucketed)."""

    def __init__(self, device, max_batch: int, capture: bool = True):
        self.device, self.capture = torch.device(device), capture
        if capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; got {self.device} (capture=False "
                             f"runs the same staging eagerly)")
        self.batch_buckets = batch_buckets(max_batch)
        self.entries: dict[tuple, _Entry] = {}
        self.pool = None
        self.replays = 0  # steps served by a graph (or by the emulation)

    def batch_bucket(self, batch: int) -> int | None:
        """The padded batch size for ``batch`` sequences, None past the largest bucket."""
        return bucket(batch, self.batch_buckets)

    def batch_for(self, seqs, table: str, table_width: int) -> int | None:
        """The bucket for drafting ``seqs`` in a graph whose staged block tables
        (``seq.aux_tables[table]``) hold ``table_width`` entries; None: draft eagerly."""
        bg = self.batch_bucket(len(seqs))
        if bg is None or any(len(s.aux_tables[table]) > table_width for s in seqs):
            return None
        return bg


    def run(self, key: tuple, host: dict[str, np.ndarray], dev: dict[str, tuple[Tensor, int]],
            body: Callable[[dict[str, Tensor]], Any]) -> Any:
        """Stage ``host`` arrays and ``dev`` tensors (each ``(tensor [n, ...], padded rows)``),
        then replay ``body``'s graph for ``key`` (capturing it the first time) and return its
        outputs. ``body(views)`` gets the static inputs by name, with the staged shapes."""
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry(host, dev, self.device, self.capture)
        entry.stage(host, dev)
        self.replays += 1
        if not self.capture:
            return body(entry.views)
        if entry.graph is None:
            self._capture(entry, body)
        entry.graph.replay()
        return entry.outputs

    def _capture(self, entry: _Entry, body) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # compiles the kernels, warms the allocator
            for _ in range(2):
                body(entry.views)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                entry.outputs = body(entry.views)
        except RuntimeError as e:
            raise RuntimeError(f"capturing a drafter's step in a CUDA graph failed (it did something a "
                               f"graph cannot hold, such as reading a value back to the host); run "
                               f"with engine.cuda_graphs=false to draft eagerly.\n{e}") from e
        entry.graph = graph
