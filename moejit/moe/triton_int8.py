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
dynamic scales ``max(amax / 127, 1e-12)``; ``q = rint(clamp(x / scale, ±127))`` (IEEE division, round half to
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


def triton_moe_int8_hybrid(hidden: torch.Tensor, w13_q: torch.Tensor, w2_q: torch.Tensor, w13_scale: torch.Tensor,
                           w2_scale: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, *,
                           block_size: int = 128, super_group_size: int = 256, q_max: int = 16) -> torch.Tensor:
    """The INT8 hybrid blockwise (Q/F) MoE layer on the Triton fused kernels: the arguments, format and result of
    :func:`moejit.ops.cutlass_moe_int8_hybrid`, the pipeline of :func:`triton_moe_int8`.

    Pipeline (nothing synchronizes with the host; CUDA-graph capturable)::

        align topk_ids → slots sorted by expert, padded per expert to BLOCK_SIZE_M   (moejit.triton.align)
        hidden [M, K] → Q/F                                  (moejit.ops.int8_hybrid_quant: M rows, not M·topk)
        GEMM1 [M·topk, N] = silu(gate)·up of the gathered rows, Q per K-block in int32, F per super group
        intermediate → Q/F                                   (moejit.ops.int8_hybrid_quant)
        GEMM2 [M·topk, K] · router weight, then the top-k sum over the live slots

    Where the CUTLASS runner rounds GEMM1's ``[gate ‖ up]`` to ``hidden.dtype`` before SiLU, this layer takes
    SiLU·mul of the float32 accumulators and rounds its output (as the FP8 and W8A8 Triton layers): its exact
    reference is :func:`moejit.reference.moe_int8_hybrid_fused_ref`. The int32 sums cannot overflow: the super
    group is the format's effective one (:mod:`moejit.int8.format`). Kernel configs come from the ``int8_w8a8``
    tables of quantization mode ``hybrid`` when there are any, else the shape heuristic; BLOCK_SIZE_K is at most
    ``block_size``. Works on compute capability 8.0 and newer (wgmma on sm_90).

    Returns ``[M, K]`` in ``hidden.dtype``. Raises :class:`moejit.errors.MoejitInputError` on bad input.
    """
    from moejit.int8.format import HybridFormat
    from moejit.moe.int8_hybrid import check_hybrid_layer

    fmt = HybridFormat(block_size, super_group_size, q_max)
    if block_size < 32:  # one K step lies inside one Q block, and an 8-bit tl.dot needs K >= 32
        raise MoejitInputError(f"triton_moe_int8_hybrid needs block_size >= 32, got {block_size}")
    _, k, w13_s, w2_s = check_hybrid_layer(hidden, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, fmt)
    _check_capability(hidden)
    if hidden.shape[0] == 0:
        return hidden.new_empty((0, k))
    return _fused_moe_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, topk_weights.contiguous(), topk_ids, fmt)


def _fused_moe_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, topk_weights, topk_ids, fmt, config=None):
    """:func:`triton_moe_int8_hybrid` after validation (``w13_s [E, 2N]``, ``w2_s [E, K]``, M > 0); the interpreter
    tests call it with a fixed ``config``."""
    from moejit.int8.quant import int8_hybrid_quant
    from moejit.triton import configs
    from moejit.triton.align import align_block_size
    from moejit.triton.fused_moe import A_HYBRID, W_CHANNEL, invoke_fused_moe_gemm, moe_sum

    m, k = hidden.shape
    e, two_n, _ = w13_q.shape
    n = two_n // 2
    topk = topk_ids.shape[1]
    b, s, qm = fmt.block_size, fmt.super_group_size, fmt.q_max
    if config is None:
        # per-K-block scales: the block-scale shapes of the heuristic (BLOCK_SIZE_K <= B, spill-free tiles)
        config = configs.get_config(m, e, n, k, topk, "int8_w8a8", "hybrid", block_shape=(b, b))
    hybrid = (b, fmt.s_eff)
    config, config2 = configs.gemm_configs(config)
    align = align_block_size(topk_ids, e, config["BLOCK_SIZE_M"])
    a_q, a_qs, a_f = int8_hybrid_quant(hidden, b, s, qm)
    inter = torch.empty((m * topk, n), dtype=hidden.dtype, device=hidden.device)
    invoke_fused_moe_gemm(a_q, w13_q, inter, a_qs, w13_s, None, align, topk, A_HYBRID, W_CHANNEL, config,
                          silu_mul=True, a_f=a_f, hybrid=hybrid)
    # rows of dropped slots are unwritten: quantized to garbage Q/F that GEMM2 never reads
    i_q, i_qs, i_f = int8_hybrid_quant(inter, b, s, qm)
    y = torch.empty((m * topk, k), dtype=hidden.dtype, device=hidden.device)
    invoke_fused_moe_gemm(i_q, w2_q, y, i_qs, w2_s, topk_weights, align, 1, A_HYBRID, W_CHANNEL, config2,
                          a_f=i_f, hybrid=hybrid)
    return moe_sum(y, topk_ids, e, torch.empty((m, k), dtype=hidden.dtype, device=hidden.device))


__all__ = ["triton_moe_int8", "triton_moe_int8_hybrid"]
