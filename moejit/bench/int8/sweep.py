"""The INT8 sweep: :class:`moejit.bench.sweep.Sweep` with INT8 data hooks, plus the hybrid runner's per-stage
breakdown for every (shape, batch size).

Data: float expert weights are drawn once per shape (N(0, 1/K) for W1, N(0, 1/N) for W2: outputs of order 1), one
expert at a time, stored in bf16, and quantized from those same values into every layout the chosen backends read
(int8 per output channel, int8 128×128 blocks, e4m3 per output channel). Activations are N(0, 1) in ``--dtype``;
routing is the top-k of Gaussian logits (every slot routed). The error column of every backend is the relative
Frobenius error against the unquantized float32 layer on the float weights
(:func:`moejit.reference.moe_ref`): one yardstick for all quantization schemes.

Timing, the roofline columns (INT8 matmul rate and copy bandwidth), error/OOM/n-a handling and progress are the
base sweep's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from moejit.bench.backends import LayerInputs, QuantOpts
from moejit.bench.int8.backends import FLOAT, FP8_CHANNEL, INT8_BLOCK, INT8_CHANNEL, Int8Params, BLOCK_SHAPE
from moejit.bench.sweep import (STATUS_ERROR, STATUS_NA, STATUS_OK, STATUS_OOM, CellResult, Config, Record,
                                Sweep, SweepOptions, _short, input_sets, is_oom, make_routing, torch_dtype)

# The flag on the error column: relative error vs the *unquantized* float32 layer above which a cell is marked.
# Correct INT8/FP8 layers sit at 1-5% here (dynamic per-tensor INT8 of the SwiGLU intermediate is the worst,
# its heavy tail costs it resolution); a wrong scale, expert or dropped token costs O(1).
DEFAULT_TOLERANCE = 0.15
QUANT = QuantOpts(per_act_token=False, per_out_ch=True)  # the one "configuration" per shape (labels come per cell)


@dataclass
class Int8Inputs(LayerInputs):
    """One cell's inputs: the base fields hold the int8 per-channel layout; :attr:`variants` maps every layout
    name to ``(w1_q, w2_q, w1_scale, w2_scale)`` (and ``"float"`` to the float weights, first input set only)."""

    variants: dict = field(default_factory=dict)


@dataclass
class StageResult(Record):
    """One stage of the hybrid runner at one (shape, batch size): the JSON/CSV stage record."""

    model: str
    tp: int
    num_experts: int
    topk: int
    hidden: int
    intermediate: int
    batch_size: int
    dtype: str
    fused_permute_quant: bool
    fused_silu_quant: bool
    index: int
    stage: str
    status: str = STATUS_OK
    message: str = ""
    median_us: float | None = None
    p10_us: float | None = None
    p90_us: float | None = None
    mean_us: float | None = None
    share_pct: float | None = None
    method: str = ""


TOTAL_STAGE = "total"


def quantize_expert_variants(w1f, w2f, variants: Sequence[str]) -> dict:
    """Every requested layout of one expert's float weights ``w1f [1, 2N, K]``, ``w2f [1, K, N]``: name →
    ``(w1_q, w2_q, w1_scale, w2_scale)`` with a leading expert dimension of 1."""
    from moejit.moe.weights import quantize_weights_fp8, quantize_weights_int8, quantize_weights_int8_w8a8

    out = {}
    for v in variants:
        if v == INT8_CHANNEL:
            (q1, s1), (q2, s2) = quantize_weights_int8(w1f), quantize_weights_int8(w2f)
        elif v == INT8_BLOCK:
            (q1, s1), (q2, s2) = (quantize_weights_int8_w8a8(w1f, block_shape=BLOCK_SHAPE),
                                  quantize_weights_int8_w8a8(w2f, block_shape=BLOCK_SHAPE))
        elif v == FP8_CHANNEL:
            (q1, s1), (q2, s2) = (quantize_weights_fp8(w1f, per_out_ch=True),
                                  quantize_weights_fp8(w2f, per_out_ch=True))
        else:
            raise ValueError(f"unknown weight layout {v!r}")
        out[v] = (q1, q2, s1, s2)
    return out


class Int8Sweep(Sweep):
    """The INT8 benchmark's sweep. ``params`` is the hybrid format and switches; ``stage_timing`` adds the
    hybrid runner's per-stage breakdown (``stage_results``) after each batch size; ``profile_once`` wraps one
    eager forward of the first batch in cudaProfilerStart/Stop with NVTX ranges per stage."""

    def __init__(self, configs, backends, opts: SweepOptions, params: Int8Params, device="cuda", ceilings=None,
                 timer=None, progress=None, stage_timing: bool = True, profile_once: bool = False):
        kw = {} if progress is None else {"progress": progress}
        super().__init__(configs, backends, opts, device=device, ceilings=ceilings, timer=timer, rate_kind="int8",
                         **kw)
        self.params = params
        self.stage_timing = stage_timing
        self.profile_once = profile_once
        self.profiled = False
        self.stage_results: list[StageResult] = []
        self._stash = None
        from moejit.bench.int8.backends import variants_needed

        self.variants = variants_needed(self.backends)

    # -- cells carry their backend's quantization -----------------------------------------------------------------
    def _blank(self, cfg: Config, m: int, backend, status: str, message: str = "") -> CellResult:
        r = super()._blank(cfg, m, backend, status, message)
        spec = getattr(backend, "spec", None)
        if spec is not None:
            r.per_act_token, r.per_out_ch = spec.per_act_token, spec.per_out_ch
            r.act_scales = spec.act_scales
            if spec.name in ("hybrid", "triton-hybrid"):
                r.act_scales = (f"hybrid Q/F B={self.params.block_size} S_eff={self.params.s_eff} "
                                f"q_max={self.params.q_max}")
            elif spec.variant == INT8_BLOCK:
                r.per_out_ch = False
                r.act_scales += " × w 128×128 blocks"
        return r

    # -- data hooks -------------------------------------------------------------------------------------------------
    def make_weights(self, shape, per_out_ch: bool) -> list[dict]:
        import torch

        gen = torch.Generator(device=self.device).manual_seed(self.opts.seed)
        e, n, k = shape.num_experts, shape.intermediate, shape.hidden
        w1f = torch.empty((e, 2 * n, k), dtype=torch.bfloat16, device=self.device)
        w2f = torch.empty((e, k, n), dtype=torch.bfloat16, device=self.device)
        parts: dict[str, list] = {v: [] for v in self.variants}
        for i in range(e):
            w1f[i] = torch.randn((2 * n, k), generator=gen, device=self.device).mul_(1 / math.sqrt(k))
            w2f[i] = torch.randn((k, n), generator=gen, device=self.device).mul_(1 / math.sqrt(n))
            for v, quads in quantize_expert_variants(w1f[i:i + 1], w2f[i:i + 1], self.variants).items():
                parts[v].append(quads)
        first = {FLOAT: (w1f, w2f)}
        for v, per_expert in parts.items():
            first[v] = tuple(torch.cat([q[j] for q in per_expert]) for j in range(4))
        del parts
        sets = [first]
        n_sets = input_sets(shape, True, self.opts.ops_per_graph, self._l2_bytes(), self.opts.rotate and self._cuda())
        for _ in range(1, n_sets):  # copies at other addresses, so a replay does not run from L2
            sets.append({v: tuple(t.clone() for t in quad) for v, quad in first.items() if v != FLOAT})
        return sets

    def make_inputs(self, cfg: Config, m: int, weights: list[dict]):
        import torch

        shape = cfg.shape
        gen = torch.Generator(device=self.device).manual_seed(self.opts.seed * 1_000_003 + m)
        a = torch.randn((m, shape.hidden), generator=gen, device=self.device).to(torch_dtype(self.opts.dtype))
        topk_weights, topk_ids = make_routing(m, shape.num_experts, shape.topk, self.device, gen)
        experts_hit = float(torch.unique(topk_ids).numel())
        sets = []
        for i, w in enumerate(weights):
            x = (a, topk_weights, topk_ids) if i == 0 else (a.clone(), topk_weights.clone(), topk_ids.clone())
            base = w.get(INT8_CHANNEL) or next(q for v, q in w.items() if v != FLOAT)
            sets.append(Int8Inputs(x[0], base[0], base[1], x[1], x[2], base[2], base[3], variants=w))
        self._stash = sets[0]
        return sets, experts_hit

    def reference(self, cfg: Config, x: Int8Inputs):
        from moejit.reference import moe_ref

        w1f, w2f = x.variants[FLOAT]
        return moe_ref(x.a, w1f, w2f, x.topk_weights, x.topk_ids)

    # -- per-stage breakdown ----------------------------------------------------------------------------------------
    def _run_batch(self, cfg: Config, m: int, weights) -> None:
        self._stash = None
        try:
            super()._run_batch(cfg, m, weights)
            hybrid = next((b for b in self.backends if b.name == "hybrid"), None)
            if hybrid is not None and self.stage_timing:
                self._run_stages(cfg, m, hybrid)
        finally:
            self._stash = None

    def _stage_blank(self, cfg: Config, m: int, index: int, stage: str, status: str = STATUS_OK,
                     message: str = "") -> StageResult:
        s, p = cfg.shape, self.params
        return StageResult(model=s.name, tp=s.tp, num_experts=s.num_experts, topk=s.topk, hidden=s.hidden,
                           intermediate=s.intermediate, batch_size=m, dtype=self.opts.dtype,
                           fused_permute_quant=p.fused_permute_quant, fused_silu_quant=p.fused_silu_quant,
                           index=index, stage=stage, status=status, message=message)

    def _run_stages(self, cfg: Config, m: int, hybrid) -> None:
        from moejit.bench.int8.layers import stage_names

        p = self.params
        ok, reason = self.availability[hybrid.name]
        names = stage_names(p.fused_permute_quant, p.fused_silu_quant)
        if not ok or self._stash is None:
            status, msg = (STATUS_NA, reason) if not ok else (STATUS_ERROR, "no inputs (see the cell's error)")
            self.stage_results += [self._stage_blank(cfg, m, i, n, status, msg) for i, n in enumerate(names)]
            return
        label = f"{cfg.shape.name} TP={cfg.shape.tp} M={m}"
        self.progress("time", f"{label} hybrid: per-stage timing ({self.opts.iters} replays of one forward)", 0)
        try:
            rows = self.time_hybrid_stages(cfg, m, self._stash, label)
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            status = STATUS_OOM if is_oom(exc) else STATUS_ERROR
            rows = [self._stage_blank(cfg, m, i, n, status, _short(exc)) for i, n in enumerate(names)]
            self._free_memory()
        self.stage_results += rows

    def time_hybrid_stages(self, cfg: Config, m: int, x: Int8Inputs, label: str) -> list[StageResult]:
        """Per-stage µs of the hybrid runner on ``x`` (plus a ``total`` row); with ``profile_once``, the first call
        also profiles one eager forward."""
        from moejit.bench.int8.layers import hybrid_staged, profile_forward, time_stages

        p = self.params
        w1, w2, s1, s2 = x.variants[INT8_CHANNEL]
        staged = hybrid_staged(x.a, w1, w2, s1, s2, x.topk_weights, x.topk_ids, block_size=p.block_size,
                               super_group_size=p.super_group_size, q_max=p.q_max,
                               fused_silu_quant=p.fused_silu_quant, fused_permute_quant=p.fused_permute_quant)
        times = time_stages(staged, warmup=self.opts.warmup, iters=self.opts.iters)
        if self.profile_once and not self.profiled:
            self.profiled = True
            profile_forward(staged, f"moejit bench-int8 hybrid forward {label}")
        return stage_rows(self._stage_blank, cfg, m, times)


def stage_rows(blank, cfg, m, times) -> list[StageResult]:
    """StageResults (one per stage, then ``total``) from a :class:`moejit.bench.int8.layers.StageTimes`: median
    and p10–p90 per stage over the replays, the mean (means add up exactly), and the share of the total mean."""
    rows = []
    total_mean = times.total_mean
    for i, name in enumerate(times.names):
        r = blank(cfg, m, i, name)
        r.median_us, r.mean_us = times.median(i), times.mean(i)
        r.p10_us, r.p90_us = times.percentile(i, 0.10), times.percentile(i, 0.90)
        r.share_pct = 100.0 * r.mean_us / total_mean if total_mean > 0 else None
        r.method = times.method
        rows.append(r)
    t = blank(cfg, m, len(times.names), TOTAL_STAGE)
    t.median_us, t.mean_us = times.total_median, total_mean
    t.p10_us, t.p90_us = times.percentile(None, 0.10), times.percentile(None, 0.90)
    t.share_pct, t.method = 100.0, times.method
    rows.append(t)
    return rows


__all__ = ["DEFAULT_TOLERANCE", "Int8Inputs", "Int8Sweep", "QUANT", "StageResult", "TOTAL_STAGE",
           "quantize_expert_variants", "stage_rows", "STATUS_ERROR", "STATUS_NA", "STATUS_OK", "STATUS_OOM"]
