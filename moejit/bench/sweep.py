"""The sweep: plan the cells (model × TP × quantization × batch size × backend), build each configuration's FP8
weights one expert at a time, then prepare, check and time every cell, recording failures in the cell.

Cell states: ``ok`` (timed; ``error_ok`` False when its output is out of tolerance), ``n/a`` (the backend cannot run
here: missing from the checkout, wrong GPU), ``error`` (the backend raised; the message is kept), ``OOM`` (the
configuration or the cell did not fit; the sweep goes on).

Everything device-specific is injectable (``device``, ``timer``, ``ceilings``), so the sweep logic runs on a CPU in
the tests with fake backends.
"""

from __future__ import annotations

import gc
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, Sequence

from moejit.bench import roofline
from moejit.bench.backends import Backend, LayerInputs, QuantOpts
from moejit.bench.models import ModelShape
from moejit.bench.timing import Timing, nvtx_range, time_cuda_graph

DEFAULT_BATCH_SIZES = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)  # the seed's
DEFAULT_TP_SIZES = (1,)
DEFAULT_OPTS = (False, True)  # --per-act-token-opts / --per-out-ch-opts
# Relative Frobenius error allowed against the float32 reference that simulates the exact quantization. The
# reference and a correct kernel differ only by fp32 accumulation order and where the GEMM1 output is rounded
# (bf16/fp16 vs kept in fp32 by a fused kernel): that moves a few percent of the intermediate's FP8 codes by one
# step (≤ 1/16 relative), ≈ 1e-2 on the output at worst; measured correct kernels sit near 1e-3. A wrong scale,
# a wrong expert or a dropped token costs O(1), far above.
DEFAULT_TOLERANCE = 3e-2
ASSUMED_L2_BYTES = 50 * 2**20  # H100's L2, for plans made without a GPU

STATUS_OK, STATUS_NA, STATUS_ERROR, STATUS_OOM = "ok", "n/a", "error", "OOM"


@dataclass(frozen=True)
class Config:
    """One table: a TP-sharded model shape under one quantization choice."""

    shape: ModelShape
    quant: QuantOpts

    @property
    def title(self) -> str:
        return f"{self.shape.name} · TP={self.shape.tp} · {self.quant.label}"

    @property
    def weight_key(self) -> tuple:
        """Configurations sharing this key share their weights (activation quantization does not touch them)."""
        return (self.shape, self.quant.per_out_ch)


@dataclass
class SweepOptions:
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES
    ops_per_graph: int = 10
    warmup: int = 5
    iters: int = 100
    check: bool = True
    tolerance: float = DEFAULT_TOLERANCE
    profile: bool = False
    act_scales: str = "static"  # per-tensor activations: "static" (calibrated scales given) or "dynamic"
    dtype: str = "float16"
    seed: int = 0
    rotate: bool = True  # rotate input copies when a configuration's weights would sit in L2


class Record:
    """A dataclass record that exports as one JSON/CSV row: its field names (the columns) and its values."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CellResult(Record):
    """One cell's record (the JSON/CSV row, without the environment columns)."""

    model: str
    tp: int
    num_experts: int
    topk: int
    hidden: int
    intermediate: int
    per_act_token: bool
    per_out_ch: bool
    batch_size: int
    backend: str
    status: str = STATUS_OK
    message: str = ""
    median_us: float | None = None
    p10_us: float | None = None
    p90_us: float | None = None
    floor_us: float | None = None
    roofline_pct: float | None = None
    bound: str = ""
    tflops: float | None = None
    gbps: float | None = None
    experts_hit: float | None = None
    bytes: float | None = None
    flops: float | None = None
    error: float | None = None
    tolerance: float | None = None
    error_ok: bool | None = None
    input_sets: int = 1
    dtype: str = ""
    act_scales: str = ""

    @property
    def usable(self) -> bool:
        """Timed and not flagged: the only cells that may count as fast."""
        return self.status == STATUS_OK and self.median_us is not None and self.error_ok is not False


def make_configs(shapes: Iterable[ModelShape], tp_sizes: Iterable[int], per_act_token_opts: Iterable[bool],
                 per_out_ch_opts: Iterable[bool], limit_k: Iterable[int] = (), limit_n: Iterable[int] = ()
                 ) -> list[Config]:
    """Every (model, TP, quantization) configuration. ``shard`` raises on a TP that does not divide a model.
    ``limit_k``/``limit_n`` keep only shapes whose hidden size K / per-GPU intermediate size N is listed (the
    seed's filters). Order: model, TP, per-out-channel, per-act-token (weights are reused within a model/TP/w-scale
    group)."""
    limit_k, limit_n = set(limit_k), set(limit_n)
    configs = []
    for base in shapes:
        for tp in tp_sizes:
            shape = base.shard(tp)
            if (limit_k and shape.hidden not in limit_k) or (limit_n and shape.intermediate not in limit_n):
                continue
            for per_out_ch in per_out_ch_opts:
                for per_act_token in per_act_token_opts:
                    configs.append(Config(shape, QuantOpts(per_act_token=bool(per_act_token),
                                                           per_out_ch=bool(per_out_ch))))
    return list(dict.fromkeys(configs))


# ---------------------------------------------------------------------------------------------------------------
# Memory plan
# ---------------------------------------------------------------------------------------------------------------

def weight_bytes(shape: ModelShape, per_out_ch: bool) -> int:
    """FP8 W1 [E, 2N, K] + W2 [E, K, N] and their float32 scales."""
    scales = shape.num_experts * ((2 * shape.intermediate + shape.hidden) if per_out_ch else 2) * 4
    return shape.weight_elements() + scales


def activation_bytes(shape: ModelShape, m: int, act_bytes: int = 2) -> int:
    """≈ what one call allocates beyond the weights: input and output [M, K], routing, and an unfused layer's
    per-row buffers (FP8 input rows, GEMM1 output [M·topk, 2N], SiLU output and its FP8 copy, GEMM2 output)."""
    k, n, rows = shape.hidden, shape.intermediate, m * shape.topk
    io = 2 * m * k * act_bytes + m * shape.topk * 8
    per_row = k + 2 * n * act_bytes + n * act_bytes + n + k * act_bytes
    return io + rows * per_row


def input_sets(shape: ModelShape, per_out_ch: bool, ops_per_graph: int, l2_bytes: int, rotate: bool = True) -> int:
    """How many copies of the inputs to rotate through so that one graph replay does not run from L2: enough
    copies to span 3× the L2 size, at most ``ops_per_graph``."""
    if not rotate:
        return 1
    per_set = weight_bytes(shape, per_out_ch)
    return max(1, min(ops_per_graph, math.ceil(3 * l2_bytes / per_set)))


@dataclass(frozen=True)
class PlanRow:
    config: Config
    batch_size: int
    backends: tuple[str, ...]
    weight_bytes: int
    activation_bytes: int
    input_sets: int

    @property
    def total_bytes(self) -> int:
        return self.input_sets * (self.weight_bytes + self.activation_bytes)


def plan_rows(configs: Sequence[Config], batch_sizes: Sequence[int], backends: Sequence[str], ops_per_graph: int,
              l2_bytes: int = ASSUMED_L2_BYTES, rotate: bool = True, act_bytes: int = 2) -> list[PlanRow]:
    rows = []
    for cfg in configs:
        wb = weight_bytes(cfg.shape, cfg.quant.per_out_ch)
        sets = input_sets(cfg.shape, cfg.quant.per_out_ch, ops_per_graph, l2_bytes, rotate)
        for m in batch_sizes:
            rows.append(PlanRow(cfg, m, tuple(backends), wb, activation_bytes(cfg.shape, m, act_bytes), sets))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------

def torch_dtype(name: str):
    import torch

    return {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
            "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name]


def make_fp8_weights(num_experts: int, n_out: int, k_in: int, per_out_ch: bool, device, generator,
                     std: float | None = None):
    """Random expert weights ``[E, n_out, k_in]`` generated straight into FP8, one expert at a time (never a full
    16-bit copy), quantized by :func:`moejit.ops.quantize_weights_fp8`: scales ``[E]`` per expert or ``[E, n_out]``
    per output channel. ``std`` defaults to ``1/sqrt(k_in)`` (outputs of order 1)."""
    import torch

    from moejit.moe.weights import quantize_weights_fp8
    from moejit.reference import FP8_DTYPE

    std = 1.0 / math.sqrt(k_in) if std is None else std
    q = torch.empty((num_experts, n_out, k_in), dtype=FP8_DTYPE, device=device)
    scale = torch.empty((num_experts, n_out) if per_out_ch else (num_experts,), dtype=torch.float32, device=device)
    for e in range(num_experts):
        w = torch.randn((1, n_out, k_in), generator=generator, device=device, dtype=torch.float32).mul_(std)
        q[e:e + 1], s = quantize_weights_fp8(w, per_out_ch=per_out_ch)
        scale[e] = s[0]
        del w, s
    return q, scale


def make_routing(m: int, num_experts: int, topk: int, device, generator):
    """Uniform random routing: top-k of Gaussian logits (distinct experts per token), softmax weights over the
    chosen k. Returns ``(topk_weights float32 [M, topk], topk_ids int32 [M, topk])``."""
    import torch

    logits = torch.randn((m, num_experts), generator=generator, device=device, dtype=torch.float32)
    vals, ids = torch.topk(logits, topk, dim=-1)
    return torch.softmax(vals, dim=-1), ids.to(torch.int32)


def calibrate_static_scales(a, w1_q, w1_scale, topk_ids):
    """Static per-tensor activation scales as a calibrated checkpoint would carry them: ``a1 = amax(a)/448`` and
    ``a2 = amax(SiLU(gate)·up)/448`` over this batch, the intermediate computed in float32 from the FP8-quantized
    input (so no value is clamped at run time)."""
    import torch
    import torch.nn.functional as F

    from moejit.reference import FP8_MAX, MIN_SCALE, dequant_weight_ref, fp8_dequant_ref, fp8_quant_ref

    a1 = (a.float().abs().amax() / FP8_MAX).clamp(min=MIN_SCALE).reshape(1)
    a_dq = fp8_dequant_ref(*fp8_quant_ref(a, scale=a1))
    amax2 = torch.zeros((), dtype=torch.float32, device=a.device)
    for e in torch.unique(topk_ids).tolist():
        tokens = torch.nonzero((topk_ids == e).any(dim=-1)).flatten()
        h = a_dq[tokens] @ dequant_weight_ref(w1_q[e], w1_scale[e]).t()
        n = h.shape[1] // 2
        inter = (F.silu(h[:, :n]) * h[:, n:]).to(a.dtype).float()
        amax2 = torch.maximum(amax2, inter.abs().amax())
    a2 = (amax2 / FP8_MAX).clamp(min=MIN_SCALE).reshape(1)
    return a1, a2


def describe_cell(r: CellResult) -> str:
    """One line for a finished cell (the progress log)."""
    quant = QuantOpts(r.per_act_token, r.per_out_ch).short
    head = f"{r.model} TP={r.tp} {quant} M={r.batch_size} {r.backend}: "
    if r.status != STATUS_OK or r.median_us is None:
        return head + r.status + (f" ({r.message})" if r.message else "")
    text = head + f"{r.median_us:.1f} µs (p10–p90 {r.p10_us:.1f}–{r.p90_us:.1f})"
    if r.roofline_pct is not None:
        text += f", {r.roofline_pct:.0f}% of roofline"
    if r.error is not None:
        text += f", error {r.error:.2e}" + (" OUT OF TOLERANCE" if r.error_ok is False else "")
    return text


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _short(exc: BaseException, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------------

ProgressFn = Callable[[str, str, int], None]  # (phase, what, advance)


def _no_progress(phase: str, what: str, advance: int) -> None:
    return None


class Sweep:
    """Runs the cells of ``configs × opts.batch_sizes × backends``; :meth:`run` returns one
    :class:`CellResult` per cell, in plan order.

    Another benchmark (e.g. INT8) reuses it by subclassing the three data hooks — :meth:`make_weights` (one list
    entry per rotated input copy), :meth:`make_inputs` (the per-batch-size :class:`LayerInputs` copies and the
    distinct experts hit) and :meth:`reference` (the float32 output to check against) — passing its own
    :class:`~moejit.bench.backends.Backend` objects and ``rate_kind`` (the matmul ceiling the roofline uses, and
    the weight byte size). Timing, error/OOM/n/a handling, roofline columns and progress stay the same.
    """

    def __init__(self, configs: Sequence[Config], backends: Sequence[Backend], opts: SweepOptions,
                 device="cuda", ceilings: roofline.Ceilings | None = None, timer=None,
                 progress: ProgressFn = _no_progress, rate_kind: str = "fp8"):
        self.configs, self.backends, self.opts = list(configs), list(backends), opts
        self.device, self.ceilings, self.progress, self.rate_kind = device, ceilings, progress, rate_kind
        self.timer = timer or time_cuda_graph
        self.results: list[CellResult] = []
        self.interrupted = False
        self.stopped: str | None = None  # why the sweep stopped early on an error outside any cell
        self.availability = {b.name: b.available() for b in self.backends}

    @property
    def total_cells(self) -> int:
        return len(self.configs) * len(self.opts.batch_sizes) * len(self.backends)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _blank(self, cfg: Config, m: int, backend: Backend, status: str, message: str = "") -> CellResult:
        s = cfg.shape
        return CellResult(model=s.name, tp=s.tp, num_experts=s.num_experts, topk=s.topk, hidden=s.hidden,
                          intermediate=s.intermediate, per_act_token=cfg.quant.per_act_token,
                          per_out_ch=cfg.quant.per_out_ch, batch_size=m, backend=backend.name, status=status,
                          message=message, dtype=self.opts.dtype, act_scales=self._act_scales(cfg))

    def _act_scales(self, cfg: Config) -> str:
        return "dynamic per-token" if cfg.quant.per_act_token else f"{self.opts.act_scales} per-tensor"

    def _emit(self, result: CellResult) -> None:
        self.results.append(result)
        self.progress("done", describe_cell(result), 1)

    def _fill_all(self, cfg: Config, status: str, message: str, batch_sizes=None) -> None:
        for m in batch_sizes if batch_sizes is not None else self.opts.batch_sizes:
            for b in self.backends:
                ok, reason = self.availability[b.name]
                self._emit(self._blank(cfg, m, b, status if ok else STATUS_NA, message if ok else reason))

    def _cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def _free_memory(self) -> None:
        if self._cuda():
            import torch

            gc.collect()
            try:
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - a sticky CUDA error (a kernel fault): the next cell reports it
                pass

    def _l2_bytes(self) -> int:
        if self._cuda():
            import torch

            return int(getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", ASSUMED_L2_BYTES))
        return ASSUMED_L2_BYTES

    # -- main loop ------------------------------------------------------------------------------------------------
    def run(self) -> list[CellResult]:
        """Run every cell. A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the CLI) stops the sweep
        and returns the cells finished so far, with :attr:`interrupted` set. Any other exception escaping the cells
        (e.g. the CUDA context lost to a kernel fault, which makes every later CUDA call fail) stops it too: the
        cells not run are recorded as errors with the reason, also kept in :attr:`stopped`, so what was measured
        is still reported and exported."""
        self.interrupted, self.stopped = False, None
        try:
            self._run_groups()
        except KeyboardInterrupt:
            self.interrupted = True
            self._free_memory()
        except Exception as exc:  # noqa: BLE001 - report the cells measured so far
            self.stopped = f"sweep stopped: {_short(exc)}"
            self._fill_remaining(self.stopped)
        return self.results

    def end_note(self) -> str | None:
        """One line for the console when the sweep did not run to its end, else None."""
        done = f"{len(self.results)} of {self.total_cells} cells"
        if self.interrupted:
            return f"[bold yellow]interrupted:[/] {done} finished; reporting those"
        if self.stopped:
            return f"[bold red]{self.stopped}[/] ({done} recorded, the rest as errors)"
        return None

    def _fill_remaining(self, message: str) -> None:
        def key(r: CellResult):
            return r.model, r.tp, r.per_act_token, r.per_out_ch, r.batch_size, r.backend

        done = {key(r) for r in self.results}
        for cfg in self.configs:
            for m in self.opts.batch_sizes:
                for b in self.backends:
                    ok, reason = self.availability[b.name]
                    cell = self._blank(cfg, m, b, STATUS_ERROR if ok else STATUS_NA, message if ok else reason)
                    if key(cell) not in done:
                        self._emit(cell)

    def _run_groups(self) -> None:
        groups: dict[tuple, list[Config]] = {}
        for cfg in self.configs:
            groups.setdefault(cfg.weight_key, []).append(cfg)
        for (shape, per_out_ch), cfgs in groups.items():
            if not any(ok for ok, _ in self.availability.values()):
                for cfg in cfgs:
                    self._fill_all(cfg, STATUS_NA, "")
                continue
            self.progress("weights", f"{shape.name} TP={shape.tp}: {self.rate_kind.upper()} weights "
                                     f"({weight_bytes(shape, per_out_ch) / 2**30:.2f} GiB)", 0)
            try:
                weights = self.make_weights(shape, per_out_ch)
            except Exception as exc:  # noqa: BLE001 - any failure lands in the cells
                status = STATUS_OOM if is_oom(exc) else STATUS_ERROR
                msg = f"weights ({weight_bytes(shape, per_out_ch) / 2**30:.1f} GiB) do not fit: {_short(exc)}" \
                    if status == STATUS_OOM else f"weight generation failed: {_short(exc)}"
                self._free_memory()
                for cfg in cfgs:
                    self._fill_all(cfg, status, msg)
                continue
            try:
                for cfg in cfgs:
                    for m in self.opts.batch_sizes:
                        self._run_batch(cfg, m, weights)
            finally:
                del weights
                self._free_memory()

    def make_weights(self, shape: ModelShape, per_out_ch: bool) -> list[tuple]:
        import torch

        gen = torch.Generator(device=self.device).manual_seed(self.opts.seed)
        w1_q, w1_s = make_fp8_weights(shape.num_experts, 2 * shape.intermediate, shape.hidden, per_out_ch,
                                      self.device, gen)
        w2_q, w2_s = make_fp8_weights(shape.num_experts, shape.hidden, shape.intermediate, per_out_ch,
                                      self.device, gen)
        sets = [(w1_q, w2_q, w1_s, w2_s)]
        n_sets = input_sets(shape, per_out_ch, self.opts.ops_per_graph, self._l2_bytes(),
                            self.opts.rotate and self._cuda())
        for _ in range(1, n_sets):  # identical copies: only their addresses matter (L2 residency)
            sets.append(tuple(t.clone() for t in sets[0]))
        return sets

    def make_inputs(self, cfg: Config, m: int, weights: list[tuple]) -> tuple[list[LayerInputs], float]:
        import torch

        shape = cfg.shape
        gen = torch.Generator(device=self.device).manual_seed(self.opts.seed * 1_000_003 + m)
        a = torch.randn((m, shape.hidden), generator=gen, device=self.device, dtype=torch.float32)
        a = a.to(torch_dtype(self.opts.dtype))
        topk_weights, topk_ids = make_routing(m, shape.num_experts, shape.topk, self.device, gen)
        experts_hit = float(torch.unique(topk_ids).numel())
        w1_q, w2_q, w1_s, w2_s = weights[0]
        a1 = a2 = None
        if not cfg.quant.per_act_token and self.opts.act_scales == "static":
            a1, a2 = calibrate_static_scales(a, w1_q, w1_s, topk_ids)
        sets = [LayerInputs(a, w1_q, w2_q, topk_weights, topk_ids, w1_s, w2_s, a1, a2)]
        for w in weights[1:]:
            sets.append(LayerInputs(a.clone(), w[0], w[1], topk_weights.clone(), topk_ids.clone(), w[2], w[3],
                                    a1, a2))
        return sets, experts_hit

    def reference(self, cfg: Config, x: LayerInputs):
        from moejit.reference import moe_fp8_ref

        return moe_fp8_ref(x.a, x.w1_q, x.w2_q, x.topk_weights, x.topk_ids, x.w1_scale, x.w2_scale,
                           a1_scale=x.a1_scale, a2_scale=x.a2_scale, per_act_token=cfg.quant.per_act_token)

    def _run_batch(self, cfg: Config, m: int, weights: list[tuple]) -> None:
        from moejit.reference import rel_error

        label = f"{cfg.shape.name} TP={cfg.shape.tp} {cfg.quant.short} M={m}"
        runnable = [b for b in self.backends if self.availability[b.name][0]]
        if not runnable:
            self._fill_all(cfg, STATUS_NA, "", [m])
            return
        self.progress("inputs", f"{label}: inputs" + (" + reference" if self.opts.check else ""), 0)
        try:
            sets, experts_hit = self.make_inputs(cfg, m, weights)
            ref = self.reference(cfg, sets[0]) if self.opts.check else None
        except Exception as exc:  # noqa: BLE001
            status = STATUS_OOM if is_oom(exc) else STATUS_ERROR
            self._free_memory()
            self._fill_all(cfg, status, f"inputs/reference: {_short(exc)}", [m])
            return
        traffic = roofline.moe_traffic(cfg.shape, m, experts_hit=experts_hit, weight_dtype=self.rate_kind,
                                       act_bytes=sets[0].a.element_size(), per_out_ch=cfg.quant.per_out_ch)
        for backend in self.backends:
            ok, reason = self.availability[backend.name]
            if not ok:
                self._emit(self._blank(cfg, m, backend, STATUS_NA, reason))
                continue
            result = self._blank(cfg, m, backend, STATUS_OK)
            result.experts_hit, result.bytes, result.flops = experts_hit, traffic.total_bytes, traffic.flops
            result.input_sets = len(sets)
            try:
                self._run_cell(cfg, m, backend, sets, ref, traffic, result, label, rel_error)
            except Exception as exc:  # noqa: BLE001 - recorded in the cell, the sweep goes on
                result.status = STATUS_OOM if is_oom(exc) else STATUS_ERROR
                result.message = _short(exc)
                result.median_us = result.p10_us = result.p90_us = None
                self._free_memory()
            self._emit(result)
        del sets, ref

    def _run_cell(self, cfg, m, backend, sets, ref, traffic, result, label, rel_error) -> None:
        self.progress("compile", f"{label} {backend.label}: prepare + first call (compiles on first use)", 0)
        with nvtx_range(f"{label} {backend.name} prepare", self.opts.profile):
            fns = [backend.prepare(x, cfg.quant) for x in sets]
            out = fns[0]()
        if ref is not None:
            self.progress("check", f"{label} {backend.label}: check vs float32 reference", 0)
            with nvtx_range(f"{label} {backend.name} check", self.opts.profile):
                result.error = rel_error(out, ref)
            result.tolerance = self.opts.tolerance
            result.error_ok = bool(result.error <= self.opts.tolerance)
            if not result.error_ok:
                result.message = f"error {result.error:.3g} above tolerance {self.opts.tolerance:.3g}"
        del out
        self.progress("time", f"{label} {backend.label}: timing ({self.opts.iters} replays of "
                              f"{self.opts.ops_per_graph} calls)", 0)
        timing: Timing = self.timer(fns, ops_per_graph=self.opts.ops_per_graph, warmup=self.opts.warmup,
                                    iters=self.opts.iters, profile=self.opts.profile,
                                    label=f"{label} {backend.name}")
        result.median_us, result.p10_us, result.p90_us = timing.median_us, timing.p10_us, timing.p90_us
        if self.ceilings is not None:
            bw, rate = self.ceilings.copy_gbps, self.ceilings.rate(self.rate_kind)
            result.floor_us = roofline.floor_us(traffic.total_bytes, traffic.flops, bw, rate)
            result.bound = roofline.bound_kind(traffic.total_bytes, traffic.flops, bw, rate)
            result.roofline_pct = roofline.roofline_pct(result.floor_us, timing.median_us)
        result.tflops, result.gbps = roofline.achieved(traffic.total_bytes, traffic.flops, timing.median_us)


__all__ = [
    "CellResult", "Config", "DEFAULT_BATCH_SIZES", "DEFAULT_OPTS", "DEFAULT_TOLERANCE", "DEFAULT_TP_SIZES",
    "PlanRow", "Record", "STATUS_ERROR", "STATUS_NA", "STATUS_OK", "STATUS_OOM", "Sweep", "SweepOptions",
    "activation_bytes", "calibrate_static_scales", "describe_cell", "input_sets", "is_oom", "make_configs",
    "make_fp8_weights", "make_routing", "plan_rows", "weight_bytes",
]
