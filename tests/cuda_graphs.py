"""CUDA-graph capture for the GPU tests: the same warm-up and side stream everywhere."""

import torch


def capture(fn):
    """Run ``fn`` once on a side stream (lazy initialization, as torch recommends before a capture), then capture
    one call of it into a graph. Returns ``(graph, captured)``, ``captured`` being what the captured call returned:
    the tensors a replay rewrites."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        with torch.cuda.graph(graph, stream=stream):
            captured = fn()
    torch.cuda.current_stream().wait_stream(stream)
    return graph, captured
