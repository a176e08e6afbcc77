"""The INT8 W8A8 MoE layer on Triton: the FP8 Triton layer's pipeline and kernels with int8 operands.

:func:`triton_moe_int8` is :func:`moejit.ops.triton_moe_fp8` with ``int8`` weights and activations ("extend, don't
fork"): the same validation (:func:`moejit.moe.triton_fp8._check_args`), the same dtype-generic pipeline
(:func:`moejit.moe.triton_fp8._fused_moe_quantized`: block alignment, Triton quantizer, fused GEMM1 with SwiGLU,
quantized intermediate, GEMM2 with the router weight, masked top-k sum), the same fused GEMM kernel
(:mod:`moejit.triton.fused_moe`, which accumulates int8 products in int32 and converts once in the epilogue, or
per K step for block scales) and the same config tables (:mod:`moejit.triton.configs`, dtype key ``int8_w8a8``;
``moejit tune --dtype int8`` writes them). Only what differs lives here: the dtype, the compute-capability floor
(int8 ``tl.dot`` needs sm_80, not FP8's sm_89). Weights come from
:func:`moejit.moe.weights.quantize_weights_int8_w8a8`; the float32 reference that simulates the layer's exact
quantization is :func:`moejit.reference.moe_int8_w8a8_ref`.

Quantization (symmetric, range [-127, 127], ``real ≈ q · scale``), as :mod:`moejit.triton.quant` computes it:
dynamic scales ``max(amax · fl(1/127), 1e-12)``; ``q = rint(clamp(x / scale, ±127))`` (IEEE division, round half to
even). Modes: per-token activations × per-channel weights (``per_act_token=True, per_out_ch=True``), DeepSeek-style
1×128 activation groups × 128×128 weight blocks (``block_shape=(128, 128)``), and the per-tensor variants.
"""

from __future__ import annotations

import torch

from moejit.errors import MoejitInputError

INT8 = torch.int8
MIN_CAPABILITY = (8, 0)  # int8 tensor-core tl.dot (mma.sync m16n8k32) needs Ampere or newer


def _check_capability(a: torch.Tensor) -> None:
    if a.is_cuda:
        cc = torch.cuda.get_device_capability(a.device)
        if cc < MIN_CAPABILITY:
            raise MoejitInputError(f"the INT8 Triton MoE layer needs compute capability >= 8.0 (int8 tensor-core "
                                   f"dot); this GPU is sm_{cc[0]}{cc[1]}")


def triton_moe_int8(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                    topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor,
                    a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
                    per_act_token: bool = False, per_out_ch: bool = False,
                    block_shape: tuple[int, int] | None = None, activation: str = "silu",
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """INT8 W8A8 MoE layer (Triton fused GEMMs): ``Σ_j w[m,j] · W2[e]·SiLU·mul(W1[e]·a[m])``, e = topk_ids[m,j].

    The signature and conventions of :func:`moejit.ops.triton_moe_fp8`, with int8 weights:

    Args:
        a: ``[M, K]`` bf16/fp16 hidden states.
        w1_q: ``[E, 2N, K]`` int8 (gate ‖ up); w2_q: ``[E, K, N]`` int8; values in [-127, 127]. K and N multiples
            of 16 (of ``block_k`` with ``block_shape``).
        topk_weights, topk_ids: ``[M, topk]`` routing (ids int32/int64; -1 marks a slot routed to no local expert).
        w1_scale, w2_scale: float32 per expert ``[E]`` (``[E, 1, 1]`` accepted), with ``per_out_ch`` per output
            channel ``[E, 2N]`` / ``[E, K]``, or with ``block_shape=(bn, bk)`` per block
            ``[E, ceil(2N/bn), K/bk]`` / ``[E, ceil(K/bn), N/bk]`` (:func:`moejit.ops.quantize_weights_int8_w8a8` makes them).
        a1_scale, a2_scale: optional static per-tensor activation scales (one float32 element). When absent the
            activations are quantized dynamically: per token with ``per_act_token``, in 1×bk groups with
            ``block_shape``, else per tensor (the intermediate's amax over all of its live rows).
        per_act_token, per_out_ch, block_shape: the scale layout (see above); the two supported pairings the
            benchmarks use are per-token × per-channel and ``block_shape=(128, 128)``.
        activation: only ``"silu"`` (SwiGLU).
        out_dtype: output dtype (default ``a.dtype``); the intermediate is kept in ``a.dtype``.

    Kernel configs come from the ``int8_w8a8`` tables of ``moejit tune --dtype int8`` (see
    :mod:`moejit.triton.configs`), else a shape heuristic. Works on compute capability 8.0 and newer. Nothing
    synchronizes with the host, so the layer captures into CUDA graphs. Returns ``[M, K]`` in ``out_dtype``.
    Raises :class:`moejit.errors.MoejitInputError` on bad input.
    """
    from moejit.moe.triton_fp8 import _check_args, _fused_moe_quantized

    _, block_shape, out_dtype = _check_args(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale,
                                            a2_scale, per_act_token, per_out_ch, block_shape, activation, out_dtype,
                                            INT8)
    _check_capability(a)
    return _fused_moe_quantized(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale, a2_scale,
                                per_act_token, per_out_ch, block_shape, out_dtype)


__all__ = ["triton_moe_int8"]
