"""FP8 (e4m3) quantization exactly as design.md defines it, and the whole FP8 MoE layer simulating it."""

from __future__ import annotations

import torch

from moejit.reference.core import div_ieee, moe_qdq_ref, stepped_amax_scale

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
MIN_SCALE = 1e-12  # an all-zero row/tensor gets this scale: finite, and it quantizes to zeros


def fp8_quant_ref(x: torch.Tensor, scale: torch.Tensor | None = None, per_token: bool = False,
                  group_size: int | None = None):
    """Quantize ``x [M, K]`` to e4m3 with ``real ≈ q · scale``.

    - ``scale`` given: static per-tensor (a scalar or 1-element tensor).
    - ``per_token``: dynamic, one scale per row, ``[M, 1]``.
    - ``group_size``: dynamic 1×group_size groups along K, ``[M, K/group_size]`` (DeepSeek-style activations).
    - otherwise: dynamic per-tensor, ``amax / 448``.
    Dynamic scales are ``max(amax / 448, 1e-12)`` with an IEEE division on every device (as the kernels).
    Returns ``(q fp8, scale float32)``.
    """
    xf = x.float()
    if scale is not None:
        s = scale.float().reshape(())
        q = (xf / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        return q, scale.float().reshape(1)
    if group_size is not None:
        m, k = xf.shape
        g = xf.reshape(m, k // group_size, group_size)
        s = div_ieee(g.abs().amax(dim=-1), FP8_MAX).clamp(min=MIN_SCALE)
        q = (g / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(m, k)
        return q, s
    if per_token:
        s = div_ieee(xf.abs().amax(dim=-1, keepdim=True), FP8_MAX).clamp(min=MIN_SCALE)
    else:
        amax = xf.abs().amax() if xf.numel() else xf.new_zeros(())  # no rows: the smallest scale, as on device
        s = div_ieee(amax, FP8_MAX).clamp(min=MIN_SCALE).reshape(1)
    q = (xf / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, s


def fp8_dequant_ref(q: torch.Tensor, scale: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Inverse of :func:`fp8_quant_ref` in float32."""
    qf = q.float()
    if group_size is not None:
        m, k = qf.shape
        return (qf.reshape(m, k // group_size, group_size) * scale.float()[..., None]).reshape(m, k)
    # one scale: per tensor (or a single row); otherwise one per row, also for zero rows (every slot dropped)
    return qf * scale.float().reshape(()) if scale.numel() == 1 else qf * scale.float().reshape(-1, 1)


def quantize_weights_fp8_ref(w: torch.Tensor, per_out_ch: bool = False, block_shape: tuple[int, int] | None = None):
    """Quantize expert weights ``[E, N_out, K]`` to e4m3: per expert ``[E]``, per output channel ``[E, N_out]``,
    or ``block_shape=(bn, bk)`` blocks ``[E, N_out/bn, K/bk]``. Returns ``(w_q, scale float32)``."""
    e, n, k = w.shape
    wf = w.float()
    if block_shape is not None:
        bn, bk = block_shape
        blocks = wf.reshape(e, n // bn, bn, k // bk, bk)
        s = div_ieee(blocks.abs().amax(dim=(2, 4)), FP8_MAX).clamp(min=MIN_SCALE)
        q = (blocks / s[:, :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(e, n, k)
        return q, s
    if per_out_ch:
        s = div_ieee(wf.abs().amax(dim=-1), FP8_MAX).clamp(min=MIN_SCALE)
        return (wf / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s
    s = div_ieee(wf.abs().amax(dim=(1, 2)), FP8_MAX).clamp(min=MIN_SCALE)
    return (wf / s[:, None, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s


def moe_fp8_ref(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor,
                a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
                per_act_token: bool = False, block_shape: tuple[int, int] | None = None, *,
                inter_amax_steps: int = 0) -> torch.Tensor:
    """The FP8 MoE layer in float32, simulating its exact quantization: quantize the input (static per-tensor if
    ``a1_scale`` is given, else dynamic per-token or per-tensor, or 1×block_k groups with ``block_shape``), GEMM1
    with dequantized weights, SiLU·mul, quantize the intermediate the same way (with ``a2_scale``), GEMM2,
    weighted sum. Dynamic per-tensor scales of the intermediate are taken over all of its rows, as a fused
    kernel sees them; ``inter_amax_steps`` moves that amax by so many bf16/fp16 values
    (:func:`moejit.reference.core.stepped_amax_scale`). Returns float32 ``[M, K]``."""
    group = block_shape[1] if block_shape is not None else None

    def qdq(x, static_scale):
        if static_scale is not None and group is None:
            q, s = fp8_quant_ref(x, scale=static_scale)
            return fp8_dequant_ref(q, s)
        q, s = fp8_quant_ref(x, per_token=per_act_token, group_size=group)
        return fp8_dequant_ref(q, s, group)

    def qdq_inter(x):
        if inter_amax_steps and a2_scale is None and group is None and not per_act_token:  # dynamic per tensor
            return qdq(x, stepped_amax_scale(x, inter_amax_steps, a.dtype, FP8_MAX, MIN_SCALE))
        return qdq(x, a2_scale)

    return moe_qdq_ref(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale,
                       lambda x: qdq(x, a1_scale), qdq_inter, block_shape)
