"""Triton activation quantization for the fused MoE path: dynamic per-tensor / per-token / 1×G group and static
per-tensor, each optionally fused with SiLU·mul of a ``[rows, 2N]`` gate ‖ up input.

Semantics are exactly :func:`moejit.reference.fp8_quant_ref`'s (and its INT8 analogue): dynamic scales are
``max(amax / QMAX, 1e-12)``; ``q = clamp(x / scale, ±QMAX)`` converted with round-to-nearest-even (e4m3 for FP8,
``rint`` for INT8). Bit for bit as the reference and the CUDA kernels compute them: ``amax / QMAX`` and ``x / scale``
are IEEE-rounded divisions (``div_rn``; Triton's plain ``/`` is approximate, and ``amax · fl(1/QMAX)`` is one ulp
off whenever ``amax / QMAX`` is exact, which moves values on a rounding tie to the other neighbour). With SiLU,
``silu(gate) · up`` is computed in float32 and rounded to the input dtype first, as the reference stores the
GEMM1 output in the activation dtype.

NaN propagates as in the reference (torch's ``amax`` and ``clamp``): a NaN makes its row's (or the tensor's, or
the group's) scale NaN. Compiled Triton's plain ``max``/``min`` drop NaN (PTX ``max.f32``), so every maximum here
is NaN-propagating (:func:`nanmax`), and the per-tensor amax is combined as int32 bits (non-negative floats order
as their bits, and the canonical NaN is above +inf), because Triton's float ``atomic_max`` skips NaN.

Dynamic per-token scales of rows up to 16384 columns come from a kernel that reads each row once (several rows a
program when they are short) and divides by one reciprocal a row with an exact correction (:func:`div_rn_by_rows`:
the same bits as ``div_rn``); the other modes, and wider rows, run one program a row with ``div_rn``.

Rows can be masked by ``topk_ids`` (slot ``r`` is live when ``0 <= topk_ids.flat[r] < E``): masked rows are
skipped and do not contribute to a per-tensor amax — the intermediate of dropped slots is never written.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from moejit.reference.fp8 import MIN_SCALE

FP8_DTYPE = torch.float8_e4m3fn

# quantization modes of an activation (constexpr MODE of the kernels)
STATIC_TENSOR, DYNAMIC_TENSOR, PER_TOKEN, GROUP = 0, 1, 2, 3

_QMAX = {torch.float8_e4m3fn: 448.0, torch.int8: 127.0}


def qmax_of(dtype: torch.dtype) -> float:
    try:
        return _QMAX[dtype]
    except KeyError:
        raise ValueError(f"no quantized activation type {dtype}; expected float8_e4m3fn or int8") from None


@triton.jit
def _load_row_chunk(x_ptr, row, cols, mask, stride_xm, n_cols, HAS_SILU: tl.constexpr):
    """float32 values of columns ``cols`` of row ``row`` (or of rows ``row [R, 1]`` × ``cols [1, C]``): ``x``
    itself, or ``silu(gate) * up`` rounded to x's dtype."""
    base = x_ptr + row.to(tl.int64) * stride_xm
    if HAS_SILU:
        g = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(base + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        v = (g / (1.0 + tl.exp(-g)) * u).to(x_ptr.dtype.element_ty).to(tl.float32)
    else:
        v = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
    return v


@triton.jit
def nanmax(a, b):
    """Elementwise maximum that keeps NaN (also a combine function for ``tl.reduce``)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def nanclamp(x, lo, hi):
    """``clamp(x, lo, hi)`` keeping NaN, as torch's clamp."""
    return tl.minimum(tl.maximum(x, lo, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _over_qmax(amax, QMAX: tl.constexpr):
    """``amax / QMAX`` rounded as IEEE division (the operand as a tensor: the interpreter's div_rn needs one)."""
    return tl.math.div_rn(amax, tl.zeros_like(amax) + QMAX)


@triton.jit
def div_rn_by_rows(x, step, FAST: tl.constexpr):
    """``x / step[:, None]`` correctly rounded (IEEE ``div.rn``), for ``x [R, C]`` and one divisor a row,
    ``step [R]``.

    ``FAST``: one correctly rounded reciprocal ``r`` a row, then per element ``y = x·r``, the exact residual
    ``e = fma(-y, step, x)`` and ``fma(e, r, y)`` (Markstein's correction, three instructions instead of
    ``div.rn``'s subroutine). It is correctly rounded while the residual is a normal number, so the fast path is
    taken when every step of the tile lies in [2^-90, 2^100]; otherwise (denormal-scale or huge inputs, inf, NaN)
    the tile divides with ``div_rn``. Checked on the CPU against IEEE division: 8·10^8 random, near-tie and small
    (down to 2^-12) quotients with steps in that range, bit for bit; the few differences found outside it were
    quotients below 2^-10, which every format here rounds to zero. The Triton interpreter has no exact fma
    (:func:`exact_fma`), so it always runs ``div_rn``.
    """
    if FAST:
        ok = (tl.min(step, 0) >= 8.077935669463161e-28) & (tl.max(step, 0) <= 1.2676506002282294e+30)
        if ok:
            r = tl.math.div_rn(tl.full(step.shape, 1.0, tl.float32), step)[:, None]
            y = x * r
            e = tl.math.fma(-y, tl.zeros_like(x) + step[:, None], x)
            v = tl.math.fma(e, r, y)
        else:
            v = tl.math.div_rn(x, tl.zeros_like(x) + step[:, None])
    else:
        v = tl.math.div_rn(x, tl.zeros_like(x) + step[:, None])
    return v


@triton.jit
def _to_q(v, scale, QMAX: tl.constexpr, q_dtype: tl.constexpr, IS_INT: tl.constexpr):
    return _clamp_convert(tl.math.div_rn(v, scale), QMAX, q_dtype, IS_INT)


@triton.jit
def _clamp_convert(y, QMAX: tl.constexpr, q_dtype: tl.constexpr, IS_INT: tl.constexpr):
    y = nanclamp(y, -QMAX, QMAX)
    if IS_INT:
        y = tl.extra.cuda.libdevice.rint(y)
    return y.to(q_dtype)


@triton.jit
def _row_live(ids_ptr, row, num_experts, HAS_IDS: tl.constexpr):
    if HAS_IDS:
        e = tl.load(ids_ptr + row)
        live = (e >= 0) & (e < num_experts)
    else:
        live = row >= 0
    return live


@triton.jit
def _amax_kernel(x_ptr, amax_bits_ptr, ids_ptr, stride_xm, n_cols, num_experts,
                 HAS_SILU: tl.constexpr, HAS_IDS: tl.constexpr, BLOCK: tl.constexpr):
    """amax over all live rows, accumulated with an atomic max of its int32 bits into ``amax_bits_ptr`` (the
    float32 amax buffer viewed as int32, pre-zeroed): NaN-propagating, see the module docstring."""
    row = tl.program_id(0)
    if _row_live(ids_ptr, row, num_experts, HAS_IDS):
        m = tl.zeros((BLOCK,), tl.float32)
        for c0 in range(0, n_cols, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            v = _load_row_chunk(x_ptr, row, cols, cols < n_cols, stride_xm, n_cols, HAS_SILU)
            m = nanmax(m, tl.abs(v))
        row_max = tl.abs(tl.reduce(m, 0, nanmax))  # abs: a NaN with its sign bit set would order below 0
        tl.atomic_max(amax_bits_ptr, row_max.to(tl.int32, bitcast=True), sem="relaxed")


@triton.jit
def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, ids_ptr, stride_xm, stride_qm, stride_sm, n_cols, num_experts,
                       MODE: tl.constexpr, HAS_SILU: tl.constexpr, HAS_IDS: tl.constexpr, QMAX: tl.constexpr,
                       IS_INT: tl.constexpr, MIN_S: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr):
    """One program per row. MODE 0: static scale ``s_ptr[0]``; 1: dynamic per tensor (``s_ptr[0]`` holds the amax,
    turned into the scale here); 2: per token (writes ``s_ptr[row]``); 3: 1×GROUP groups (writes
    ``s_ptr[row, g]``; BLOCK is a multiple of GROUP)."""
    row = tl.program_id(0)
    if _row_live(ids_ptr, row, num_experts, HAS_IDS):
        q_dtype = q_ptr.dtype.element_ty
        q_row = q_ptr + row.to(tl.int64) * stride_qm
        if MODE == 3:
            GPB: tl.constexpr = BLOCK // GROUP
            for c0 in range(0, n_cols, BLOCK):
                g_idx = c0 // GROUP + tl.arange(0, GPB)
                cols = (c0 + tl.arange(0, GPB)[:, None] * GROUP + tl.arange(0, GROUP)[None, :])
                mask = cols < n_cols
                v = _load_row_chunk(x_ptr, row, cols, mask, stride_xm, n_cols, HAS_SILU)
                s = nanmax(_over_qmax(tl.reduce(tl.abs(v), 1, nanmax), QMAX), MIN_S)
                tl.store(q_row + cols, _to_q(v, s[:, None], QMAX, q_dtype, IS_INT), mask=mask)
                tl.store(s_ptr + row.to(tl.int64) * stride_sm + g_idx, s, mask=g_idx * GROUP < n_cols)
        else:
            if MODE == 2:
                m = tl.zeros((BLOCK,), tl.float32)
                for c0 in range(0, n_cols, BLOCK):
                    cols = c0 + tl.arange(0, BLOCK)
                    v = _load_row_chunk(x_ptr, row, cols, cols < n_cols, stride_xm, n_cols, HAS_SILU)
                    m = nanmax(m, tl.abs(v))
                s = nanmax(_over_qmax(tl.reduce(m, 0, nanmax), QMAX), MIN_S)
                tl.store(s_ptr + row.to(tl.int64) * stride_sm, s)
            elif MODE == 1:
                s = nanmax(_over_qmax(tl.load(s_ptr), QMAX), MIN_S)
            else:
                s = tl.load(s_ptr)
            for c0 in range(0, n_cols, BLOCK):
                cols = c0 + tl.arange(0, BLOCK)
                mask = cols < n_cols
                v = _load_row_chunk(x_ptr, row, cols, mask, stride_xm, n_cols, HAS_SILU)
                tl.store(q_row + cols, _to_q(v, s, QMAX, q_dtype, IS_INT), mask=mask)


@triton.jit
def _quant_token_tile_kernel(x_ptr, q_ptr, s_ptr, ids_ptr, rows, stride_xm, stride_qm, n_cols, num_experts,
                             HAS_SILU: tl.constexpr, HAS_IDS: tl.constexpr, QMAX: tl.constexpr,
                             IS_INT: tl.constexpr, MIN_S: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                             FAST: tl.constexpr):
    """Dynamic per-token scales (``s_ptr[row]``) for rows of at most BLOCK columns, ROWS rows a program: each row
    is read once (``_quant_rows_kernel``'s per-token mode reads it twice, one program a row) and divided by one
    reciprocal (:func:`div_rn_by_rows`). The same values as ``_quant_rows_kernel`` (MODE 2)."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = r < rows
    if HAS_IDS:
        e = tl.load(ids_ptr + r, mask=live, other=-1)
        live = live & (e >= 0) & (e < num_experts)
    cols = tl.arange(0, BLOCK)
    mask = live[:, None] & (cols[None, :] < n_cols)
    v = _load_row_chunk(x_ptr, r[:, None], cols[None, :], mask, stride_xm, n_cols, HAS_SILU)  # [ROWS, BLOCK]
    s = nanmax(_over_qmax(tl.reduce(tl.abs(v), 1, nanmax), QMAX), MIN_S)     # [ROWS]
    tl.store(s_ptr + r, s, mask=live)
    y = _clamp_convert(div_rn_by_rows(v, s, FAST), QMAX, q_ptr.dtype.element_ty, IS_INT)
    tl.store(q_ptr + r.to(tl.int64)[:, None] * stride_qm + cols[None, :], y, mask=mask)


def token_tile(n_cols: int) -> tuple[int, int, int] | None:
    """``(BLOCK, ROWS, num_warps)`` of :func:`_quant_token_tile_kernel` for rows of ``n_cols`` columns, or None
    for the two-pass ``_quant_rows_kernel`` (rows wider than TOKEN_TILE_MAX).

    Measured on an H200 (per-token e4m3 of bf16 rows, µs; two-pass kernel / this tile): 65536 × 512 61.4 / 30.5,
    65536 × 2048 133.7 / 100.8, 8192 × 7168 70.2 / 52.3, 16384 × 14336 253.4 / 193.2, 1024 × 14336 17.5 / 14.4
    (and 128 × 14336 7.7 / 3.6 with 16 warps). Four warps a program were the fastest wherever compared:
    16384 × 14336 took 316.0 / 305.0 / 333.4 µs with 8 / 16 / 32 warps (the 7 registers spilled at 4 warps do
    not show); two rows a program at 16 warps 238.5.
    """
    block = triton.next_power_of_2(max(n_cols, 16))
    if block > TOKEN_TILE_MAX:
        return None
    return block, max(1, TOKEN_TILE_ELEMS // block), 4


TOKEN_TILE_MAX = 16384      # columns of the widest row read in one tile
TOKEN_TILE_ELEMS = 4096     # values a program for narrower rows (2048 measured the same, 8192 slower)


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def exact_fma() -> bool:
    """Whether ``tl.math.fma`` is a fused multiply-add, as :func:`div_rn_by_rows`'s fast path needs: in compiled
    kernels, not in the interpreter (which rounds the product)."""
    return not interpreting()


@triton.jit
def _finish_tensor_scale_kernel(amax_ptr, QMAX: tl.constexpr, MIN_S: tl.constexpr):
    tl.store(amax_ptr, nanmax(_over_qmax(tl.load(amax_ptr), QMAX), MIN_S))


def quantize_activations(x: torch.Tensor, q_dtype: torch.dtype = FP8_DTYPE, *, scale: torch.Tensor | None = None,
                         per_token: bool = False, group_size: int | None = None, silu_and_mul: bool = False,
                         topk_ids: torch.Tensor | None = None, num_experts: int = 0):
    """Quantize ``x [rows, C]`` (or ``silu(x[:, :C/2]) * x[:, C/2:]`` with ``silu_and_mul``) to ``q_dtype``.

    Mode as :func:`moejit.reference.fp8_quant_ref`: static ``scale``, ``per_token``, ``group_size`` groups, or dynamic
    per tensor. ``topk_ids`` (with ``num_experts``) masks rows: rows of dropped slots are skipped (their output is
    left unwritten) and excluded from a per-tensor amax. Returns ``(q [rows, C'], scale float32)`` with the scale
    shaped ``[1]``, ``[rows, 1]`` or ``[rows, C'/group_size]``. No host synchronization; graph-capturable.
    """
    rows, width = x.shape
    n_cols = width // 2 if silu_and_mul else width
    qmax = qmax_of(q_dtype)
    is_int = q_dtype == torch.int8
    q = torch.empty((rows, n_cols), dtype=q_dtype, device=x.device)
    has_ids = topk_ids is not None
    ids = topk_ids.reshape(-1) if has_ids else q  # a dummy pointer when unused
    if has_ids and ids.numel() != rows:
        raise ValueError(f"topk_ids has {ids.numel()} slots but x has {rows} rows")
    block = min(triton.next_power_of_2(max(n_cols, 16)), 2048)
    common = dict(HAS_SILU=silu_and_mul, HAS_IDS=has_ids, QMAX=qmax, IS_INT=is_int, MIN_S=MIN_SCALE)
    if group_size is not None:
        if n_cols % group_size or group_size & (group_size - 1):
            raise ValueError(f"group_size {group_size} must be a power of two dividing {n_cols}")
        s = torch.empty((rows, n_cols // group_size), dtype=torch.float32, device=x.device)
        mode, block = GROUP, max(block, group_size)
        stride_sm = s.stride(0)
    elif scale is not None:
        s, mode, stride_sm = scale.reshape(1).float(), STATIC_TENSOR, 0
    elif per_token:
        s = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
        mode, stride_sm = PER_TOKEN, 1
    else:
        s = torch.zeros(1, dtype=torch.float32, device=x.device)
        mode, stride_sm = DYNAMIC_TENSOR, 0
        if rows:
            _amax_kernel[(rows,)](x, s.view(torch.int32), ids, x.stride(0), n_cols, num_experts, HAS_SILU=silu_and_mul,
                                  HAS_IDS=has_ids, BLOCK=block, num_warps=4)
    tile = token_tile(n_cols) if mode == PER_TOKEN else None
    if rows and tile is not None:
        t_block, t_rows, t_warps = tile
        _quant_token_tile_kernel[(triton.cdiv(rows, t_rows),)](
            x, q, s, ids, rows, x.stride(0), q.stride(0), n_cols, num_experts, ROWS=t_rows, BLOCK=t_block,
            FAST=exact_fma(), num_warps=t_warps, **common)
    elif rows:
        _quant_rows_kernel[(rows,)](x, q, s, ids, x.stride(0), q.stride(0), stride_sm, n_cols, num_experts,
                                    MODE=mode, BLOCK=block, GROUP=group_size or 1, num_warps=4, **common)
    if mode == DYNAMIC_TENSOR:
        _finish_tensor_scale_kernel[(1,)](s, QMAX=qmax, MIN_S=MIN_SCALE)
    return q, s
