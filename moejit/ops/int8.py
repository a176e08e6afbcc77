"""Ops of the ``sm80_int8`` JIT module: INT8 grouped GEMMs, CUTLASS 2.x SM80 (``mma.sync``) kernels on every arch and,
in the module's sm_90a build, TMA + ``wgmma`` kernels chosen from 32 rows per expert on (``docs/int8_gemm.md``;
``MOEJIT_INT8_GEMM_KERNEL=sm80|sm90`` forces one on an sm_90 GPU).

Both GEMMs take the rows of all experts in one tensor, grouped by expert (``expert_offsets`` from
:func:`moejit.ops.moe_permute`), and run as one launch: a small device kernel turns ``expert_offsets`` into a tile
schedule, so nothing is read on the host, experts without rows cost nothing, and the calls capture into CUDA graphs.
Rows at or past ``expert_offsets[E]`` are left unwritten.
"""

from __future__ import annotations

import torch

from moejit import registry
from moejit.errors import MoejitInputError
from moejit.ops._validate import FLOAT16_TYPES, check_same_device, check_tensor

MODULE = "sm80_int8"
# The hybrid kernel's K tile: one mainloop step is one quantization block.
HYBRID_BLOCK_SIZE = 128
_INT32_LIMIT = 2**31


@registry.define("int8_grouped_mm", module=MODULE)
def _int8_grouped_mm_fake(a, a_scale, b, b_scale, expert_offsets, out_dtype):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


@registry.define("int8_hybrid_grouped_mm", module=MODULE)
def _int8_hybrid_grouped_mm_fake(a, a_q, a_f, b, b_scale, expert_offsets, block_size, super_group_size, q_max,
                                 out_dtype, a_rows=None, a_rows_div=1):
    rows = a.shape[0] if a_rows is None else a_rows.shape[0]
    return a.new_empty((rows, b.shape[1]), dtype=out_dtype)


def _check_operands(a, b, expert_offsets, out_dtype):
    check_tensor("a", a, dtypes=(torch.int8,), ndim=2, contiguous=True)
    check_tensor("b", b, dtypes=(torch.int8,), ndim=3, contiguous=True)
    check_tensor("expert_offsets", expert_offsets, dtypes=(torch.int32,), ndim=1, contiguous=True)
    if out_dtype not in FLOAT16_TYPES:
        raise MoejitInputError(f"out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype}")
    rows, k = a.shape
    e, n, kb = b.shape
    if kb != k:
        raise MoejitInputError(f"K mismatch: a is {tuple(a.shape)} but b is {tuple(b.shape)} ([E, N, K])")
    if expert_offsets.numel() != e + 1:
        raise MoejitInputError(f"expert_offsets must have E + 1 = {e + 1} entries, got {expert_offsets.numel()}")
    if e == 0 or n == 0 or k == 0:
        raise MoejitInputError(f"b must be non-empty [E, N, K], got {tuple(b.shape)}")
    if k % 16:
        raise MoejitInputError(f"K must be a multiple of 16 (16-byte aligned int8 rows), got {k}")
    return rows, e, n, k


def int8_grouped_mm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                    expert_offsets: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """INT8 grouped GEMM with per-tensor or per-token × per-channel scales.

    ``out[r, n] = a_scale[r] · b_scale[e, n] · Σ_k a[r, k] · b[e, n, k]`` (int32 accumulation, float32 scaling,
    one rounding to ``out_dtype``) for every row r of expert e.

    Args:
        a: ``[rows, K]`` int8, rows grouped by expert; K a multiple of 16 (and < 131072: int32 accumulation).
        a_scale: float32, 1 element (per-tensor) or ``[rows]`` (per-token).
        b: ``[E, N, K]`` int8 weights, K contiguous.
        b_scale: float32 ``[E]`` (per-tensor per expert) or ``[E, N]`` (per output channel).
        expert_offsets: int32 ``[E + 1]`` on the device; expert e owns rows ``expert_offsets[e]:expert_offsets[e+1]``.
        out_dtype: torch.bfloat16 or torch.float16.

    Returns:
        ``[rows, N]`` in ``out_dtype``; rows at or past ``expert_offsets[E]`` are left unwritten.
    """
    rows, e, n, k = _check_operands(a, b, expert_offsets, out_dtype)
    check_tensor("a_scale", a_scale, dtypes=(torch.float32,), contiguous=True)
    check_tensor("b_scale", b_scale, dtypes=(torch.float32,), contiguous=True)
    check_same_device(a=a, a_scale=a_scale, b=b, b_scale=b_scale, expert_offsets=expert_offsets)
    if k * 128 * 128 >= _INT32_LIMIT:
        raise MoejitInputError(f"K = {k} could overflow the int32 accumulator (K must be < 131072)")
    if not (a_scale.numel() == 1 or (a_scale.dim() >= 1 and a_scale.shape[0] == rows and a_scale.numel() == rows)):
        raise MoejitInputError(f"a_scale must have 1 element (per-tensor) or shape [rows] = [{rows}] (per-token), "
                               f"got {tuple(a_scale.shape)}")
    if not (b_scale.dim() >= 1 and b_scale.shape[0] == e and b_scale.numel() in (e, e * n)):
        raise MoejitInputError(f"b_scale must be [E] = [{e}] (per-tensor) or [E, N] = [{e}, {n}] (per-channel), "
                               f"got {tuple(b_scale.shape)}")
    return registry.op("int8_grouped_mm")(a, a_scale, b, b_scale, expert_offsets, out_dtype)


def max_safe_super_group(block_size: int, q_max: int) -> int:
    """The longest super group (in blocks) whose int32 sum cannot overflow: ``floor((2³¹-1) / (B · 127² · q_max))``."""
    return (_INT32_LIMIT - 1) // (block_size * 127 * 127 * q_max)


def int8_hybrid_grouped_mm(a: torch.Tensor, a_q: torch.Tensor, a_f: torch.Tensor, b: torch.Tensor,
                           b_scale: torch.Tensor, expert_offsets: torch.Tensor, block_size: int = HYBRID_BLOCK_SIZE,
                           super_group_size: int = 65, q_max: int = 16,
                           out_dtype: torch.dtype = torch.bfloat16, a_rows: torch.Tensor | None = None,
                           a_rows_div: int = 1) -> torch.Tensor:
    """INT8 hybrid blockwise (Q/F) grouped GEMM (design.md, "INT8 hybrid blockwise").

    For row m of expert e and column n, with blocks b of ``block_size`` along K and super groups g of
    ``super_group_size`` blocks::

        P[m,n,b] = Σ_{k in b} a[m,k] · b[e,n,k]          int32 (tensor cores)
        I[m,n,g] = Σ_{b in g} a_q[m,b] · P[m,n,b]        int32
        y[m,n]   = b_scale[e,n] · Σ_g a_f[m,g] · I[m,n,g]  float32 → out_dtype

    Args:
        a: ``[rows, K]`` int8 in [-127, 127], rows grouped by expert; K a multiple of ``block_size``.
        a_q: int32 ``[rows, K / block_size]``, values in [1, q_max].
        a_f: float32 ``[rows, ceil(K / block_size / super_group_size)]``.
        b: ``[E, N, K]`` int8 in [-127, 127]; b_scale: float32 ``[E, N]`` per output channel.
        expert_offsets: int32 ``[E + 1]`` on the device.
        block_size: must be 128 (the kernel's K tile).
        super_group_size: the *effective* super group: ``super_group_size · block_size · 127² · q_max < 2³¹`` is
            required (:func:`max_safe_super_group`; e.g. ≤ 65 for B = 128, q_max = 16). Callers with a longer
            requested super group split it into pieces of ``min(S, max_safe_super_group(B, q_max))`` blocks, each
            with its own F, so the int32 sums can never overflow.
        q_max: the largest Q.
        out_dtype: torch.bfloat16 or torch.float16.
        a_rows, a_rows_div: an optional row gather. With ``a_rows`` (int32 ``[R]``) the GEMM has R rows and row r
            is ``a[a_rows[r] // a_rows_div]`` of ``a [T, K]``, while ``a_q``, ``a_f``, ``expert_offsets`` and the
            output count the R rows. With :func:`moejit.ops.moe_permute`'s ``sort_idx`` and ``topk`` GEMM1 reads
            each token's int8 row where it is and no permuted copy is written (the hybrid layer's
            ``MOEJIT_INT8_HYBRID_GATHER=1``). The SM90 kernels gather in their producer warps (on an H200 37%
            slower than the same GEMM on copied rows, ``docs/int8_gemm.md``); for the SM80 ones the op copies
            the rows first. Indices of rows below ``expert_offsets[E]`` must lie in ``[0, T · a_rows_div)``; they
            are not checked on the host (that would synchronize), and the kernels clamp them to ``[0, T)``, so a
            bad index gives a wrong row, never an out-of-bounds read.

    Returns:
        ``[rows, N]`` in ``out_dtype``; rows at or past ``expert_offsets[E]`` are left unwritten.
    """
    _, e, n, k = _check_operands(a, b, expert_offsets, out_dtype)
    if a_rows is None:
        if a_rows_div != 1:
            raise MoejitInputError(f"a_rows_div = {a_rows_div!r} is only meaningful with a_rows")
        rows = a.shape[0]
    else:
        check_tensor("a_rows", a_rows, dtypes=(torch.int32,), ndim=1, contiguous=True)
        check_same_device(a=a, a_rows=a_rows)
        if isinstance(a_rows_div, bool) or not isinstance(a_rows_div, int) or not 1 <= a_rows_div < _INT32_LIMIT:
            raise MoejitInputError(f"a_rows_div must be a positive int, got {a_rows_div!r}")
        rows = a_rows.shape[0]
        if rows and a.shape[0] == 0:
            raise MoejitInputError(f"a has no rows to gather {rows} rows from")
    for name, value in (("block_size", block_size), ("super_group_size", super_group_size), ("q_max", q_max)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MoejitInputError(f"{name} must be a positive int, got {value!r}")
    if block_size != HYBRID_BLOCK_SIZE:
        raise MoejitInputError(f"block_size must be {HYBRID_BLOCK_SIZE} (the kernel's K tile), got {block_size}")
    if k % block_size:
        raise MoejitInputError(f"K = {k} must be a multiple of block_size = {block_size}")
    if super_group_size * block_size * 127 * 127 * q_max >= _INT32_LIMIT:
        raise MoejitInputError(
            f"super_group_size = {super_group_size} could overflow the int32 super-group sum (needs "
            f"super_group_size * block_size * 127^2 * q_max < 2^31, i.e. <= {max_safe_super_group(block_size, q_max)} "
            f"for block_size = {block_size}, q_max = {q_max}); pass the effective (split) super group")
    nb = k // block_size
    groups = -(-nb // super_group_size)
    check_tensor("a_q", a_q, dtypes=(torch.int32,), ndim=2, contiguous=True)
    check_tensor("a_f", a_f, dtypes=(torch.float32,), ndim=2, contiguous=True)
    check_tensor("b_scale", b_scale, dtypes=(torch.float32,), ndim=2, contiguous=True)
    check_same_device(a=a, a_q=a_q, a_f=a_f, b=b, b_scale=b_scale, expert_offsets=expert_offsets)
    if tuple(a_q.shape) != (rows, nb):
        raise MoejitInputError(f"a_q must be [rows, K / block_size] = [{rows}, {nb}], got {tuple(a_q.shape)}")
    if tuple(a_f.shape) != (rows, groups):
        raise MoejitInputError(f"a_f must be [rows, ceil(K / block_size / super_group_size)] = [{rows}, {groups}], "
                               f"got {tuple(a_f.shape)}")
    if tuple(b_scale.shape) != (e, n):
        raise MoejitInputError(f"b_scale must be [E, N] = [{e}, {n}] (per output channel), got {tuple(b_scale.shape)}")
    return registry.op("int8_hybrid_grouped_mm")(a, a_q, a_f, b, b_scale, expert_offsets, int(block_size),
                                                 int(super_group_size), int(q_max), out_dtype, a_rows,
                                                 int(a_rows_div))
