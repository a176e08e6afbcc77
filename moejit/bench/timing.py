"""CUDA-graph timing, the seed's method: capture ``ops_per_graph`` calls in one graph, warm up, replay ``iters``
times between CUDA events, and report µs per call (median and p10–p90 spread over the replays)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    samples_us: tuple[float, ...]

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples_us")
        return d


def summarize(samples_us: list[float]) -> Timing:
    """Median and the 10th/90th percentiles (nearest rank) of per-call times."""
    if not samples_us:
        raise ValueError("no samples")
    ordered = sorted(samples_us)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * (len(ordered) - 1))))]

    return Timing(statistics.median(ordered), pct(0.10), pct(0.90), tuple(samples_us))


def time_cuda_graph(fn: Callable[[], object], ops_per_graph: int = 10, warmup: int = 5, iters: int = 50,
                    stream=None) -> Timing:
    """Time ``fn`` (which must be CUDA-graph capturable) as µs per call.

    ``fn`` runs once eagerly on a side stream (lazy init, JIT loads), then ``ops_per_graph`` calls are captured in a
    graph; the graph is replayed ``warmup`` times, then ``iters`` times with a CUDA event pair around each replay.
    """
    import torch

    stream = stream or torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        fn()
        stream.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(ops_per_graph):
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) * 1000.0 / ops_per_graph for s, e in zip(starts, ends)]
    del graph
    return summarize(samples)
