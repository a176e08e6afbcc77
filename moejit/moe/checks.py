"""Input validation shared by every MoE layer, so that all backends accept exactly the same arguments.

Every failure raises :class:`moejit.errors.MoejitInputError` naming the argument. Value checks on ``topk_ids``
need the host to read the device, so they run only in eager mode outside CUDA-graph capture and torch.compile, and
can be turned off with ``MOEJIT_CHECK_IDS=0``; the kernels never crash on bad ids either way (an id outside
``[0, E)`` is a dropped slot). ``-1`` is always allowed: it marks a slot routed to no local expert.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from moejit.errors import MoejitInputError
from moejit.ops._validate import FLOAT16_TYPES, check_same_device, check_tensor

FP8 = torch.float8_e4m3fn
INT8 = torch.int8


@dataclass(frozen=True)
class MoeShape:
    m: int
    k: int  # hidden size
    n: int  # intermediate size (w1 has 2n rows)
    num_experts: int
    topk: int


def check_routing(a: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> int:
    """Check ``a``, ``topk_weights`` and ``topk_ids``; returns topk."""
    check_tensor("topk_ids", topk_ids, dtypes=(torch.int32, torch.int64), ndim=2, contiguous=True)
    check_tensor("topk_weights", topk_weights, dtypes=(torch.float32, torch.bfloat16, torch.float16), ndim=2)
    if topk_ids.shape[0] != a.shape[0]:
        raise MoejitInputError(f"topk_ids has {topk_ids.shape[0]} rows but a has {a.shape[0]}")
    if topk_weights.shape != topk_ids.shape:
        raise MoejitInputError(f"topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(topk_ids.shape)} "
                               "must have the same shape")
    if topk_ids.shape[1] < 1:
        raise MoejitInputError("topk_ids must have at least one column")
    check_same_device(a=a, topk_weights=topk_weights, topk_ids=topk_ids)
    if _may_read_device() and topk_ids.numel():
        bad = (topk_ids >= num_experts) | (topk_ids < -1)
        if bool(bad.any()):
            first = topk_ids[bad][0].item()
            raise MoejitInputError(f"topk_ids holds {first}, outside [0, {num_experts}) (use -1 for dropped slots)")
    return topk_ids.shape[1]


def _may_read_device() -> bool:
    if os.environ.get("MOEJIT_CHECK_IDS", "1") in ("0", ""):
        return False
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def check_moe_weights(a: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, weight_dtype: torch.dtype,
                      multiple_of: int = 16) -> MoeShape:
    """``a [M, K]`` bf16/fp16, ``w1 [E, 2N, K]`` and ``w2 [E, K, N]`` of ``weight_dtype``, all contiguous CUDA."""
    check_tensor("a", a, dtypes=FLOAT16_TYPES, ndim=2, contiguous=True)
    check_tensor("w1", w1, dtypes=(weight_dtype,), ndim=3, contiguous=True)
    check_tensor("w2", w2, dtypes=(weight_dtype,), ndim=3, contiguous=True)
    check_same_device(a=a, w1=w1, w2=w2)
    m, k = a.shape
    e, two_n, k1 = w1.shape
    if k1 != k:
        raise MoejitInputError(f"w1 is [E, 2N, K] = {tuple(w1.shape)} but a has K = {k}")
    if two_n % 2:
        raise MoejitInputError(f"w1's second dimension (2N = gate ‖ up) must be even, got {two_n}")
    n = two_n // 2
    if tuple(w2.shape) != (e, k, n):
        raise MoejitInputError(f"w2 must be [E, K, N] = {(e, k, n)}, got {tuple(w2.shape)}")
    if e == 0:
        raise MoejitInputError(f"w1 has no experts: {tuple(w1.shape)}")
    for name, value in (("K", k), ("N", n)):
        if value <= 0 or value % multiple_of:
            raise MoejitInputError(f"{name} = {value} must be a positive multiple of {multiple_of}")
    return MoeShape(m, k, n, e, 0)


def weight_scale_mode(name: str, scale: torch.Tensor, num_experts: int, n_out: int, k_in: int,
                      per_out_ch: bool, block_shape: tuple[int, int] | None) -> str:
    """Classify a weight scale as ``"tensor"`` ([E], [E,1], [E,1,1]), ``"channel"`` ([E, N_out] or [E, N_out, 1])
    or ``"block"`` ([E, ceil(N_out/bn), ceil(K/bk)]), and check it agrees with ``per_out_ch``/``block_shape``."""
    check_tensor(name, scale, dtypes=(torch.float32,))
    shape = tuple(scale.shape)
    if block_shape is not None:
        bn, bk = block_shape
        want = (num_experts, -(-n_out // bn), -(-k_in // bk))
        if shape != want:
            raise MoejitInputError(f"{name} must be [E, N_out/{bn}, K/{bk}] = {want} for block_shape "
                                   f"{block_shape}, got {shape}")
        return "block"
    if scale.numel() == num_experts and shape[0] == num_experts and all(d == 1 for d in shape[1:]):
        if per_out_ch and n_out != 1:
            raise MoejitInputError(f"per_out_ch=True needs {name} of shape [E, {n_out}], got {shape}")
        return "tensor"
    if shape[:2] == (num_experts, n_out) and all(d == 1 for d in shape[2:]):
        if not per_out_ch:
            raise MoejitInputError(f"{name} has one scale per output channel {shape}; pass per_out_ch=True")
        return "channel"
    raise MoejitInputError(f"{name} of shape {shape} matches no scale layout: [E]={num_experts} per tensor or "
                           f"[E, N_out]=({num_experts}, {n_out}) per output channel")


def check_act_scale(name: str, scale: torch.Tensor | None, per_act_token: bool) -> None:
    """A static activation scale is one float32 element; per-token activations are always dynamic."""
    if scale is None:
        return
    check_tensor(name, scale, dtypes=(torch.float32,))
    if per_act_token:
        raise MoejitInputError(f"{name} is a static per-tensor scale but per_act_token=True asks for dynamic "
                               "per-token scales; pass one or the other")
    if scale.numel() != 1:
        raise MoejitInputError(f"{name} must hold one element (static per-tensor scale), got shape "
                               f"{tuple(scale.shape)}")


def check_quantized_moe(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                        topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor,
                        a1_scale: torch.Tensor | None, a2_scale: torch.Tensor | None, *, per_act_token: bool,
                        per_out_ch: bool, activation: str, out_dtype: torch.dtype | None, weight_dtype: torch.dtype,
                        block_shape: tuple[int, int] | None = None) -> tuple[MoeShape, torch.dtype]:
    """Every check of a quantized MoE layer's arguments (``cutlass_moe_fp8``, ``triton_moe_fp8``/``_int8``):
    weights and routing, weight-scale layouts against ``per_out_ch``/``block_shape``, static activation scales,
    devices, activation and output dtype. ``block_shape`` must already be a pair of ints. Returns the shape (with
    topk) and the resolved output dtype (``a.dtype`` when None)."""
    shape = check_moe_weights(a, w1_q, w2_q, weight_dtype, multiple_of=16)
    e, k, n = shape.num_experts, shape.k, shape.n
    topk = check_routing(a, topk_weights, topk_ids, e)
    if block_shape is not None:
        bk = block_shape[1]
        if k % bk or n % bk:
            raise MoejitInputError(f"block_shape {block_shape}: K = {k} and N = {n} must be multiples of block_k "
                                   "(the activations are quantized in 1×block_k groups)")
        if per_act_token or per_out_ch:
            raise MoejitInputError("block_shape selects block-wise scales; per_act_token/per_out_ch must be False")
        if a1_scale is not None or a2_scale is not None:
            raise MoejitInputError("block_shape quantizes activations dynamically in 1×block_k groups; "
                                   "a1_scale/a2_scale must be None")
    weight_scale_mode("w1_scale", w1_scale, e, 2 * n, k, per_out_ch, block_shape)
    weight_scale_mode("w2_scale", w2_scale, e, k, n, per_out_ch, block_shape)
    check_act_scale("a1_scale", a1_scale, per_act_token)
    check_act_scale("a2_scale", a2_scale, per_act_token)
    check_same_device(a=a, w1_scale=w1_scale, w2_scale=w2_scale, a1_scale=a1_scale, a2_scale=a2_scale)
    if activation != "silu":
        raise MoejitInputError(f"activation must be 'silu', got {activation!r}")
    out_dtype = a.dtype if out_dtype is None else out_dtype
    if out_dtype not in FLOAT16_TYPES:
        raise MoejitInputError(f"out_dtype must be bfloat16 or float16, got {out_dtype}")
    return MoeShape(shape.m, k, n, e, topk), out_dtype
