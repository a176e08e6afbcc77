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
from dataclasses import dataclass, field
from typing import Callable

import torch


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
# The hybrid runner, stage by stage
# ---------------------------------------------------------------------------------------------------------------

def stage_names(fused_permute_quant: bool, fused_silu_quant: bool) -> list[str]:
    """The hybrid runner's stages for one switch setting, in order."""
    first = ["permute+quant (fused)"] if fused_permute_quant else ["permute", "quant"]
    act = ["SiLU+quant (fused)"] if fused_silu_quant else ["SiLU·mul", "quant"]
    return first + ["GEMM1"] + act + ["GEMM2", "unpermute"]


@dataclass
class StagedForward:
    """The hybrid runner as a list of ``(name, fn)`` stages sharing :attr:`state`; running them in order computes
    exactly what :func:`moejit.ops.cutlass_moe_int8_hybrid` computes (same ops, same arguments, same order)."""

    stages: list[tuple[str, Callable[[], None]]]
    state: dict = field(default_factory=dict)

    def __call__(self, mark: Callable[[int], None] | None = None) -> torch.Tensor:
        """Run every stage; ``mark(i)`` is called before stage 0 (i = 0) and after stage i - 1 (i = 1 … n)."""
        if mark is not None:
            mark(0)
        for i, (_, fn) in enumerate(self.stages):
            fn()
            if mark is not None:
                mark(i + 1)
        return self.state["out"]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.stages]


def hybrid_staged(hidden, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, *, block_size: int = 128,
                  super_group_size: int = 256, q_max: int = 16, fused_silu_quant: bool = True,
                  fused_permute_quant: bool = False) -> StagedForward:
    """:func:`moejit.ops.cutlass_moe_int8_hybrid` split into stages (see :func:`stage_names`). The switches are
    explicit here (no environment lookup); inputs are used as given (validate them with one call of the runner).
    """
    from moejit.int8.format import HybridFormat
    from moejit.int8.quant import int8_hybrid_permute_quant, int8_hybrid_quant, int8_hybrid_silu_quant
    from moejit.moe import int8_hybrid
    from moejit.ops import common

    fmt = HybridFormat(block_size, super_group_size, q_max)
    b, s, qm, s_eff = fmt.block_size, fmt.super_group_size, fmt.q_max, fmt.s_eff
    m = hidden.shape[0]
    num_experts = w13_q.shape[0]
    topk = topk_ids.shape[1]
    dtype = hidden.dtype
    mm = int8_hybrid._grouped_mm()
    st: dict = {}
    stages: list[tuple[str, Callable[[], None]]] = []

    if fused_permute_quant:
        def permute_quant():
            _, st["offsets"], sort_idx, st["inv_idx"] = common.moe_permute(hidden.new_empty((m, 0)), topk_ids,
                                                                           num_experts)
            st["a1"] = int8_hybrid_permute_quant(hidden, sort_idx, topk, b, s, qm)
        stages.append(("permute+quant (fused)", permute_quant))
    else:
        def permute():
            st["rows"], st["offsets"], _, st["inv_idx"] = common.moe_permute(hidden, topk_ids, num_experts)

        def quant():
            st["a1"] = int8_hybrid_quant(st["rows"], b, s, qm)
        stages += [("permute", permute), ("quant", quant)]

    def gemm1():
        a1, a1_q, a1_f = st["a1"]
        st["h"] = mm(a1, a1_q, a1_f, w13_q, w13_scale, st["offsets"], b, s_eff, qm, dtype)
    stages.append(("GEMM1", gemm1))

    if fused_silu_quant:
        def silu_quant():
            st["a2"] = int8_hybrid_silu_quant(st["h"], b, s, qm)
        stages.append(("SiLU+quant (fused)", silu_quant))
    else:
        def silu():
            st["act"] = common.silu_and_mul(st["h"])

        def quant2():
            st["a2"] = int8_hybrid_quant(st["act"], b, s, qm)
        stages += [("SiLU·mul", silu), ("quant", quant2)]

    def gemm2():
        a2, a2_q, a2_f = st["a2"]
        st["y"] = mm(a2, a2_q, a2_f, w2_q, w2_scale, st["offsets"], b, s_eff, qm, dtype)
    stages.append(("GEMM2", gemm2))

    def unpermute():
        st["out"] = common.moe_unpermute(st["y"], topk_weights, st["inv_idx"])
    stages.append(("unpermute", unpermute))
    return StagedForward(stages, st)


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
