"""The FP8 MoE layer on Triton: one fused GEMM kernel per projection that gathers token rows through the
expert-sorted slot list (no permuted copy), as a drop-in alternative to :func:`moejit.ops.cutlass_moe_fp8`.

Pipeline (all on the device; no host synchronization, so the layer captures into CUDA graphs)::

    align topk_ids → slots sorted by expert, padded per expert to BLOCK_SIZE_M     (moejit.triton.align)
    quantize a [M, K] (static / dynamic per tensor, per token, or 1×bk groups)     (moejit.triton.quant)
    GEMM1  [M·topk, N] = SiLU(gate)·up of a[slot // topk] · w1[e]ᵀ · scales, fused (moejit.triton.fused_moe)
    quantize the intermediate (rows of dropped slots skipped; per-tensor amax over the live rows)
    GEMM2  [M·topk, K]  = inter[slot] · w2[e]ᵀ · scales · router weight
    sum over the top-k slots of each token (dropped slots skipped) → out [M, K]
"""

from __future__ import annotations

import torch

from moejit.errors import MoejitInputError

FP8 = torch.float8_e4m3fn
_QUANT_NAMES = {torch.float8_e4m3fn: "fp8_w8a8", torch.int8: "int8_w8a8"}


def _check_args(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale, a2_scale, per_act_token,
                per_out_ch, block_shape, activation, out_dtype, q_dtype):
    # imported here: moejit.moe.checks pulls in moejit.ops, whose __init__ imports this module
    import moejit.ops  # noqa: F401  (completes the package first, whichever module was imported first)
    from moejit.moe.checks import check_quantized_moe
    from moejit.ops._validate import block_pair

    if block_shape is not None:
        bn, bk = block_shape = block_pair(block_shape)
        if bk < 32 or bk & (bk - 1):
            # 32: the K step of the kernel equals block_k at most, and an 8-bit tl.dot needs K >= 32
            raise MoejitInputError(f"block_shape {block_shape}: block_k must be a power of two >= 32")
    shape, out_dtype = check_quantized_moe(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale,
                                           a2_scale, per_act_token=per_act_token, per_out_ch=per_out_ch,
                                           activation=activation, out_dtype=out_dtype, weight_dtype=q_dtype,
                                           block_shape=block_shape)
    if a.is_cuda:
        major, minor = torch.cuda.get_device_capability(a.device)
        if q_dtype == FP8 and (major, minor) < (8, 9):
            raise MoejitInputError(f"FP8 tl.dot needs compute capability >= 8.9 (Ada/Hopper); this GPU is "
                                   f"sm_{major}{minor}")
    return shape, block_shape, out_dtype


def _gluon():
    """:mod:`moejit.triton.gluon_moe`, or None where this Triton has no Gluon Hopper API (before 3.6)."""
    try:
        from moejit.triton import gluon_moe
    except ImportError:
        return None
    return gluon_moe


def _fused_moe_quantized(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale, a2_scale,
                         per_act_token, per_out_ch, block_shape, out_dtype, config=None):
    """The layer after validation, for either quantized dtype (``w1_q.dtype``: e4m3 or int8); both public layers
    call it, and so do the tuner and the interpreter tests (with a fixed ``config``)."""
    from moejit.triton import configs
    from moejit.triton.align import align_block_size
    from moejit.triton.fused_moe import (A_GROUP, A_ROW, A_TENSOR, W_BLOCK, W_CHANNEL, W_TENSOR,
                                         invoke_fused_moe_gemm, moe_sum)
    from moejit.triton.quant import quantize_activations

    q_dtype = w1_q.dtype
    m, k = a.shape
    e, two_n, _ = w1_q.shape
    n = two_n // 2
    topk = topk_ids.shape[1]
    out = torch.empty((m, k), dtype=out_dtype, device=a.device)
    if m == 0:
        return out
    if config is None:
        mode = configs.quant_mode(per_act_token, per_out_ch, block_shape)
        config = configs.get_config(m, e, n, k, topk, _QUANT_NAMES[q_dtype], mode, block_shape)
    config, config2 = configs.gemm_configs(config)  # GEMM2 may run its own tile (configs.GEMM2)
    group = block_shape[1] if block_shape is not None else None
    a_mode = A_GROUP if block_shape is not None else (A_ROW if per_act_token else A_TENSOR)
    w_mode = W_BLOCK if block_shape is not None else (W_CHANNEL if per_out_ch else W_TENSOR)
    topk_weights = topk_weights.contiguous()
    gluon_moe = _gluon()
    forced = gluon_moe.gluon_mode() if gluon_moe is not None else "0"
    if forced.startswith("force") and gluon_moe.layer_eligible(a.device, q_dtype, k, n, a_mode, w_mode):
        config, config2 = gluon_moe.forced_configs(config, config2, 64 if forced == "force64" else 128)

    def gemm(x, w, c, x_s, w_s, routed, top_k, cfg, silu_mul=False):
        """One grouped GEMM: the warp-specialized Gluon kernel where the config asks for it and it can run, else
        the tl.dot kernel."""
        if gluon_moe is not None and gluon_moe.use_gluon(x, w, a_mode, w_mode, cfg, silu_mul):
            return gluon_moe.invoke_gluon_moe_gemm(x, w, c, x_s, w_s, routed, align, top_k, a_mode, w_mode, cfg,
                                                   silu_mul=silu_mul)
        return invoke_fused_moe_gemm(x, w, c, x_s, w_s, routed, align, top_k, a_mode, w_mode, cfg, block_shape,
                                     silu_mul=silu_mul)

    align = align_block_size(topk_ids, e, config["BLOCK_SIZE_M"])
    a_q, a_s = quantize_activations(a, q_dtype, scale=a1_scale, per_token=per_act_token, group_size=group)
    inter = torch.empty((m * topk, n), dtype=a.dtype, device=a.device)  # silu(gate)·up, fused into GEMM1
    gemm(a_q, w1_q, inter, a_s, w1_scale, None, topk, config, silu_mul=True)
    inter_q, inter_s = quantize_activations(inter, q_dtype, scale=a2_scale, per_token=per_act_token,
                                            group_size=group, topk_ids=topk_ids, num_experts=e)
    y = torch.empty((m * topk, k), dtype=out_dtype, device=a.device)
    gemm(inter_q, w2_q, y, inter_s, w2_scale, topk_weights, 1, config2)
    return moe_sum(y, topk_ids, e, out)


def triton_moe_fp8(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                   topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor,
                   a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
                   per_act_token: bool = False, per_out_ch: bool = False,
                   block_shape: tuple[int, int] | None = None, activation: str = "silu",
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """FP8 MoE layer (Triton fused GEMMs): ``Σ_j w[m,j] · W2[e]·SiLU·mul(W1[e]·a[m])``, ``e = topk_ids[m,j]``.

    Same conventions as :func:`moejit.ops.cutlass_moe_fp8`, plus block-wise scales:

    Args:
        a: ``[M, K]`` bf16/fp16 hidden states.
        w1_q: ``[E, 2N, K]`` e4m3 (gate ‖ up); w2_q: ``[E, K, N]`` e4m3. K and N multiples of 16.
        topk_weights, topk_ids: ``[M, topk]`` routing (ids int32/int64; -1 marks a slot routed to no local expert).
        w1_scale, w2_scale: float32 per expert ``[E]`` (``[E, 1, 1]`` accepted), with ``per_out_ch`` per output
            channel ``[E, 2N]`` / ``[E, K]``, or with ``block_shape=(bn, bk)`` per block
            ``[E, ceil(2N/bn), K/bk]`` / ``[E, ceil(K/bn), N/bk]`` (DeepSeek-V3: ``(128, 128)``).
        a1_scale, a2_scale: optional static per-tensor activation scales (one float32 element). When absent the
            activations are quantized dynamically: per token with ``per_act_token``, in 1×bk groups with
            ``block_shape``, else per tensor (the intermediate's amax over all of its live rows).
        activation: only ``"silu"`` (SwiGLU).
        out_dtype: output dtype (default ``a.dtype``); the intermediate is kept in ``a.dtype``.

    Kernel configs come from the tables of ``moejit tune`` (see :mod:`moejit.triton.configs`). Returns ``[M, K]``
    in ``out_dtype``. Raises :class:`moejit.errors.MoejitInputError` on bad input.
    """
    _, block_shape, out_dtype = _check_args(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale,
                                            a2_scale, per_act_token, per_out_ch, block_shape, activation, out_dtype,
                                            FP8)
    return _fused_moe_quantized(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale, a2_scale,
                                per_act_token, per_out_ch, block_shape, out_dtype)
