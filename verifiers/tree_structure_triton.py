"""The structure of a batch of draft trees from their parent pointers, in one launch (Triton).

`specdec.verifiers.tree.tree_structure` (the spec) derives parent index, child counts, depths
and ancestor bitmasks with ~40 small torch kernels (pointer jumping over ``[B, T]``); a
speculative step builds a `DraftTree` twice inside its CUDA graphs (the drafter's tree, the
verifier's), at ~2.3 us per kernel on an H100. Here one program per tree does the same pointer jumping in registers (``tl.gather``
along the node axis), so the results are exactly the reference's (integers, same algorithm).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor



@triton.jit
def _tree_structure_kernel(par_ptr, num_ptr, pidx_ptr, nchild_ptr, depth_ptr, mask_ptr, width,
                           BLOCK: tl.constexpr, STEPS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)  # [T] node index (as rows and, broadcast, as columns)
    ok = i < width
    par = tl.load(par_ptr + b * width + i, mask=ok, other=-1)  # [T] int64
    num = tl.load(num_ptr + b)
    linked = (i > 0) & (i < num) & (par >= 0) & (par < i)
    pidx = tl.where(linked, par, 0)
    children = (pidx[:, None] == i[None, :]) & linked[:, None]  # [child, node]
    nchild = tl.sum(children.to(tl.int64), axis=0)
    up = tl.where(linked, pidx, i).to(tl.int32)  # [T] the root and padding point to themselves
    one = tl.full([BLOCK], 1, tl.int64)
    mask = tl.where(i < num, one << i.to(tl.int64), 0)
    depth = linked.to(tl.int64)
    for _ in tl.static_range(STEPS):  # pointer jumping, gathers along the node axis in registers
        mask = mask | tl.gather(mask, up, 0)
        depth = depth + tl.gather(depth, up, 0)
        up = tl.gather(up, up, 0)
    tl.store(pidx_ptr + b * width + i, pidx, mask=ok)
    tl.store(nchild_ptr + b * width + i, nchild, mask=ok)
    tl.store(depth_ptr + b * width + i, depth, mask=ok)
    tl.store(mask_ptr + b * width + i, mask, mask=ok)


def tree_structure_triton(parents: Tensor, num_nodes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as `specdec.verifiers.tree.tree_structure`; ``parents [B, T]`` int64, T <= 64
    (`DraftTree` checks the sizes)."""
    parents = parents.contiguous().long()
    num_nodes = num_nodes.contiguous().long()
    batch, width = parents.shape
    out = torch.empty((4, batch, width), dtype=torch.long, device=parents.device)
    if batch and width:
        block = max(triton.next_power_of_2(width), 16)
        _tree_structure_kernel[(batch,)](parents, num_nodes, out[0], out[1], out[2], out[3], width,
                                         BLOCK=block, STEPS=max(width - 1, 0).bit_length(),
                                         num_warps=1)
    return out[0], out[1], out[2], out[3]
