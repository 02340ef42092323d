"""One way to put a step into a CUDA graph for the benchmark scripts: warm it up on a side stream
(kernel compilation, allocator warm-up), then capture it once."""
from __future__ import annotations

import torch


def capture(step, warmup: int = 2, device=None):
    """(graph, static output) of ``step`` captured after ``warmup`` eager runs on a side stream."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out
