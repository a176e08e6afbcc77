"""The FP8 MoE layer on Hopper with CUTLASS grouped GEMMs.

Pipeline (every step on the device; no host synchronization, so the layer captures into CUDA graphs)::

    quantize a [M, K] → e4m3 (static / dynamic per-tensor, or dynamic per-token)
    permute the fp8 rows by expert (stable sort; per-token scales follow the rows)
    GEMM1  [M·topk, 2N] = rows · w1[e]ᵀ, scaled by a-scale × w1-scale, stored in float32
    SiLU(gate)·up, rounded to the activation dtype, fused with its quantization (per-tensor scales see only the
    valid rows)
    GEMM2  [M·topk, K] = inter · w2[e]ᵀ, scaled by a2-scale × w2-scale (at decode split over K into float32
    partial planes when its tiles would fill too few waves: grouped_mm_k_splits)
    weighted unpermute (summing the planes) → out [M, K]

Quantizing before permuting moves 1 byte per element through the permutation instead of 2, and quantizes M rows
instead of M·topk; the result is the same since every copy of a token row gets the same scale. Up to
PERMUTE_QUANT_MAX_SLOTS (1024) slots with a static or per-token input scale, the first two steps (and the gather
of per-token scales) are one launch, ``fp8_permute_quant``: at decode the front end's seven small kernels cost
more than their work. ``MOEJIT_FP8_FUSED_PERMUTE_QUANT=0`` (read at call time) turns that off.

GEMM1 stores float32 so that SiLU sees the unrounded product: rounding it to bf16 first and then quantizing the
SiLU output to e4m3 moves ~6% of the intermediate values by one e4m3 step, a ~1.6% relative error of the layer
against the exact FP8 simulation (moejit.reference.moe_fp8_ref). The extra bytes matter only at large M.
"""

from __future__ import annotations

import torch

from moejit.envflags import env_flag

ENV_FUSED_PERMUTE_QUANT = ("MOEJIT_FP8_FUSED_PERMUTE_QUANT",)

# moejit.ops re-exports this module, so everything under moejit.ops (and moejit.moe.checks, which uses it) is
# imported when the layer is first called, not at import time: that keeps every import order cycle-free.


def cutlass_moe_fp8(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                    topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor,
                    a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
                    per_act_token: bool = False, per_out_ch: bool = False, activation: str = "silu",
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """FP8 MoE layer (CUTLASS SM90 grouped GEMMs): ``Σ_j w[m,j] · W2[e]·SiLU·mul(W1[e]·a[m])``, ``e = topk_ids[m,j]``.

    Args:
        a: ``[M, K]`` bf16/fp16 hidden states.
        w1_q: ``[E, 2N, K]`` e4m3 (gate ‖ up); w2_q: ``[E, K, N]`` e4m3. K and N multiples of 16.
        topk_weights, topk_ids: ``[M, topk]`` routing (ids int32/int64; -1 marks a slot routed to no local expert).
        w1_scale, w2_scale: float32 per expert ``[E]`` (``[E, 1, 1]`` accepted) or, with ``per_out_ch``, per output
            channel ``[E, 2N]`` / ``[E, K]``.
        a1_scale, a2_scale: optional static per-tensor activation scales (one float32 element). When absent the
            activations are quantized dynamically: per token with ``per_act_token``, else per tensor.
        activation: only ``"silu"`` (SwiGLU).
        out_dtype: output dtype (default ``a.dtype``); the SiLU output is rounded to ``a.dtype`` before its
            quantization.

    Returns ``[M, K]`` in ``out_dtype``. Raises :class:`moejit.errors.MoejitInputError` on bad input.
    """
    from moejit.moe.checks import FP8, check_quantized_moe
    from moejit.ops.common import moe_permute, moe_unpermute
    from moejit.ops.fp8 import (PERMUTE_QUANT_MAX_SLOTS, cutlass_fp8_grouped_mm, fp8_permute_quant, fp8_quant,
                                grouped_mm_config, grouped_mm_k_splits, silu_mul_fp8_quant)

    shape, out_dtype = check_quantized_moe(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale,
                                           a2_scale, per_act_token=per_act_token, per_out_ch=per_out_ch,
                                           activation=activation, out_dtype=out_dtype, weight_dtype=FP8)
    e, k, n, topk = shape.num_experts, shape.k, shape.n, shape.topk

    m = a.shape[0]
    if m == 0:
        return a.new_empty((0, k), dtype=out_dtype)
    w1_s = w1_scale.reshape(e, -1)
    w2_s = w2_scale.reshape(e, -1)
    if w1_s.shape[1] == 1:
        w1_s, w2_s = w1_s.reshape(e), w2_s.reshape(e)

    if ((per_act_token or a1_scale is not None) and m * topk <= PERMUTE_QUANT_MAX_SLOTS
            and env_flag(ENV_FUSED_PERMUTE_QUANT, True)):
        rows, a_s, offsets, sort_idx, inv_idx = fp8_permute_quant(a, topk_ids, e, a1_scale, per_token=per_act_token)
    else:
        a_q, a_s = fp8_quant(a, a1_scale, per_token=per_act_token)
        rows, offsets, sort_idx, inv_idx = moe_permute(a_q, topk_ids, e)
        if per_act_token:
            # the scale of each permuted row's token (index_select takes the int32 index as is: two kernels)
            a_s = a_s.reshape(-1).index_select(0, torch.div(sort_idx, topk, rounding_mode="floor"))
    total = rows.shape[0]
    inter = cutlass_fp8_grouped_mm(rows, w1_q, offsets, a_s, w1_s, out_dtype=torch.float32,
                                   config=grouped_mm_config(total, e, 2 * n, k))
    inter_q, inter_s = silu_mul_fp8_quant(inter, a2_scale, per_token=per_act_token, num_rows=offsets[e:],
                                          round_dtype=a.dtype)
    config2 = grouped_mm_config(total, e, k, n)
    splits = grouped_mm_k_splits(total, e, k, n, config2, _sm_count(a.device))
    y = cutlass_fp8_grouped_mm(inter_q, w2_q, offsets, inter_s, w2_s,
                               out_dtype=out_dtype if splits == 1 else torch.float32, config=config2,
                               k_splits=splits)
    return moe_unpermute(y, topk_weights, inv_idx, out_dtype=out_dtype)


_SM_COUNTS: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device`` (cached); 0 where CUDA is unavailable (a fake-tensor trace on a CPU host),
    which turns split-K off."""
    if not torch.cuda.is_available():
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]
