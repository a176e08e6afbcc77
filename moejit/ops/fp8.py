"""Ops of the ``sm90_fp8`` JIT module: FP8 (e4m3) quantization and the CUTLASS SM90 FP8 grouped GEMM.

Quantization follows design.md exactly (``real ≈ q · scale``, scales float32, dynamic scales
``max(amax / 448, 1e-12)``) and matches :func:`moejit.reference.fp8_quant_ref` bit for bit. Every op runs on the
device only (no host synchronization) and captures into CUDA graphs. The module is built for sm_90a (Hopper) only.
"""

from __future__ import annotations

import math

import torch

from moejit import registry
from moejit.errors import MoejitInputError
from moejit.jit.modules import FP8_GEMM_CONFIGS
from moejit.ops._validate import FLOAT16_TYPES, check_same_device, check_tensor
from moejit.ops.common import check_routing_args

FP8 = torch.float8_e4m3fn
_MODULE = "sm90_fp8"

# Tile configurations of cutlass_fp8_grouped_mm, in the order of GemmConfig in fp8_grouped_gemm_sm90.cuh.
GEMM_CONFIGS = FP8_GEMM_CONFIGS


@registry.define("fp8_quant", module=_MODULE)
def _fp8_quant_fake(x, scale, per_token, num_rows):
    rows = x.shape[0]
    return (x.new_empty(x.shape, dtype=FP8),
            x.new_empty((rows, 1) if per_token else (1,), dtype=torch.float32))


@registry.define("silu_mul_fp8_quant", module=_MODULE)
def _silu_mul_fp8_quant_fake(x, scale, per_token, num_rows, round_dtype=None):
    rows = x.shape[0]
    return (x.new_empty((rows, x.shape[1] // 2), dtype=FP8),
            x.new_empty((rows, 1) if per_token else (1,), dtype=torch.float32))


# The most slots (M·topk) fp8_permute_quant takes: one block's sort (kPermuteMaxSlots in fp8_quant.cu).
PERMUTE_QUANT_MAX_SLOTS = 1024


@registry.define("fp8_permute_quant", module=_MODULE)
def _fp8_permute_quant_fake(hidden, topk_ids, num_experts, scale, per_token):
    n = topk_ids.shape[0] * topk_ids.shape[1]
    i32 = dict(dtype=torch.int32, device=hidden.device)
    return (hidden.new_empty((n, hidden.shape[1]), dtype=FP8),
            hidden.new_empty((n, 1) if per_token else (1,), dtype=torch.float32),
            torch.empty((num_experts + 1,), **i32), torch.empty((n,), **i32), torch.empty((n,), **i32))


@registry.define("cutlass_fp8_grouped_mm", module=_MODULE)
def _cutlass_fp8_grouped_mm_fake(a, b, expert_offsets, a_scale, b_scale, out_dtype, config, k_splits=1):
    shape = (a.shape[0], b.shape[1]) if k_splits == 1 else (k_splits, a.shape[0], b.shape[1])
    return a.new_empty(shape, dtype=out_dtype)


def _check_quant_args(name_x: str, x, scale, per_token: bool, num_rows) -> None:
    check_tensor(name_x, x, dtypes=FLOAT16_TYPES + (torch.float32,), ndim=2, contiguous=True)
    if scale is not None:
        check_tensor("scale", scale, dtypes=(torch.float32,))
        if scale.numel() != 1:
            raise MoejitInputError(f"scale must hold one element (static per-tensor), got shape {tuple(scale.shape)}")
        if per_token:
            raise MoejitInputError("a static scale and per_token=True are exclusive (per-token scales are dynamic)")
    if num_rows is not None:
        check_tensor("num_rows", num_rows, dtypes=(torch.int32,))
        if num_rows.numel() != 1:
            raise MoejitInputError(f"num_rows must hold one element, got shape {tuple(num_rows.shape)}")
    check_same_device(**{name_x: x, "scale": scale, "num_rows": num_rows})


def fp8_quant(x: torch.Tensor, scale: torch.Tensor | None = None, per_token: bool = False,
              num_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x [T, K]`` (bf16/fp16/fp32) to e4m3. Returns ``(q [T, K] fp8, scale float32)``.

    - ``scale`` given (one float32 element on the device): static per-tensor; the returned scale is a copy of it.
    - ``per_token``: dynamic, one scale per row, ``[T, 1]``.
    - otherwise: dynamic per-tensor, ``[1]``, from a device-side amax reduction.

    ``num_rows`` (int32, one element, on the device) limits the work to the first ``num_rows`` rows (the valid rows
    of a permuted MoE buffer): later rows of ``q`` and of per-token scales are left unwritten, and dynamic
    per-tensor scales only see the first rows.
    """
    _check_quant_args("x", x, scale, per_token, num_rows)
    return registry.op("fp8_quant")(x, scale, bool(per_token), num_rows)


def silu_mul_fp8_quant(x: torch.Tensor, scale: torch.Tensor | None = None, per_token: bool = False,
                       num_rows: torch.Tensor | None = None,
                       round_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused SwiGLU + quantization: quantizes ``silu(x[:, :N]) * x[:, N:]`` (computed in float32, rounded to the
    16-bit activation dtype as an unfused layer would store it) exactly like :func:`fp8_quant`. ``x [T, 2N]``
    bf16/fp16 (rounded to its own dtype) or float32 (rounded to ``round_dtype``, required); returns
    ``(q [T, N] fp8, scale)``."""
    _check_quant_args("x", x, scale, per_token, num_rows)
    if x.shape[1] % 2:
        raise MoejitInputError(f"x's last dimension must be even (gate ‖ up), got {x.shape[1]}")
    if x.dtype == torch.float32:
        if round_dtype not in FLOAT16_TYPES:
            raise MoejitInputError(f"float32 x needs round_dtype bfloat16 or float16, got {round_dtype}")
    elif round_dtype not in (None, x.dtype):
        raise MoejitInputError(f"round_dtype applies to float32 x only (x is {x.dtype}, round_dtype {round_dtype})")
    return registry.op("silu_mul_fp8_quant")(x, scale, bool(per_token), num_rows,
                                             round_dtype if x.dtype == torch.float32 else None)


def fp8_permute_quant(hidden: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
                      scale: torch.Tensor | None = None, per_token: bool = False):
    """:func:`moejit.ops.moe_permute` of the e4m3 rows of :func:`fp8_quant`, in one launch, for up to
    :data:`PERMUTE_QUANT_MAX_SLOTS` slots (the MoE layer's front end at decode).

    Args:
        hidden: ``[M, K]`` bf16/fp16/fp32, contiguous.
        topk_ids: ``[M, topk]`` int32/int64; ids outside ``[0, num_experts)`` mark dropped slots.
        num_experts: E.
        scale: a static per-tensor scale (one float32 element), or None with ``per_token=True`` (dynamic per
            token). Dynamic per-tensor scales need the whole input's maximum first: use :func:`fp8_quant` then.

    Returns ``(q [M·topk, K] e4m3, scale, expert_offsets int32 [E+1], sort_idx int32 [M·topk], inv_idx int32
    [M·topk])``: the permutation exactly as :func:`moejit.ops.moe_permute` gives it, ``q[p]`` the quantized row of
    token ``sort_idx[p] // topk`` (bit-identical to ``fp8_quant``'s), and ``scale`` per permuted row ``[M·topk, 1]``
    (per token) or a copy of the static scale. Every row is written, dropped slots' included.
    """
    check_routing_args(hidden, topk_ids, num_experts, hidden_dtypes=FLOAT16_TYPES + (torch.float32,))
    if topk_ids.numel() > PERMUTE_QUANT_MAX_SLOTS:
        raise MoejitInputError(f"M·topk = {topk_ids.numel()} slots exceeds the {PERMUTE_QUANT_MAX_SLOTS} that "
                               "fp8_permute_quant sorts (use moe_permute and fp8_quant)")
    if (scale is None) != bool(per_token):
        raise MoejitInputError("fp8_permute_quant needs exactly one of a static scale and per_token=True")
    if scale is not None:
        check_tensor("scale", scale, dtypes=(torch.float32,))
        if scale.numel() != 1:
            raise MoejitInputError(f"scale must hold one element (static per-tensor), got shape {tuple(scale.shape)}")
    check_same_device(hidden=hidden, scale=scale)
    return registry.op("fp8_permute_quant")(hidden, topk_ids, num_experts, scale, bool(per_token))


# wide16 instead of swap16 for a K this short or shorter and at least this many 128-row weight tiles (4 per tile
# slot of a 132-multiprocessor GPU, so halving them leaves the waves full).
_WIDE_MAX_K = 2048
_WIDE_MIN_TILES = 1024


def _experts_hit(rows: int, num_experts: int) -> float:
    """Experts that ``rows`` uniformly routed rows reach on average: ``E·(1 − (1 − 1/E)^rows)``."""
    return num_experts * (1.0 - (1.0 - 1.0 / num_experts) ** rows)


def grouped_mm_config(rows: int, num_experts: int, n: int, k: int) -> str:
    """The tile configuration :func:`cutlass_fp8_grouped_mm` uses by default, from host-known sizes only.

    The mean rows per expert decides: up to 8, the swapped problem (Bᵀ·Aᵀ) with a 128(N)×16(tokens) tile, or 256×16
    (``wide16``) when K <= 2048 and the 128-row tiles would number 1024 or more (many experts, each tile a short
    stream of weights: half the tiles, so each group switch and epilogue serves twice the bytes); up to 16, swapped
    128×32;
    up to 32, swapped 128×64 (room for the spread of a router's counts: an expert whose rows need a second token
    tile streams its weights twice); up to 64, swapped 128×96 (64 ± 3σ rows still fit one token tile, and a third
    less of the MMA runs on padding than in a 128-row tile); above, the plain problem with cooperative 128×128
    tiles in 1×2 clusters. The narrower swapped tiles leave shared memory for more pipeline stages, which is what a
    weight-streaming GEMM needs. (Measured on an H200, docs/cutlass_fp8.md: at 64 rows per expert 128×96 beat
    128×128 by 5-12% on the whole layer; at 32, 128×64 stayed the fastest; at 128, 128×128. 256×16 took
    Qwen3.6's M=16-128 GEMM2 (K = 512) 9-12% faster and DeepSeek-V3's M=4-16 GEMM2 (K = 2048) 1-4%, and was
    within 1% either way on GEMM1s of K = 2048 and 0.5-1.5% slower on those of K = 4096 and 7168.)
    """
    mean_rows = -(-max(rows, 0) // max(num_experts, 1))
    if mean_rows <= 8:
        if rows > 0 and k <= _WIDE_MAX_K and _experts_hit(rows, num_experts) * -(-n // 128) >= _WIDE_MIN_TILES:
            return "wide16"
        return "swap16"
    if mean_rows <= 16:
        return "swap32"
    if mean_rows <= 32:
        return "swap64"
    if mean_rows <= 64:
        return "swap96"
    return "coop128"


# Split-K of decode GEMMs: candidate slice counts, the shortest K slice, and the wave-efficiency gain a split must
# promise (it adds tiles, partial planes and their reduction).
_SPLIT_CHOICES = (2, 4, 8)
_SPLIT_MIN_SLICE = 1024
_SPLIT_MIN_GAIN = 0.15


def grouped_mm_k_splits(rows: int, num_experts: int, n: int, k: int, config: str, sm_count: int) -> int:
    """How many K slices a swapped (decode) grouped GEMM splits into (1: none), from host-known sizes only.

    With ``rows`` routed uniformly, about ``h = E·(1 − (1 − 1/E)^rows)`` experts are hit, so the launch has
    ``t = h·⌈N/128⌉`` tiles, each streaming a 128-row slice of one expert's weights, on ``2·sm_count`` tile slots
    (one persistent CTA per SM, two ping-pong consumers). When the last wave of slots is mostly empty (Mixtral's
    GEMM2 at M=4: ~5 experts × 32 tiles on 264 slots, 65% of the SM cycles active), splitting K S ways gives S·t
    tiles for the same weight bytes. S (2, 4 or 8, with K/S a multiple of 128 and at least 1024) is taken when its
    wave efficiency ``S·t / (⌈S·t / slots⌉·slots)`` beats no split by at least 0.15; the smallest S within 0.02 of
    the best. ``sm_count <= 0`` (no GPU: a fake-tensor trace) turns it off.
    """
    if config not in ("swap16", "swap32", "swap64") or rows <= 0 or sm_count <= 0 or num_experts <= 0:
        return 1
    tiles = _experts_hit(rows, num_experts) * -(-n // 128)
    slots = 2 * sm_count

    def efficiency(splits: int) -> float:
        work = tiles * splits
        return work / (math.ceil(work / slots) * slots)

    allowed = [s for s in _SPLIT_CHOICES if k % (128 * s) == 0 and k // s >= _SPLIT_MIN_SLICE]
    if not allowed:
        return 1
    best = max(efficiency(s) for s in allowed)
    if best < efficiency(1) + _SPLIT_MIN_GAIN:
        return 1
    return min(s for s in allowed if efficiency(s) >= best - 0.02)


def cutlass_fp8_grouped_mm(a: torch.Tensor, b: torch.Tensor, expert_offsets: torch.Tensor, a_scale: torch.Tensor,
                           b_scale: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16,
                           config: str | None = None, k_splits: int = 1) -> torch.Tensor:
    """One CUTLASS launch multiplying every expert's rows: ``out[r] = a_scale[r] · (a[r] · b[e]ᵀ) ⊙ b_scale[e]`` for
    the rows ``r`` of expert ``e`` (``expert_offsets[e] <= r < expert_offsets[e+1]``).

    Args:
        a: ``[rows, K]`` e4m3, rows grouped by expert (from :func:`moejit.ops.moe_permute`).
        b: ``[E, N, K]`` e4m3, K contiguous.
        expert_offsets: int32 ``[E + 1]`` on the device.
        a_scale: float32, one element (per tensor) or ``rows`` elements (per token).
        b_scale: float32 ``[E]`` (per tensor, also ``[E, 1]``/``[E, 1, 1]``) or ``[E, N]`` (per output channel).
        out_dtype: bfloat16, float16 or float32.
        config: one of :data:`GEMM_CONFIGS`, or None for :func:`grouped_mm_config`'s choice.
        k_splits: S ≥ 1. With S > 1 each expert's K is cut into S equal slices, multiplied by S groups of the same
            launch into ``out [S, rows, N]``, ``out.sum(0)`` being the product (:func:`moejit.ops.moe_unpermute`
            sums the planes). Each plane carries both scales. K must be a multiple of 16·S; float32 output keeps
            the partial sums unrounded. See :func:`grouped_mm_k_splits`.

    Returns ``out [rows, N]`` (``[S, rows, N]`` with ``k_splits=S > 1``). Rows outside every expert (beyond
    ``expert_offsets[E]``) are not written. N and K must be multiples of 16. Nothing synchronizes with the host.
    """
    if isinstance(k_splits, bool) or not isinstance(k_splits, int) or not 1 <= k_splits <= 16:
        raise MoejitInputError(f"k_splits must be an int in [1, 16], got {k_splits!r}")
    check_tensor("a", a, dtypes=(FP8,), ndim=2, contiguous=True)
    check_tensor("b", b, dtypes=(FP8,), ndim=3, contiguous=True)
    check_tensor("expert_offsets", expert_offsets, dtypes=(torch.int32,), ndim=1, contiguous=True)
    check_tensor("a_scale", a_scale, dtypes=(torch.float32,))
    check_tensor("b_scale", b_scale, dtypes=(torch.float32,))
    check_same_device(a=a, b=b, expert_offsets=expert_offsets, a_scale=a_scale, b_scale=b_scale)
    rows, k = a.shape
    e, n, kb = b.shape
    if kb != k:
        raise MoejitInputError(f"b is [E, N, K] = {tuple(b.shape)} but a has K = {k}")
    if expert_offsets.numel() != e + 1:
        raise MoejitInputError(f"expert_offsets must have E + 1 = {e + 1} entries, got {expert_offsets.numel()}")
    for name, value in (("N", n), ("K", k)):
        if value <= 0 or value % 16:  # K = 0 would leave CUTLASS's accumulators unwritten
            raise MoejitInputError(f"{name} = {value} must be a positive multiple of 16")
    if a_scale.numel() not in (1, rows):
        raise MoejitInputError(f"a_scale must have 1 (per tensor) or rows = {rows} (per token) elements, got shape "
                               f"{tuple(a_scale.shape)}")
    bs = tuple(b_scale.shape)
    if not ((b_scale.numel() == e and bs[:1] == (e,)) or (bs[:2] == (e, n) and b_scale.numel() == e * n)):
        raise MoejitInputError(f"b_scale must be [E] = ({e},) per tensor or [E, N] = ({e}, {n}) per output channel, "
                               f"got {bs}")
    if out_dtype not in FLOAT16_TYPES + (torch.float32,):
        raise MoejitInputError(f"out_dtype must be bfloat16, float16 or float32, got {out_dtype}")
    if config is None:
        config = grouped_mm_config(rows, e, n, k)
    if config not in GEMM_CONFIGS:
        raise MoejitInputError(f"config must be one of {GEMM_CONFIGS}, got {config!r}")
    if k % (16 * k_splits):
        raise MoejitInputError(f"K = {k} must be a multiple of 16·k_splits = {16 * k_splits}")
    return registry.op("cutlass_fp8_grouped_mm")(a, b, expert_offsets, a_scale.contiguous(), b_scale.contiguous(),
                                                 out_dtype, GEMM_CONFIGS.index(config), k_splits)
