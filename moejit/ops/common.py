"""Ops of the ``common`` JIT module: gated activation, MoE permute/unpermute, grouped-GEMM problem sizes and the
block alignment of the fused MoE GEMM."""

from __future__ import annotations

import torch

from moejit import registry
from moejit.errors import MoejitInputError
from moejit.ops._validate import FLOAT16_TYPES, check_same_device, check_tensor

_ID_TYPES = (torch.int32, torch.int64)
_WEIGHT_TYPES = (torch.float32, torch.bfloat16, torch.float16)


@registry.define("silu_and_mul", module="common")
def _silu_and_mul_fake(input):  # noqa: A002 - the schema's argument name
    return input.new_empty((input.shape[0], input.shape[1] // 2))


@registry.define("moe_permute", module="common")
def _moe_permute_fake(hidden, topk_ids, num_experts):
    n = topk_ids.shape[0] * topk_ids.shape[1]
    i32 = dict(dtype=torch.int32, device=hidden.device)
    return (hidden.new_empty((n, hidden.shape[1])), torch.empty((num_experts + 1,), **i32),
            torch.empty((n,), **i32), torch.empty((n,), **i32))


@registry.define("moe_unpermute", module="common")
def _moe_unpermute_fake(rows, topk_weights, inv_idx, out_dtype=None):
    return rows.new_empty((topk_weights.shape[0], rows.shape[-1]), dtype=out_dtype or rows.dtype)


@registry.define("moe_problem_sizes", module="common")
def _moe_problem_sizes_fake(expert_offsets, n, k, swap_ab=False):
    return expert_offsets.new_empty((expert_offsets.shape[0] - 1, 3))


def align_max_padded(num_slots: int, num_experts: int, block_m: int) -> int:
    """Length of ``sorted_ids`` in a block alignment: the worst case ``num_slots + E·(block_m − 1)`` (every expert
    may need ``block_m − 1`` pad slots), rounded up to whole blocks (at least one)."""
    worst = max(num_slots + num_experts * (block_m - 1), 1)
    return -(-worst // block_m) * block_m


@registry.define("moe_align_block_size", module="common")
def _moe_align_block_size_fake(topk_ids, num_experts, block_m):
    max_padded = align_max_padded(topk_ids.numel(), num_experts, block_m)
    i32 = dict(dtype=torch.int32, device=topk_ids.device)
    return (torch.empty((max_padded,), **i32), torch.empty((max_padded // block_m,), **i32),
            torch.empty((1,), **i32))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU gate: ``x [T, 2N]`` (bf16/fp16, contiguous) → ``silu(x[:, :N]) * x[:, N:]`` of shape ``[T, N]``.

    Computed in float32, rounded once to the input dtype.
    """
    check_tensor("x", x, dtypes=FLOAT16_TYPES, ndim=2, contiguous=True)
    if x.shape[1] % 2:
        raise MoejitInputError(f"x's last dimension must be even (gate ‖ up), got {x.shape[1]}")
    return registry.op("silu_and_mul")(x)


def check_routing_args(hidden: torch.Tensor, topk_ids: torch.Tensor, num_experts: int, hidden_dtypes=None) -> None:
    """The checks every op that permutes ``hidden [M, K]`` by ``topk_ids [M, topk]`` over ``num_experts`` makes:
    2-D, contiguous, on one CUDA device, int32/int64 ids, one row of ids per row of hidden, E a positive int."""
    check_tensor("hidden", hidden, dtypes=hidden_dtypes, ndim=2, contiguous=True)
    check_tensor("topk_ids", topk_ids, dtypes=_ID_TYPES, ndim=2, contiguous=True)
    check_same_device(hidden=hidden, topk_ids=topk_ids)
    if topk_ids.shape[0] != hidden.shape[0]:
        raise MoejitInputError(f"topk_ids has {topk_ids.shape[0]} rows but hidden has {hidden.shape[0]}")
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or not 0 < num_experts < 1 << 30:
        raise MoejitInputError(f"num_experts must be a positive int, got {num_experts!r}")


def moe_permute(hidden: torch.Tensor, topk_ids: torch.Tensor, num_experts: int):
    """Group the (token, slot) pairs by expert.

    Args:
        hidden: ``[M, K]`` rows to expand (any dtype, contiguous).
        topk_ids: ``[M, topk]`` int32/int64 expert of each slot. Ids outside ``[0, num_experts)`` mark dropped
            slots (e.g. experts owned by another rank): they get no row in any expert and contribute nothing in
            :func:`moe_unpermute`.
        num_experts: E.

    Returns:
        ``(rows [M*topk, K], expert_offsets int32 [E+1], sort_idx int32 [M*topk], inv_idx int32 [M*topk])``:
        ``rows[p] = hidden[sort_idx[p] // topk]``; expert e owns rows ``expert_offsets[e]:expert_offsets[e+1]``;
        ``inv_idx[m*topk+j]`` is the row of slot (m, j), or -1 if dropped. The sort is stable (a counting sort
        over the experts up to 4095 experts, CUB's radix sort past that or with ``MOEJIT_PERMUTE_SORT=cub``), so
        within an expert rows keep token order. Nothing synchronizes with the host.
    """
    check_routing_args(hidden, topk_ids, num_experts)
    return registry.op("moe_permute")(hidden, topk_ids, num_experts)


def moe_unpermute(rows: torch.Tensor, topk_weights: torch.Tensor, inv_idx: torch.Tensor,
                  out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Weighted reduce back to token order: ``out[m] = Σ_j topk_weights[m, j] · rows[inv_idx[m*topk + j]]``.

    ``rows`` is bf16/fp16/fp32 ``[R, K]`` with ``R >= M*topk``, or ``[S, R, K]``: S split-K partial planes of the
    same rows (:func:`moejit.ops.cutlass_fp8_grouped_mm` with ``k_splits=S``), summed here. Slots with
    ``inv_idx == -1`` are skipped. Accumulates in float32 and rounds once to ``out_dtype`` (default: rows' dtype).
    Returns ``[M, K]``.
    """
    check_tensor("rows", rows, dtypes=FLOAT16_TYPES + (torch.float32,), contiguous=True)
    if rows.dim() not in (2, 3) or (rows.dim() == 3 and rows.shape[0] < 1):
        raise MoejitInputError(f"rows must be [R, K] or [S, R, K] with S >= 1, got shape {tuple(rows.shape)}")
    check_tensor("topk_weights", topk_weights, dtypes=_WEIGHT_TYPES, ndim=2)
    check_tensor("inv_idx", inv_idx, dtypes=(torch.int32,), ndim=1, contiguous=True)
    check_same_device(rows=rows, topk_weights=topk_weights, inv_idx=inv_idx)
    if inv_idx.numel() != topk_weights.numel():
        raise MoejitInputError(f"inv_idx has {inv_idx.numel()} entries, expected M*topk = {topk_weights.numel()}")
    if rows.shape[-2] < topk_weights.numel():
        raise MoejitInputError(f"rows has {rows.shape[-2]} rows, fewer than M*topk = {topk_weights.numel()}")
    if out_dtype is not None and out_dtype not in FLOAT16_TYPES + (torch.float32,):
        raise MoejitInputError(f"out_dtype must be bfloat16, float16 or float32, got {out_dtype}")
    return registry.op("moe_unpermute")(rows, topk_weights, inv_idx, out_dtype)


def moe_problem_sizes(expert_offsets: torch.Tensor, n: int, k: int, swap_ab: bool = False) -> torch.Tensor:
    """Per-expert GEMM problem sizes ``[E, 3]`` int32 from ``expert_offsets [E+1]``, computed on the device.

    Row e is ``(m_e, n, k)`` with ``m_e = expert_offsets[e+1] - expert_offsets[e]``, or ``(n, m_e, k)`` when
    ``swap_ab`` (the transposed problem Bᵀ·Aᵀ that decode-sized grouped GEMMs use).
    """
    check_tensor("expert_offsets", expert_offsets, dtypes=(torch.int32,), ndim=1, contiguous=True)
    if expert_offsets.numel() < 2:
        raise MoejitInputError("expert_offsets must have E + 1 >= 2 entries")
    if n <= 0 or k <= 0:
        raise MoejitInputError(f"n and k must be positive, got n={n}, k={k}")
    return registry.op("moe_problem_sizes")(expert_offsets, int(n), int(k), bool(swap_ab))


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Sort the ``M·topk`` slots of ``topk_ids`` by expert, padded per expert to ``block_m`` (CUDA kernels; the
    same contract as :func:`moejit.triton.align.align_block_size`, its Triton twin).

    Returns ``(sorted_ids [max_padded], expert_ids [max_padded / block_m], num_post_pad [1])``, all int32, with
    ``max_padded = align_max_padded(M·topk, E, block_m)``: slot indices ``m·topk + j`` grouped by expert (order
    within an expert unspecified), each expert's run padded with the sentinel ``M·topk``; the expert of each block
    of ``block_m`` sorted slots (-1 past the padded total); the padded total. Ids outside ``[0, E)`` (``-1``:
    routed to no local expert) are dropped. No host synchronization; CUDA-graph capturable.
    """
    check_tensor("topk_ids", topk_ids, dtypes=_ID_TYPES, contiguous=True)
    if num_experts < 1:
        raise MoejitInputError(f"num_experts must be >= 1, got {num_experts}")
    if block_m < 1 or block_m > 1024 or block_m & (block_m - 1):
        raise MoejitInputError(f"block_m must be a power of two in [1, 1024], got {block_m}")
    return registry.op("moe_align_block_size")(topk_ids, int(num_experts), int(block_m))
