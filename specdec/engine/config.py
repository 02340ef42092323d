"""Engine settings, validated where they enter (a typo here should not surface as a kernel error)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: Optional[int] = None  # None: sized from kv_cache_gb
    kv_cache_gb: Optional[float] = None  # None: CPU 2 GiB at most, CUDA 40% of free memory
    max_num_seqs: int = 16
    # a forward's rows: prefill chunks and draft-tree nodes (speculation=fixed counts each tree whole,
    # so fewer sequences decode per step; adaptive cuts its trees to fit what is left)
    max_num_batched_tokens: int = 2048
    max_model_len: Optional[int] = None  # None: the model's own limit
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16
    # CUDA: replay steps and drafting from CUDA graphs, one per shape bucket (engine/graphs.py);
    # emulate: run the graphs' bodies eagerly on their padded static inputs (any device: tests)
    cuda_graphs: Union[bool, str] = True
    max_graph_batch: int = 64  # larger batches run eagerly
    # a step with prefill chunks beside decode trees runs as two forwards, the trees then the
    # chunks, each from its graph (ModelRunner.forwards). auto: where graphs are on
    split_mixed_steps: Union[bool, str] = "auto"
    # steps made of prefill chunks replay graphs too, one per (sequence, token) bucket, captured
    # by warm_up. auto: where graphs are on
    prefill_graphs: Union[bool, str] = "auto"
    # while sequences run, admit waiting ones this many at a time (scheduler.Scheduler._admit);
    # auto: a quarter of max_num_seqs (1 up to 7 sequences)
    admit_batch: Union[int, str] = 1
    # batch-invariant numerics (kernels/batch_invariant.py): every row of the target's forward
    # bitwise independent of the step's other rows, so speculative output equals autoregressive
    # output in any dtype; the target's steps run eagerly; CPU, or a GPU for greedy requests
    # (Triton kernels: kernels/batch_invariant_triton.py; ARCHITECTURE.md, "Exact mode")
    exact: bool = False
    # tensor parallelism (engine/tensor_parallel.py): the target split over this many ranks, one
    # process (and on CUDA one GPU) each; the drafter runs on rank 0. A rank silent for
    # tp_timeout_s seconds ends the run with an error naming it.
    tensor_parallel_size: int = 1
    tp_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        bs = self.block_size
        if not isinstance(bs, int) or bs < 1 or bs & (bs - 1):
            raise ValueError(f"engine.block_size must be a power of two (16, 32, 64 ...); got {bs}")
        if self.admit_batch != "auto" and (type(self.admit_batch) is not int or self.admit_batch < 1):
            raise ValueError(f"engine.admit_batch must be an int >= 1 or auto; got {self.admit_batch!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_graph_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine.{name} must be >= 1; got {getattr(self, name)}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"engine.num_blocks must be >= 1 or null; got {self.num_blocks}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"engine.max_model_len must be >= 2 or null; got {self.max_model_len}")
        if self.exact not in (True, False):
            raise ValueError(f"engine.exact must be true or false; got {self.exact!r}")
        if type(self.tensor_parallel_size) is not int or self.tensor_parallel_size < 1:
            raise ValueError(f"engine.tensor_parallel_size must be an int >= 1; got {self.tensor_parallel_size!r}")
        if not (isinstance(self.tp_timeout_s, (int, float)) and self.tp_timeout_s > 0):
            raise ValueError(f"engine.tp_timeout_s must be > 0 seconds; got {self.tp_timeout_s!r}")
        if self.exact and self.tensor_parallel_size > 1:
            raise ValueError("engine.exact=true runs on one device: a tensor-parallel all-reduce sums "
                             "the ranks' partial rows in another order than one device's GEMM")
        if self.cuda_graphs not in (True, False, "emulate"):
            raise ValueError(f"engine.cuda_graphs must be true, false or emulate; got {self.cuda_graphs!r}")
        for name in ("split_mixed_steps", "prefill_graphs"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(f"engine.{name} must be auto, true or false; got "
                                 f"{getattr(self, name)!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"engine.dtype must be auto or one of {sorted(DTYPES)}; got {self.dtype!r}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"engine.device={self.device} but CUDA is not available; use cpu or auto")
        return dev

    def graph_mode(self, device: torch.device) -> Optional[str]:
        """capture (CUDA graphs on a CUDA device), emulate, or None (eager)."""
        if self.cuda_graphs == "emulate":
            return "emulate"
        return "capture" if self.cuda_graphs and device.type == "cuda" else None

    def split_mixed(self, graphs_on: bool) -> bool:
        return graphs_on if self.split_mixed_steps == "auto" else bool(self.split_mixed_steps)

    def admit_count(self) -> int:
        """engine.admit_batch resolved: auto admits a quarter of max_num_seqs at a time."""
        return max(1, self.max_num_seqs // 4) if self.admit_batch == "auto" else self.admit_batch

    def graph_prefills(self, graphs_on: bool) -> bool:
        """Prefill graphs need the decode graphs' machinery: never without CUDA graphs."""
        return graphs_on and (self.prefill_graphs == "auto" or bool(self.prefill_graphs))

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    def resolve_num_blocks(self, bytes_per_token: int, device: torch.device, blocks_per_seq: int) -> int:
        """Blocks for the KV pool: explicit, else what the memory budget holds, capped at what
        max_num_seqs full-length sequences could use (``blocks_per_seq``: the target's table and
        the drafter's own tables of one max_model_len sequence)."""
        if self.num_blocks is not None:
            return self.num_blocks
        if self.kv_cache_gb is not None:
            budget = self.kv_cache_gb * 2**30
        elif device.type == "cuda":
            budget = 0.4 * torch.cuda.mem_get_info(device)[0]
        else:
            budget = 2 * 2**30
        by_memory = int(budget // (bytes_per_token * self.block_size))
        return max(1, min(by_memory, self.max_num_seqs * blocks_per_seq))
