"""Roofline floors for MoE layers, and the two device ceilings they need (measured once per device, cached).

``floor = max(bytes that must move / copy bandwidth, FLOPs / matmul rate)``. The arithmetic here is pure Python
(CPU-testable); only :func:`measure_ceilings` touches a GPU.

Bytes that must move for one MoE layer call of ``m`` tokens: the weights of every expert the routing actually hits
(each read at least once), their scales, the activations in and out (16-bit), and the routing (ids + weights).
Intermediates (the GEMM1 output, the quantized activations) are not counted: an ideal fused kernel keeps them on
chip, so the floor stays a true lower bound. FLOPs: ``2 · m · topk · 3 · N · K`` (GEMM1 ``K → 2N``, GEMM2
``N → K``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moejit.bench.models import ModelShape

# Matmul input kinds a ceiling can be measured for, and the dtype sizes the byte counts use.
RATE_KINDS = ("fp8", "int8")
WEIGHT_BYTES = {"fp8": 1, "int8": 1, "bf16": 2, "fp16": 2}


def expected_distinct_experts(num_experts: int, topk: int, m: int) -> float:
    """Expected number of distinct experts hit when each of ``m`` tokens picks ``topk`` distinct experts uniformly:
    ``E · (1 − (1 − topk/E)^m)`` (an expert is missed by one token with probability ``1 − topk/E``)."""
    if num_experts <= 0 or topk <= 0 or topk > num_experts:
        raise ValueError(f"need 0 < topk <= num_experts, got topk={topk}, num_experts={num_experts}")
    if m <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - topk / num_experts) ** m)


@dataclass(frozen=True)
class Traffic:
    """What one layer call must move and compute."""

    weight_bytes: float
    scale_bytes: float
    activation_bytes: float
    routing_bytes: float
    flops: float
    experts_hit: float

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.scale_bytes + self.activation_bytes + self.routing_bytes


def moe_traffic(shape: ModelShape, m: int, experts_hit: float | None = None, weight_dtype: str = "fp8",
                act_bytes: int = 2, per_out_ch: bool = False) -> Traffic:
    """Bytes and FLOPs of one MoE layer call of ``m`` tokens on ``shape`` (already TP-sharded).

    ``experts_hit``: distinct experts the routing hits (count it from ``topk_ids`` when known); default the
    expectation under uniform routing. Scales are float32: one per expert and GEMM, or one per output channel.
    """
    e_hit = expected_distinct_experts(shape.num_experts, shape.topk, m) if experts_hit is None else experts_hit
    k, n = shape.hidden, shape.intermediate
    weight_bytes = e_hit * 3 * n * k * WEIGHT_BYTES[weight_dtype]
    scale_bytes = e_hit * 4 * ((2 * n + k) if per_out_ch else 2)
    activation_bytes = 2 * m * k * act_bytes  # hidden states in, layer output out
    routing_bytes = m * shape.topk * (4 + 4)  # int32 ids + float32 weights
    return Traffic(weight_bytes, scale_bytes, activation_bytes, routing_bytes, float(shape.flops(m)), e_hit)


def floor_us(total_bytes: float, flops: float, bandwidth_gbps: float, rate_tflops: float) -> float:
    """The roofline floor in µs: ``max(bytes / bandwidth, flops / rate)`` (GB/s = 1e9 B/s, TFLOP/s = 1e12)."""
    if bandwidth_gbps <= 0 or rate_tflops <= 0:
        raise ValueError("bandwidth and rate must be positive")
    return max(total_bytes / (bandwidth_gbps * 1e3), flops / (rate_tflops * 1e6))


def bound_kind(total_bytes: float, flops: float, bandwidth_gbps: float, rate_tflops: float) -> str:
    """'memory' or 'compute': which side of the roofline sets the floor."""
    return "memory" if total_bytes / (bandwidth_gbps * 1e3) >= flops / (rate_tflops * 1e6) else "compute"


def achieved(total_bytes: float, flops: float, time_us: float) -> tuple[float, float]:
    """(TFLOP/s, GB/s) achieved by a call that took ``time_us``."""
    if time_us <= 0 or not math.isfinite(time_us):
        return float("nan"), float("nan")
    return flops / (time_us * 1e6), total_bytes / (time_us * 1e3)


def roofline_pct(floor: float, time_us: float) -> float:
    """How close a measured time is to the floor: ``100 · floor / time`` (100 % = at the roofline)."""
    if time_us <= 0 or not math.isfinite(time_us):
        return float("nan")
    return 100.0 * floor / time_us


# ---------------------------------------------------------------------------------------------------------------
# Device ceilings
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ceilings:
    """Measured device ceilings: copy bandwidth (GB/s) and dense matmul rate (TFLOP/s) per input kind."""

    device: str
    copy_gbps: float
    rates_tflops: dict
    measured_at: float = 0.0
    cached: bool = False

    def rate(self, kind: str = "fp8") -> float:
        if kind not in self.rates_tflops:
            raise KeyError(f"no {kind} matmul rate measured for {self.device}")
        return self.rates_tflops[kind]

    def as_dict(self) -> dict:
        return asdict(self)


def _cache_file() -> Path:
    from moejit.jit import cache_root

    return cache_root() / "bench" / "ceilings.json"


def device_key(index: int | None = None) -> str:
    """Identifies a device for the ceilings cache: name, UUID (when torch exposes it), torch and CUDA versions."""
    import torch

    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    uuid = str(getattr(props, "uuid", "")) or f"index{index}"
    return f"{props.name}|{uuid}|torch {torch.__version__}|cuda {torch.version.cuda}"


def load_cached(key: str, kinds, path: Path | None = None) -> Ceilings | None:
    path = path or _cache_file()
    try:
        entry = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not entry or any(k not in entry.get("rates_tflops", {}) for k in kinds):
        return None
    return Ceilings(entry["device"], entry["copy_gbps"], entry["rates_tflops"], entry.get("measured_at", 0.0), True)


def store_cached(key: str, ceilings: Ceilings, path: Path | None = None) -> None:
    path = path or _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        old = data.get(key, {})
        entry = ceilings.as_dict()
        entry.pop("cached", None)
        entry["rates_tflops"] = {**old.get("rates_tflops", {}), **ceilings.rates_tflops}
        data[key] = entry
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a re-measurement next time


def _time_ms(fn, iters: int) -> float:
    """Median ms of ``fn`` over ``iters`` event-timed eager calls (after one warm-up call)."""
    import statistics

    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_copy_gbps(nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted), on a buffer far larger than L2."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), iters)
    return 2 * nbytes / (ms * 1e6)


def measure_matmul_tflops(kind: str = "fp8", size: int = 8192, iters: int = 20) -> float:
    """Dense matmul rate in TFLOP/s for ``size³`` with ``kind`` inputs (fp8 e4m3 via ``torch._scaled_mm`` with
    bf16 output and fast accumulation: the device's peak, which the layers' promoting kernels can approach but not
    pass; int8 via ``torch._int_mm``)."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    if kind == "fp8":
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.to(torch.float8_e4m3fn).t()  # column-major second operand, as cuBLASLt wants
        one = torch.ones((), device="cuda", dtype=torch.float32)
        fn = lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,  # noqa: E731
                                      use_fast_accum=True)
    elif kind == "int8":
        a8 = (a * 32).clamp(-127, 127).to(torch.int8)
        b8 = (b * 32).clamp(-127, 127).to(torch.int8).t().contiguous().t()
        fn = lambda: torch._int_mm(a8, b8)  # noqa: E731
    else:
        raise ValueError(f"unknown matmul kind {kind!r}; expected one of {RATE_KINDS}")
    del a, b
    ms = _time_ms(fn, iters)
    return 2 * size ** 3 / (ms * 1e9)


def get_ceilings(kinds=("fp8",), refresh: bool = False, path: Path | None = None) -> Ceilings:
    """The current device's ceilings: from the per-device cache under the moejit cache dir, else measured now
    (a second or two) and stored."""
    import torch

    key = device_key()
    if not refresh:
        cached = load_cached(key, kinds, path)
        if cached is not None:
            return cached
    rates = {kind: measure_matmul_tflops(kind) for kind in kinds}
    ceilings = Ceilings(torch.cuda.get_device_name(), measure_copy_gbps(), rates, time.time(), False)
    torch.cuda.empty_cache()
    store_cached(key, ceilings, path)
    return ceilings
