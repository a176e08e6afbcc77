"""CUDA-graph timing, the seed's method: capture ``ops_per_graph`` calls in one graph, warm up, replay ``iters``
times between CUDA events, and report µs per call (median and p10–p90 spread over the replays).

Inputs larger than L2 are the caller's business, with one helper: pass several equivalent callables (each over
its own copy of the inputs) and the captured calls rotate through them, so a shape whose weights fit in L2 is not
timed hot. ``profile=True`` wraps exactly one extra timed replay in cudaProfilerStart/Stop inside NVTX ranges, so
``nsys profile -c cudaProfilerApi`` / ``ncu --profile-from-start off`` capture one replay and nothing else.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Sequence, Union

Fn = Callable[[], object]


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

    @property
    def spread_us(self) -> float:
        return self.p90_us - self.p10_us


def summarize(samples_us: list[float]) -> Timing:
    """Median and the 10th/90th percentiles (nearest rank) of per-call times."""
    if not samples_us:
        raise ValueError("no samples")
    ordered = sorted(samples_us)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * (len(ordered) - 1))))]

    return Timing(statistics.median(ordered), pct(0.10), pct(0.90), tuple(samples_us))


@contextlib.contextmanager
def nvtx_range(name: str, enabled: bool = True):
    """An NVTX range (a no-op when disabled or when CUDA is not available)."""
    if not enabled:
        yield
        return
    import torch

    if not torch.cuda.is_available():
        yield
        return
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


@contextlib.contextmanager
def cuda_profiler_range(name: str):
    """cudaProfilerStart/Stop around the block, inside an NVTX range named ``name``."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    try:
        with nvtx_range(name):
            yield
        torch.cuda.synchronize()
    finally:
        torch.cuda.cudart().cudaProfilerStop()


def _as_list(fn: Union[Fn, Sequence[Fn]]) -> list[Fn]:
    fns = [fn] if callable(fn) else list(fn)
    if not fns:
        raise ValueError("nothing to time")
    return fns


def spin_gpu(seconds: float = 1.0) -> None:
    """Keep the GPU busy with bf16 matmuls for about ``seconds`` so that its clocks are up before the first timed
    call (a benchmark's first cell otherwise ran up to 3% slower than the same cell timed later in the process)."""
    import time

    import torch

    if seconds <= 0:
        return
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def time_cuda_graph(fn: Union[Fn, Sequence[Fn]], ops_per_graph: int = 10, warmup: int = 5, iters: int = 50,
                    stream=None, profile: bool = False, label: str = "moejit") -> Timing:
    """Time ``fn`` (which must be CUDA-graph capturable) as µs per call.

    ``fn`` may be a list of equivalent callables over different input copies: call ``i`` of the graph runs
    ``fn[i % len(fn)]``. Each callable runs once eagerly on a side stream first (lazy init, JIT loads, Triton
    compiles), then ``ops_per_graph`` calls are captured in a graph; the graph is replayed ``warmup`` times, then
    ``iters`` times with a CUDA event pair around each replay. With ``profile``, one more replay runs inside
    cudaProfilerStart/Stop in an NVTX range ``label`` (not counted in the samples), followed by one eager call.
    """
    import torch

    if ops_per_graph < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need ops_per_graph >= 1, iters >= 1, warmup >= 0 (got {ops_per_graph}, {iters}, "
                         f"{warmup})")
    fns = _as_list(fn)
    stream = stream or torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(stream):
            for f in fns:
                f()
            stream.synchronize()
            with torch.cuda.graph(graph, stream=stream):
                for i in range(ops_per_graph):
                    fns[i % len(fns)]()
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
        if profile:
            # One replay (the kernels exactly as timed), then one eager call, so that NVTX ranges the layer
            # pushes per stage (they are not recorded inside a graph) show up too.
            with cuda_profiler_range(label):
                with nvtx_range(f"graph replay x{ops_per_graph}"):
                    graph.replay()
                with nvtx_range("eager call"):
                    fns[0]()
    finally:
        del graph
    return summarize(samples)
