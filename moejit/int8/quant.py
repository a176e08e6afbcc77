"""Triton kernels producing the INT8 hybrid blockwise (Q/F) activation format (:mod:`moejit.int8.format`).

One kernel, three producers selected at compile time:

- ``int8_hybrid_quant``: ``x [T, K]`` → ``xq int8 [T, K]``, ``Q int32 [T, K/B]``, ``F float32 [T, G]``.
- ``int8_hybrid_permute_quant``: the same for the expert-sorted rows of an MoE layer (row p is
  ``hidden[sort_idx[p] // topk]`` quantized), with no permuted 16-bit copy: each token row is read and quantized
  once and its int8 row, Q and F are written to the rows of its ``topk`` slots (through the inverse permutation).
  Quantizing each permuted row instead repeated the work ``topk`` times: 246 µs at Qwen3.6-35B-A3B M=8192 on an
  H200, against 125 µs this way (the plain quantizer over the 65536 permuted rows: 162 µs).
- ``int8_hybrid_permute_scales`` (not a quantizer): the Q and F rows of expert-sorted rows, gathered from the token
  rows' (the unfused runner quantizes the token rows, then permutes the int8 rows and these).
- ``int8_hybrid_silu_quant``: GEMM1's output ``[T, 2N]`` (gate ‖ up) → ``silu(gate) · up`` in float32 →
  ``xq int8 [T, N]`` + Q/F, without storing the activation.

Each program quantizes one (row, super group): it loads the group's ``S_eff`` blocks as one ``[S_pad, B]`` tile,
so the group maximum, F, every Q and every xq come from a single read of the input. The arithmetic is exactly
:func:`moejit.reference.int8.int8_hybrid_quant_ref`'s: IEEE divisions (``div_rn``), ``ceil``, clamps, and
round-half-away-from-zero; so the plain and the permuted quantizers are bit-identical to the reference. Compiled,
the per-element division is one reciprocal a block with an exact fma correction (the same bits:
:func:`moejit.triton.quant.div_rn_by_rows`) and the rounding is ``trunc(v ± (0.5 - 2^-25))`` (exact for every
float32 |v| ≤ 127). The SiLU variant computes ``silu`` with ``ex2.approx.ftz`` and ``div.approx.ftz`` when
compiled, so it differs from torch's in the last bits (and, rarely, by one step of xq or Q at a rounding boundary).
On an H200 these took the SiLU quantizer at 65536 × 1024 from 59.4 to 44.1 µs (the same bytes out on that input)
and the plain one at 8192 × 2048 from 21.6 to 20.2.

The wrappers accept CPU tensors when Triton runs in interpreter mode (``TRITON_INTERPRET=1``), which the CPU tests
use. Nothing synchronizes with the host: every wrapper is CUDA-graph capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from moejit.errors import MoejitInputError
from moejit.int8.format import HybridFormat
from moejit.triton.quant import div_rn_by_rows, exact_fma, interpreting, nanmax

_ACT_TYPES = (torch.bfloat16, torch.float16, torch.float32)

MODE_PLAIN = 0
MODE_SCATTER = 1  # token row m → the rows idx[m*topk + j], j < topk (entries < 0 skipped)
MODE_SILU = 2


@triton.jit
def _invert_kernel(perm_ptr, inv_ptr, n, BLOCK: tl.constexpr):
    """``inv[perm[p]] = p`` for a permutation of ``[0, n)``."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = p < n
    tl.store(inv_ptr + tl.load(perm_ptr + p, mask=mask, other=0), p, mask=mask)


@triton.jit
def _permute_scales_kernel(sort_idx_ptr, q_ptr, f_ptr, q_out_ptr, f_out_ptr, rows, num_blocks, num_groups,
                           TOPK: tl.constexpr, BLOCK_R: tl.constexpr, NB_PAD: tl.constexpr, NG_PAD: tl.constexpr):
    """Rows ``p`` of the block: ``Q_out[p] = Q[sort_idx[p] // TOPK]``, ``F_out[p] = F[sort_idx[p] // TOPK]``."""
    p = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = p < rows
    src = (tl.load(sort_idx_ptr + p, mask=ok, other=0) // TOPK).to(tl.int64)
    dst = p.to(tl.int64)
    cb = tl.arange(0, NB_PAD)
    mq = ok[:, None] & (cb[None, :] < num_blocks)
    q = tl.load(q_ptr + src[:, None] * num_blocks + cb[None, :], mask=mq, other=0)
    tl.store(q_out_ptr + dst[:, None] * num_blocks + cb[None, :], q, mask=mq)
    cg = tl.arange(0, NG_PAD)
    mf = ok[:, None] & (cg[None, :] < num_groups)
    f = tl.load(f_ptr + src[:, None] * num_groups + cg[None, :], mask=mf, other=0.0)
    tl.store(f_out_ptr + dst[:, None] * num_groups + cg[None, :], f, mask=mf)


@triton.jit
def _int8_hybrid_quant_kernel(x_ptr, idx_ptr, xq_ptr, q_ptr, f_ptr,
                              K, x_row_stride, num_blocks, num_groups, TOPK: tl.constexpr,
                              S_EFF: tl.constexpr, S_PAD: tl.constexpr, BLOCK: tl.constexpr,
                              Q_MAX: tl.constexpr, MODE: tl.constexpr, FAST: tl.constexpr):
    row = tl.program_id(0)  # the source row (MODE_SCATTER: a token row, stored to TOPK rows)
    grp = tl.program_id(1)
    lane = tl.arange(0, S_PAD)
    blk = grp * S_EFF + lane                                     # [S_PAD] block index in the row
    blk_ok = (lane < S_EFF) & (blk < num_blocks)
    col = blk[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]    # [S_PAD, BLOCK] column in the row
    mask = blk_ok[:, None] & (col < K)
    base = x_ptr + row.to(tl.int64) * x_row_stride
    if MODE == 2:
        gate = tl.load(base + col, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(base + K + col, mask=mask, other=0.0).to(tl.float32)
        if FAST:  # ex2.approx.ftz and div.approx: no subnormal range handling around either
            x = libdevice.fast_dividef(gate, 1.0 + libdevice.fast_expf(-gate)) * up
        else:
            x = gate / (1.0 + tl.exp(-gate)) * up
    else:
        x = tl.load(base + col, mask=mask, other=0.0).to(tl.float32)

    amax = tl.reduce(tl.abs(x), 1, nanmax)                       # [S_PAD]; padded blocks are 0
    f = tl.math.div_rn(tl.reduce(amax, 0, nanmax), Q_MAX * 127.0)  # F = group max / (127 · q_max); NaN kept
    live = f > 0.0
    denom = tl.where(live, f * 127.0, 1.0)
    q = tl.ceil(tl.math.div_rn(amax, tl.zeros_like(amax) + denom))
    q = tl.minimum(tl.maximum(q, 1.0), Q_MAX * 1.0)
    q = tl.where(live, q, 1.0)
    step = tl.where(live, q * f, 1.0)                            # [S_PAD]
    v = div_rn_by_rows(x, step, FAST)
    v = tl.where(live, v, 0.0)
    v = tl.minimum(tl.maximum(v, -127.0), 127.0)
    # Round half away from zero: trunc(v ± (0.5 - 2^-25)), exact for every float32 |v| ≤ 127 (checked exhaustively
    # against trunc + the fraction's comparisons with ±0.5, which is what the reference computes).
    r = (v + tl.where(v < 0.0, -0.4999999701976776, 0.4999999701976776)).to(tl.int32)

    if MODE == 1:
        for j in tl.static_range(TOPK):
            dest = tl.load(idx_ptr + row.to(tl.int64) * TOPK + j)
            _store_row(xq_ptr, q_ptr, f_ptr, dest.to(tl.int64), dest >= 0, K, num_blocks, num_groups, grp, col,
                       mask, blk, blk_ok, r, q, f)
    else:
        _store_row(xq_ptr, q_ptr, f_ptr, row.to(tl.int64), True, K, num_blocks, num_groups, grp, col, mask, blk,
                   blk_ok, r, q, f)


@triton.jit
def _store_row(xq_ptr, q_ptr, f_ptr, out_row, live, K, num_blocks, num_groups, grp, col, mask, blk, blk_ok, r, q,
               f):
    """One (row, super group) of the output, if ``live``: int8 values, the blocks' Q and the group's F."""
    tl.store(xq_ptr + out_row * K + col, r.to(tl.int8), mask=mask & live)
    tl.store(q_ptr + out_row * num_blocks + blk, q.to(tl.int32), mask=blk_ok & live)
    tl.store(f_ptr + out_row * num_groups + grp, f, mask=live)


def _launch(x, idx, rows: int, k: int, x_row_stride: int, topk: int, fmt: HybridFormat, mode: int):
    """Quantize the ``x.shape[0]`` source rows into ``rows`` output rows (``rows = x.shape[0]`` except for
    MODE_SCATTER, where source row m goes to the output rows ``idx[m*topk : (m+1)*topk]``)."""
    nb, groups, s_eff = fmt.num_blocks(k), fmt.num_groups(k), fmt.s_eff
    dev = x.device
    xq = torch.empty((rows, k), dtype=torch.int8, device=dev)
    q = torch.empty((rows, nb), dtype=torch.int32, device=dev)
    f = torch.empty((rows, groups), dtype=torch.float32, device=dev)
    if rows == 0:
        return xq, q, f
    s_pad = triton.next_power_of_2(min(s_eff, nb))
    tile = s_pad * fmt.block_size
    # Warps per (row, super group) tile, measured on an H200 (docs/bench_int8.md): plain rows a warp per 1024
    # elements (8192 x 2048 bf16: 25.9 / 21.4 / 22.5 / 25.6 µs with 1 / 2 / 4 / 8 warps); the scatter, which
    # stores each row topk times, and SiLU a warp per 512 (Qwen3.6 M=8192 permute+quant 57.4 / 50.9 / 48.3 µs with
    # 1 / 2 / 4 warps; SiLU+quant at N=512 58.8 µs with its 1 warp, 64.1 with 2)
    num_warps = max(1, min(16, tile // (1024 if mode == MODE_PLAIN else 512)))
    _int8_hybrid_quant_kernel[(x.shape[0], groups)](
        x, idx if idx is not None else x, xq, q, f, k, x_row_stride, nb, groups, TOPK=topk,
        S_EFF=s_eff, S_PAD=s_pad, BLOCK=fmt.block_size, Q_MAX=fmt.q_max, MODE=mode, FAST=exact_fma(),
        num_warps=num_warps)
    return xq, q, f


# moejit.ops re-exports this module's wrappers, so moejit.ops._validate is imported when first needed (a top-level
# import would run moejit/ops/__init__.py, which imports this module, before this module has defined anything).
def check_tensor(name: str, t, **kwargs):
    from moejit.ops import _validate

    return _validate.check_tensor(name, t, **kwargs)


def check_same_device(**tensors):
    from moejit.ops import _validate

    _validate.check_same_device(**tensors)


def _check_act(name: str, x, ndim: int = 2):
    check_tensor(name, x, dtypes=_ACT_TYPES, ndim=ndim, contiguous=True, cuda=not interpreting())


def _check_slot_index(name: str, idx, m: int, topk, **same_device):
    """``topk`` a positive int and ``idx`` a contiguous int32 ``[M*topk]`` slot index on the device of
    ``same_device``'s tensors."""
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise MoejitInputError(f"topk must be a positive int, got {topk!r}")
    check_tensor(name, idx, dtypes=(torch.int32,), ndim=1, contiguous=True, cuda=not interpreting())
    check_same_device(**same_device, **{name: idx})
    if idx.numel() != m * topk:
        raise MoejitInputError(f"{name} has {idx.numel()} entries, expected M*topk = {m * topk}")


def int8_hybrid_quant(x: torch.Tensor, block_size: int = 128, super_group_size: int = 256, q_max: int = 16):
    """Quantize ``x [T, K]`` (bf16/fp16/fp32, contiguous) to the hybrid Q/F format.

    Returns ``(xq int8 [T, K], Q int32 [T, K/B], F float32 [T, G])``, ``G = ceil((K/B) / S_eff)`` where
    ``S_eff = min(super_group_size, safe_super_group(B, q_max))`` (longer super groups are split into
    overflow-safe pieces, see :mod:`moejit.int8.format`). K must be a multiple of ``block_size``.
    """
    fmt = HybridFormat(block_size, super_group_size, q_max)
    _check_act("x", x)
    t, k = x.shape
    return _launch(x, None, t, k, k, 1, fmt, MODE_PLAIN)


def int8_hybrid_permute_quant(hidden: torch.Tensor, sort_idx: torch.Tensor, topk: int, block_size: int = 128,
                              super_group_size: int = 256, q_max: int = 16, inv_idx: torch.Tensor | None = None):
    """Fused permute + quantize: row p of the output is ``hidden[sort_idx[p] // topk]`` quantized to Q/F.

    ``hidden [M, K]`` (bf16/fp16/fp32, contiguous), ``sort_idx int32 [M*topk]`` a permutation of ``[0, M*topk)``
    as returned by :func:`moejit.ops.moe_permute`. Each token row is quantized once and written to the rows of its
    slots. ``inv_idx`` (optional, int32 ``[M*topk]``, e.g. ``moe_permute``'s): the inverse permutation, saving the
    kernel that computes it; its entries < 0 (dropped slots) are skipped, so those rows are left unwritten.
    Returns ``(xq int8 [M*topk, K], Q int32 [M*topk, K/B], F float32 [M*topk, G])``; the permuted 16-bit rows
    are never materialized.
    """
    fmt = HybridFormat(block_size, super_group_size, q_max)
    _check_act("hidden", hidden)
    m, k = hidden.shape
    _check_slot_index("sort_idx", sort_idx, m, topk, hidden=hidden)
    if inv_idx is not None:
        _check_slot_index("inv_idx", inv_idx, m, topk, hidden=hidden)
    if inv_idx is None:
        inv_idx = torch.empty_like(sort_idx)
        if sort_idx.numel():
            _invert_kernel[(triton.cdiv(sort_idx.numel(), 1024),)](sort_idx, inv_idx, sort_idx.numel(), BLOCK=1024)
    return _launch(hidden, inv_idx, m * topk, k, k, topk, fmt, MODE_SCATTER)


def int8_hybrid_permute_scales(q: torch.Tensor, f: torch.Tensor, sort_idx: torch.Tensor, topk: int):
    """The Q and F rows of permuted rows: ``Q[sort_idx[p] // topk]`` and ``F[sort_idx[p] // topk]`` for every
    ``p``, in one launch.

    With :func:`moejit.ops.moe_permute` applied to the int8 rows of :func:`int8_hybrid_quant`, this completes the
    Q/F operand of the expert-sorted rows (the same bytes as quantizing the permuted rows, since the format is a
    function of each row alone). ``q`` int32 ``[M, K/B]``, ``f`` float32 ``[M, G]`` (contiguous), ``sort_idx``
    int32 ``[M*topk]``, a permutation of ``[0, M*topk)``. Returns ``(Q int32 [M*topk, K/B], F float32 [M*topk,
    G])``.
    """
    on_cuda = not interpreting()
    check_tensor("q", q, dtypes=(torch.int32,), ndim=2, contiguous=True, cuda=on_cuda)
    check_tensor("f", f, dtypes=(torch.float32,), ndim=2, contiguous=True, cuda=on_cuda)
    m = q.shape[0]
    if f.shape[0] != m:
        raise MoejitInputError(f"q and f must have the same rows, got {m} and {f.shape[0]}")
    _check_slot_index("sort_idx", sort_idx, m, topk, q=q, f=f)
    rows, nb, groups = sort_idx.numel(), q.shape[1], f.shape[1]
    q_out = torch.empty((rows, nb), dtype=torch.int32, device=q.device)
    f_out = torch.empty((rows, groups), dtype=torch.float32, device=q.device)
    if rows and (nb or groups):
        block_r = 64
        _permute_scales_kernel[(triton.cdiv(rows, block_r),)](
            sort_idx, q, f, q_out, f_out, rows, nb, groups, TOPK=topk, BLOCK_R=block_r,
            NB_PAD=triton.next_power_of_2(max(nb, 1)), NG_PAD=triton.next_power_of_2(max(groups, 1)), num_warps=4)
    return q_out, f_out


def int8_hybrid_silu_quant(x: torch.Tensor, block_size: int = 128, super_group_size: int = 256, q_max: int = 16):
    """Fused SiLU·mul + quantize: ``x [T, 2N]`` (gate ‖ up, bf16/fp16/fp32, contiguous) →
    ``silu(x[:, :N]) · x[:, N:]`` in float32, quantized to Q/F without being stored.

    Returns ``(xq int8 [T, N], Q int32 [T, N/B], F float32 [T, G])``. N must be a multiple of ``block_size``.
    """
    fmt = HybridFormat(block_size, super_group_size, q_max)
    _check_act("x", x)
    t, two_n = x.shape
    if two_n % 2:
        raise MoejitInputError(f"x's last dimension must be even (gate ‖ up), got {two_n}")
    n = two_n // 2
    return _launch(x, None, t, n, two_n, 1, fmt, MODE_SILU)
