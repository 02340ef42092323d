"""Batch-invariant ops (``engine.exact=true``): each row's result is bitwise the same whatever
else is in the step — how many rows, which sequences, tree or chain, prefill chunk or decode.

Why ordinary ops are not: a GEMM library picks its kernel (and so the order in which it sums a
row's products) from the matrix shapes, so a token's hidden state differs in its last bits
between a one-token decode (M = 1) and a 33-row verify (M = 33); attention sums over the keys in
an order that depends on how the batch was padded and where the masked keys sit. In bf16 those
bits flip argmax near-ties and the texts part (Thinking Machines, "Defeating Nondeterminism in
LLM Inference", 2025, makes the same argument on GPUs). The remedy is the same here, in plain
torch, for the CPU (on a GPU, torch's CUDA GEMMs, reductions and scans pick their order by shape:
kernels/batch_invariant_triton.py has Triton kernels with a fixed order for the GEMMs, RMSNorm
and attention, which these functions dispatch to for CUDA tensors):

* `linear_bi`: the rows go through the GEMM in fixed tiles of ``TILE_ROWS`` rows for the dtype
  (the last one padded), one call per tile, so the library sees one shape only and sums every
  row alike; in bf16 on a weight packed once for that tile (`pack_weight`, oneDNN's layout: the
  GEMM no longer reorders the weight at every call, which was most of its cost);
* `attention_bi` (kernels/batch_invariant_attention.py): each query attends over its visible keys gathered in *logical* order (the
  positions its sequence would have them at, ancestors of a tree node included, masked siblings
  excluded); the softmax's sums run over blocks of ``KEY_BLOCK`` positions fixed from position 0,
  then across blocks in order, so a query at position p reads bitwise the same numbers, summed
  in the same order, as a one-token decode at p; the rows of one sequence run the blocks of
  their common prefix through shared operands (gathered once, not once per row);
* RMSNorm, rope and the elementwise ops are per row already (the model's plain formulas).

Tested by tests/kernels/test_batch_invariant.py (each row against the same row computed alone)
and end to end by tests/engine/test_exact.py (speculative output equals autoregressive output).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch_invariant_attention import KEY_BLOCK, ROW_CHUNK, KeyLists, attention_bi, key_lists  # noqa: F401 re-exported

# rows per GEMM call, per dtype: a tile costs about what one row costs (a decode pays little),
# measured on a CPU: float32 GEMMs of 1 or 2 rows take one path, 4 rows already cost ~1.5x;
# bf16 tiles of 16 rows cost about one row, about half of it on a packed weight (`pack_weight`)
TILE_ROWS = {torch.float32: 2, torch.float64: 2}
DEFAULT_TILE_ROWS = 16


@dataclass
class PackedWeight:
    """A weight reordered once for the tile's GEMM (oneDNN's blocked layout for ``TILE_ROWS``
    rows), so that a call no longer reorders it: a bf16 tile then costs about half a plain
    one-row GEMM. Holds the source's storage, so a matching pointer is the same memory."""
    data: Tensor  # opaque oneDNN tensor
    storage: torch.UntypedStorage  # the source weight's (kept alive: no other tensor gets its memory)
    key: tuple  # the source's (data_ptr, _version, shape, stride) when packed

    def packs(self, weight: Tensor) -> bool:
        """Still ``weight``'s values: not reloaded in place (that bumps ``_version``), moved,
        cast or replaced since."""
        return self.key == (weight.data_ptr(), weight._version, weight.shape, weight.stride())


def pack_weight(weight: Tensor) -> Optional[PackedWeight]:
    """``weight [M, K]`` packed for `linear_bi` where that pays: bf16 on a CPU whose oneDNN runs
    bf16 GEMMs (float32 tiles of 2 rows run faster unpacked). None elsewhere."""
    if weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        with torch.no_grad():
            data = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), DEFAULT_TILE_ROWS)
    except (AttributeError, RuntimeError):  # a torch build without these ops: unpacked tiles
        return None
    return PackedWeight(data, weight.untyped_storage(), (weight.data_ptr(), weight._version, weight.shape, weight.stride()))


def linear_bi(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
              packed: Optional[PackedWeight] = None) -> Tensor:
    """``x [N, K] @ weight [M, K]^T (+ bias)`` -> ``[N, M]``, row i's result independent of N.
    ``packed``: `pack_weight(weight)`, used while it still `packs` the weight (a caller passes it
    always or never for one weight: the two ways may round differently on another CPU)."""
    if x.is_cuda:  # a Triton GEMM whose order is fixed by its code (batch_invariant_triton.py)
        from .batch_invariant_triton import linear_bi_cuda

        return linear_bi_cuda(x, weight, bias)
    n, rows = x.shape[0], TILE_ROWS.get(x.dtype, DEFAULT_TILE_ROWS)
    tiles = max(1, -(-n // rows))
    xp = F.pad(x, (0, 0, 0, tiles * rows - n)) if n != tiles * rows else x.contiguous()  # [tiles * rows, K]
    use = packed is not None and x.dtype == weight.dtype and packed.packs(weight)  # bf16: 16-row tiles
    wt = weight.t()

    def tile(a: Tensor) -> Tensor:  # [rows, K] -> [rows, M]
        return torch.ops.mkldnn._linear_pointwise(a, packed.data, None, "none", [None], "") if use else a @ wt

    if tiles == 1:
        out = tile(xp)
    else:  # each tile's rows land in the output (no concatenation afterwards)
        out = xp.new_empty(tiles * rows, weight.shape[0])
        for i in range(0, tiles * rows, rows):
            if use:
                out[i:i + rows] = tile(xp[i:i + rows])
            else:
                torch.mm(xp[i:i + rows], wt, out=out[i:i + rows])
    out = out[:n] if n != tiles * rows else out
    return out if bias is None else out + bias
