"""GPU pipelines only the INT8 benchmark needs: the CUTLASS per-tensor INT8 layer, the hybrid runner split into its
stages, and per-stage timing of one forward captured in a CUDA graph.

Per-stage timing (:func:`time_stages`): one forward of the hybrid runner is captured in a CUDA graph with a CUDA
event recorded before the first stage and after every stage (events created with ``external=True``, so each
``record()`` during capture becomes an event-record node of the graph instead of an internal cross-stream
dependency). Each replay therefore measures every stage and the whole forward on the same run: the stage times of
one replay add up exactly to its total. The graph is replayed ``iters`` times (after ``warmup``), synchronizing
after each replay to read the events. If this torch or driver cannot do that, the stages are timed one by one in
separate graphs (:func:`moejit.bench.timing.time_cuda_graph`) and the total is their sum; the result says which
method was used.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from moejit.moe.int8_hybrid import StagedForward, hybrid_stages, stage_names  # noqa: F401 (re-exported)


def cutlass_moe_int8_per_tensor(hidden: torch.Tensor, w13_q: torch.Tensor, w2_q: torch.Tensor,
                                w13_scale: torch.Tensor, w2_scale: torch.Tensor, topk_weights: torch.Tensor,
                                topk_ids: torch.Tensor) -> torch.Tensor:
    """INT8 MoE layer with CUTLASS grouped GEMMs and dynamic per-tensor activation scales (the seed's "INT8
    per-tensor" comparison point): permute → per-tensor INT8 quant (Triton) → ``int8_grouped_mm`` (int8 per-channel
    weights ``[E, 2N]``) → SiLU·mul fused with per-tensor quant → ``int8_grouped_mm`` (``[E, K]``) → weighted
    unpermute. Dynamic per-tensor scales take the amax over *all* permuted rows, so every slot must be routed
    (ids in ``[0, E)``; no dropped slots) — true for the benchmark's routing. No host synchronization. Returns
    ``[M, K]`` in ``hidden.dtype``."""
    from moejit.ops import common
    from moejit.ops.int8 import int8_grouped_mm
    from moejit.triton.quant import quantize_activations

    e = w13_q.shape[0]
    rows, offsets, _, inv_idx = common.moe_permute(hidden, topk_ids, e)
    a_q, a_s = quantize_activations(rows, torch.int8)
    h = int8_grouped_mm(a_q, a_s, w13_q, w13_scale, offsets, hidden.dtype)
    i_q, i_s = quantize_activations(h, torch.int8, silu_and_mul=True)
    y = int8_grouped_mm(i_q, i_s, w2_q, w2_scale, offsets, hidden.dtype)
    return common.moe_unpermute(y, topk_weights, inv_idx)


# ---------------------------------------------------------------------------------------------------------------
# The hybrid runner, stage by stage (the stages are the runner's own: moejit.moe.int8_hybrid)
# ---------------------------------------------------------------------------------------------------------------

def hybrid_staged(hidden, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, *, block_size: int = 128,
                  super_group_size: int = 256, q_max: int = 16, fused_silu_quant: bool = True,
                  fused_permute_quant: bool = False) -> StagedForward:
    """:func:`moejit.ops.cutlass_moe_int8_hybrid`'s own stages (:func:`moejit.moe.int8_hybrid.hybrid_stages`, the
    code the runner runs). The switches are explicit here (no environment lookup); inputs are used as given
    (validate them with one call of the runner)."""
    from moejit.int8.format import HybridFormat

    return hybrid_stages(hidden, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids,
                         HybridFormat(block_size, super_group_size, q_max), fused_silu_quant, fused_permute_quant)


# ---------------------------------------------------------------------------------------------------------------
# Per-stage timing
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class StageTimes:
    """Per-replay times: ``samples[r][i]`` µs of stage i in replay r; ``totals[r]`` µs of the whole forward."""

    names: list[str]
    samples: list[list[float]]
    totals: list[float]
    method: str

    def median(self, i: int) -> float:
        return statistics.median(s[i] for s in self.samples)

    def mean(self, i: int) -> float:
        return statistics.fmean(s[i] for s in self.samples)

    def percentile(self, i: int | None, p: float) -> float:
        values = sorted(self.totals if i is None else [s[i] for s in self.samples])
        return values[min(len(values) - 1, max(0, round(p * (len(values) - 1))))]

    @property
    def total_median(self) -> float:
        return statistics.median(self.totals)

    @property
    def total_mean(self) -> float:
        return statistics.fmean(self.totals)


def _timing_event():
    return torch.cuda.Event(enable_timing=True, external=True)


def time_stages(staged: StagedForward, warmup: int = 10, iters: int = 50, stream=None) -> StageTimes:
    """Time every stage of ``staged`` inside one captured forward (module docstring); falls back to timing the
    stages in separate graphs when events cannot be recorded inside a graph here."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got {iters}, {warmup}")
    stream = stream or torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        staged()  # JIT loads, Triton compiles, allocator warm-up: outside the capture
    stream.synchronize()
    try:
        return _time_stages_in_graph(staged, warmup, iters, stream)
    except Exception as exc:  # noqa: BLE001 - e.g. a torch without Event(external=...): use the fallback
        torch.cuda.synchronize()
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        return _time_stages_separately(staged, warmup, iters, reason)


def _time_stages_in_graph(staged: StagedForward, warmup: int, iters: int, stream) -> StageTimes:
    n = len(staged.stages)
    events = [_timing_event() for _ in range(n + 1)]
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            staged(mark=lambda i: events[i].record())
        torch.cuda.current_stream().wait_stream(stream)
        for _ in range(warmup):
            graph.replay()
        torch.cuda.synchronize()
        samples, totals = [], []
        for _ in range(iters):
            graph.replay()
            torch.cuda.synchronize()
            stage_ms = [events[i].elapsed_time(events[i + 1]) for i in range(n)]
            samples.append([t * 1000.0 for t in stage_ms])
            totals.append(events[0].elapsed_time(events[n]) * 1000.0)
    finally:
        del graph
    return StageTimes(staged.names, samples, totals, "events inside one captured forward")


def _time_stages_separately(staged: StagedForward, warmup: int, iters: int, reason: str) -> StageTimes:
    from moejit.bench.timing import time_cuda_graph

    staged()  # repopulate the state eagerly (a failed capture may have left graph-pool tensors in it)
    torch.cuda.synchronize()
    per_stage = []
    for _, fn in staged.stages:  # the state holds every stage's inputs from that forward
        per_stage.append(list(time_cuda_graph(fn, ops_per_graph=1, warmup=warmup, iters=iters).samples_us))
    samples = [list(row) for row in zip(*per_stage)]
    totals = [sum(row) for row in samples]
    return StageTimes(staged.names, samples, totals, f"separate graphs per stage (events in a graph failed: "
                                                      f"{reason})")


def profile_forward(staged: StagedForward, label: str) -> None:
    """Run one eager forward inside cudaProfilerStart/Stop with an NVTX range per stage (for ``nsys profile -c
    cudaProfilerApi`` / ``ncu --profile-from-start off``)."""
    from moejit.bench.timing import cuda_profiler_range

    with cuda_profiler_range(label):
        for i, (name, fn) in enumerate(staged.stages):
            torch.cuda.nvtx.range_push(f"{i + 1}. {name}")
            try:
                fn()
            finally:
                torch.cuda.nvtx.range_pop()
