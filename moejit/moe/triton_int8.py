"""The INT8 W8A8 MoE layer on Triton: the FP8 Triton layer's pipeline and kernels with int8 operands.

:func:`triton_moe_int8` is :func:`moejit.ops.triton_moe_fp8` with ``int8`` weights and activations ("extend, don't
fork"): the same validation (:func:`moejit.moe.triton_fp8._check_args`), the same dtype-generic pipeline
(:func:`moejit.moe.triton_fp8._fused_moe_quantized`: block alignment, Triton quantizer, fused GEMM1 with SwiGLU,
quantized intermediate, GEMM2 with the router weight, masked top-k sum), the same fused GEMM kernel
(:mod:`moejit.triton.fused_moe`, which accumulates int8 products in int32 and converts once in the epilogue, or
per K step for block scales) and the same config tables (:mod:`moejit.triton.configs`, dtype key ``int8_w8a8``;
``moejit tune --dtype int8`` writes them). Only what differs lives here: the dtype, the compute-capability floor
(int8 ``tl.dot`` needs sm_80, not FP8's sm_89), a weight-quantization helper for every scale layout, and a float32
reference that simulates the layer's exact quantization.

Quantization (symmetric, range [-127, 127], ``real ≈ q · scale``), as :mod:`moejit.triton.quant` computes it:
dynamic scales ``max(amax · fl(1/127), 1e-12)``; ``q = rint(clamp(x / scale, ±127))`` (IEEE division, round half to
even). Modes: per-token activations × per-channel weights (``per_act_token=True, per_out_ch=True``), DeepSeek-style
1×128 activation groups × 128×128 weight blocks (``block_shape=(128, 128)``), and the per-tensor variants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moejit.errors import MoejitInputError

INT8 = torch.int8
INT8_MAX = 127.0
MIN_SCALE = 1e-12
MIN_CAPABILITY = (8, 0)  # int8 tensor-core tl.dot (mma.sync m16n8k32) needs Ampere or newer


def _check_capability(a: torch.Tensor) -> None:
    if a.is_cuda:
        cc = torch.cuda.get_device_capability(a.device)
        if cc < MIN_CAPABILITY:
            raise MoejitInputError(f"the INT8 Triton MoE layer needs compute capability >= 8.0 (int8 tensor-core "
                                   f"dot); this GPU is sm_{cc[0]}{cc[1]}")


def _triton_moe_int8_impl(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale, a2_scale,
                          per_act_token, per_out_ch, block_shape, out_dtype, config=None):
    """Unvalidated entry (CPU interpreter tests, the tuner): the shared pipeline with int8 operands."""
    from moejit.moe.triton_fp8 import _fused_moe_quantized

    return _fused_moe_quantized(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale, a2_scale,
                                per_act_token, per_out_ch, block_shape, out_dtype, config)


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
            ``[E, ceil(2N/bn), K/bk]`` / ``[E, ceil(K/bn), N/bk]`` (:func:`quantize_weights_int8_w8a8` makes them).
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
    from moejit.moe.triton_fp8 import _check_args

    _, block_shape, out_dtype = _check_args(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale,
                                            a2_scale, per_act_token, per_out_ch, block_shape, activation, out_dtype,
                                            INT8)
    _check_capability(a)
    return _triton_moe_int8_impl(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale, a1_scale, a2_scale,
                                 per_act_token, per_out_ch, block_shape, out_dtype)


# ---------------------------------------------------------------------------------------------------------------
# Weights and the exact-quantization reference
# ---------------------------------------------------------------------------------------------------------------

def _round_half_even_q(v: torch.Tensor) -> torch.Tensor:
    return torch.round(v.clamp(-INT8_MAX, INT8_MAX)).to(INT8)


def _scale_of(amax: torch.Tensor) -> torch.Tensor:
    """``max(amax · fl(1/127), 1e-12)``: the kernels' dynamic scale, bit for bit on any device."""
    return (amax.float() * (1.0 / INT8_MAX)).clamp(min=MIN_SCALE)


def quantize_weights_int8_w8a8(w: torch.Tensor, per_out_ch: bool = True,
                               block_shape: tuple[int, int] | None = None):
    """Quantize expert weights ``w [E, N_out, K]`` (bf16/fp16/fp32, CPU or CUDA) to int8 for
    :func:`triton_moe_int8`.

    Scales: per output channel ``[E, N_out]`` (``per_out_ch``), per ``bn × bk`` block ``[E, ceil(N_out/bn),
    ceil(K/bk)]`` (``block_shape``, which wins), else per expert ``[E]``; each ``max(amax · fl(1/127), 1e-12)``,
    ``w_q = rint(clamp(w / scale, ±127))``. Works one expert at a time (the float32 copy stays small). Returns
    ``(w_q int8, scale float32)``. Raises :class:`MoejitInputError` on a bad shape or block.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or not w.is_floating_point():
        raise MoejitInputError(f"w must be a floating-point [E, N_out, K] tensor, got "
                               f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    e, n, k = w.shape
    if block_shape is not None:
        try:
            bn, bk = (int(v) for v in block_shape)
        except (TypeError, ValueError):
            raise MoejitInputError(f"block_shape must be a pair (block_n, block_k), got {block_shape!r}") from None
        if bn < 1 or bk < 1:
            raise MoejitInputError(f"block_shape {block_shape} must be positive")
        nb, kb = -(-n // bn), -(-k // bk)
        scale = torch.empty((e, nb, kb), dtype=torch.float32, device=w.device)
    else:
        scale = torch.empty((e, n) if per_out_ch else (e,), dtype=torch.float32, device=w.device)
    w_q = torch.empty((e, n, k), dtype=INT8, device=w.device)
    for i in range(e):
        wf = w[i].float()
        if block_shape is not None:
            padded = torch.zeros((nb * bn, kb * bk), dtype=torch.float32, device=w.device)
            padded[:n, :k] = wf
            blocks = padded.reshape(nb, bn, kb, bk)
            s = _scale_of(blocks.abs().amax(dim=(1, 3)))
            full = s.repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)[:n, :k]
        elif per_out_ch:
            s = _scale_of(wf.abs().amax(dim=-1))
            full = s[:, None]
        else:
            s = _scale_of(wf.abs().amax())
            full = s
        w_q[i] = _round_half_even_q(wf / full)
        scale[i] = s
    return w_q, scale


def int8_quant_w8a8_ref(x: torch.Tensor, scale: torch.Tensor | None = None, per_token: bool = False,
                        group_size: int | None = None):
    """Quantize ``x [T, C]`` to int8 exactly as :func:`moejit.triton.quant.quantize_activations` does: static
    ``scale``, dynamic per token ``[T, 1]``, per 1×``group_size`` group ``[T, C/group_size]``, or per tensor
    ``[1]``. Returns ``(q int8, scale float32)``."""
    xf = x.float()
    if scale is not None:
        s = scale.float().reshape(1)
        return _round_half_even_q(xf / s), s
    if group_size is not None:
        t, c = xf.shape
        g = xf.reshape(t, c // group_size, group_size)
        s = _scale_of(g.abs().amax(dim=-1))
        return _round_half_even_q(g / s[..., None]).reshape(t, c), s
    if per_token:
        s = _scale_of(xf.abs().amax(dim=-1, keepdim=True))
    else:
        s = _scale_of(xf.abs().amax()).reshape(1)
    return _round_half_even_q(xf / s), s


def _dequant_act(q: torch.Tensor, s: torch.Tensor, group_size: int | None) -> torch.Tensor:
    if group_size is not None:
        t, c = q.shape
        return (q.float().reshape(t, c // group_size, group_size) * s[..., None]).reshape(t, c)
    return q.float() * (s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()))


def moe_int8_w8a8_ref(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                      topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor,
                      a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
                      per_act_token: bool = False, block_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """:func:`triton_moe_int8` in float32, simulating its exact quantization (the INT8 twin of
    :func:`moejit.reference.moe_fp8_ref`): quantize the input (static, per token, 1×bk groups or per tensor),
    GEMM1 with dequantized weights, SiLU·mul in float32 rounded to ``a.dtype`` (the fused GEMM1 stores it so),
    quantize the live rows of the intermediate the same way (a per-tensor amax sees only live rows), GEMM2,
    weighted sum over the live slots. Works on CPU or GPU. Returns float32 ``[M, K]``."""
    from moejit.reference import dequant_weight_ref

    group = block_shape[1] if block_shape is not None else None

    def qdq(x, static_scale):
        if static_scale is not None and group is None:
            return _dequant_act(*int8_quant_w8a8_ref(x, scale=static_scale), None)
        q, s = int8_quant_w8a8_ref(x, per_token=per_act_token, group_size=group)
        return _dequant_act(q, s, group)

    m, topk = topk_ids.shape
    num_experts = w1_q.shape[0]
    a_dq = qdq(a.float(), a1_scale)
    flat = topk_ids.reshape(-1).long()
    valid = (flat >= 0) & (flat < num_experts)
    tokens = torch.arange(m * topk, device=a.device) // topk
    inter = torch.zeros((m * topk, w1_q.shape[1] // 2), dtype=torch.float32, device=a.device)
    for e in range(num_experts):
        sel = torch.nonzero(flat == e).flatten()
        if sel.numel() == 0:
            continue
        h = a_dq[tokens[sel]] @ dequant_weight_ref(w1_q[e], w1_scale[e], block_shape).t()
        n = h.shape[1] // 2
        inter[sel] = F.silu(h[:, :n]) * h[:, n:]
    inter = inter.to(a.dtype).float()
    valid_idx = torch.nonzero(valid).flatten()
    inter_dq = qdq(inter[valid_idx], a2_scale)
    out_rows = torch.zeros((m * topk, w2_q.shape[1]), dtype=torch.float32, device=a.device)
    for e in range(num_experts):
        sel_local = torch.nonzero(flat[valid_idx] == e).flatten()
        if sel_local.numel() == 0:
            continue
        y = inter_dq[sel_local] @ dequant_weight_ref(w2_q[e], w2_scale[e], block_shape).t()
        out_rows[valid_idx[sel_local]] = y
    weights = topk_weights.float().reshape(-1) * valid
    return (out_rows * weights[:, None]).reshape(m, topk, -1).sum(dim=1)


__all__ = ["int8_quant_w8a8_ref", "moe_int8_w8a8_ref", "quantize_weights_int8_w8a8", "triton_moe_int8"]
