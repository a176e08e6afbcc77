"""INT8 quantization references: the hybrid blockwise Q/F format exactly as design.md defines it (see
:mod:`moejit.int8.format`), its exact-integer GEMM, the per-tensor / per-token / per-channel / float per-block INT8
schemes it is compared with, and whole MoE layers simulating each of them in float32.

Rounding: every INT8 quantizer here rounds half away from zero (``round(2.5) = 3``, ``round(-0.5) = -1``), computed
exactly as ``t = trunc(v); t + sign(v) · (|v - t| ≥ 0.5)`` (``v - trunc(v)`` is exact in float32), never as
``floor(|v| + 0.5)``, which is wrong just below .5. The Triton kernels compute the same expression, so their
output is bit-identical to these references. Divisions are IEEE float32 (round to nearest).
"""

from __future__ import annotations

import torch

from moejit.int8.format import INT8_MAX, INT32_MAX, HybridFormat
from moejit.reference.core import div_ieee, moe_qdq_ref, stepped_amax_scale

MIN_SCALE = 1e-12  # per-tensor / per-token / per-channel / per-block: an all-zero scope gets this scale


def round_half_away_ref(v: torch.Tensor) -> torch.Tensor:
    """Round float32 ``v`` to the nearest integer, ties away from zero (exact for |v| < 2²³)."""
    t = torch.trunc(v)
    return t + torch.sign(v) * ((v - t).abs() >= 0.5).to(v.dtype)


def _to_int8(v: torch.Tensor) -> torch.Tensor:
    return round_half_away_ref(v.clamp(-INT8_MAX, INT8_MAX)).to(torch.int8)


# ---------------------------------------------------------------------------------------------------------------
# Hybrid blockwise Q/F
# ---------------------------------------------------------------------------------------------------------------

def int8_hybrid_quant_ref(x: torch.Tensor, block_size: int = 128, super_group_size: int = 256, q_max: int = 16):
    """Quantize ``x [T, K]`` to the hybrid Q/F format. Returns ``(xq int8 [T, K], Q int32 [T, K/B],
    F float32 [T, G])`` with ``G = ceil((K/B) / S_eff)`` and ``S_eff = effective_super_group(B, S, q_max)``.

    Exactly: ``F = max amax / (127·q_max)``; ``Q = clamp(ceil(amax / (127·F)), 1, q_max)``;
    ``xq = clamp(round(x / (Q·F)), -127, 127)``; where ``F == 0``: ``Q = 1, xq = 0``.
    """
    fmt = HybridFormat(block_size, super_group_size, q_max)
    t, k = x.shape
    nb, s = fmt.num_blocks(k), fmt.s_eff
    g = -(-nb // s)
    xf = x.float().reshape(t, nb, block_size)
    amax = xf.abs().amax(dim=-1)                                                  # [T, nb]
    padded = torch.zeros((t, g * s), dtype=torch.float32, device=x.device)
    padded[:, :nb] = amax
    gmax = padded.reshape(t, g, s).amax(dim=-1)                                   # [T, G]
    f = div_ieee(gmax, float(INT8_MAX * q_max))
    f_blk = f.repeat_interleave(s, dim=1)[:, :nb]                                  # [T, nb]
    live = f_blk > 0
    denom = torch.where(live, f_blk * float(INT8_MAX), torch.ones_like(f_blk))
    q = torch.where(live, torch.ceil(amax / denom).clamp(1, q_max), torch.ones_like(amax)).to(torch.int32)
    step = torch.where(live, q.float() * f_blk, torch.ones_like(f_blk))
    xq = torch.where(live[..., None], xf / step[..., None], torch.zeros_like(xf))
    return _to_int8(xq).reshape(t, k), q, f


def int8_hybrid_dequant_ref(xq: torch.Tensor, q: torch.Tensor, f: torch.Tensor, block_size: int = 128,
                            super_group_size: int = 256, q_max: int = 16) -> torch.Tensor:
    """``xq · Q · F`` in float32, ``[T, K]``."""
    fmt = HybridFormat(block_size, super_group_size, q_max)
    t, k = xq.shape
    nb = fmt.num_blocks(k)
    f_blk = f.float().repeat_interleave(fmt.s_eff, dim=1)[:, :nb]
    step = q.float() * f_blk
    return (xq.float().reshape(t, nb, block_size) * step[..., None]).reshape(t, k)


def int8_hybrid_mm_ref(a: torch.Tensor, a_q: torch.Tensor, a_f: torch.Tensor, b: torch.Tensor,
                       b_scale: torch.Tensor, block_size: int, super_group_size_eff: int) -> torch.Tensor:
    """The hybrid GEMM of one expert with its exact integer arithmetic: ``a int8 [M, K]`` (Q ``[M, K/B]``, F
    ``[M, G]``) × ``b int8 [N, K]`` (per-channel ``b_scale [N]``) → float32 ``[M, N]``::

        P[m,n,b] = Σ_{k in b} a·b          (exact: computed in float64, which holds it exactly, then int64)
        I[m,n,g] = Σ_{b in g} Q[m,b]·P      int64, checked to fit in int32 (the format's guarantee)
        y[m,n]   = b_scale[n] · Σ_g F[m,g] · float32(I[m,n,g])     float32, groups in order

    ``super_group_size_eff`` is the effective (overflow-safe) super group, as the GEMM kernel receives it.
    """
    m, k = a.shape
    n = b.shape[0]
    nb = k // block_size
    s = super_group_size_eff
    ab = a.double().reshape(m, nb, block_size).permute(1, 0, 2)                  # [nb, M, B]
    bb = b.double().reshape(n, nb, block_size).permute(1, 2, 0)                  # [nb, B, N]
    p = torch.bmm(ab, bb).round().long()                                          # [nb, M, N] exact
    acc = torch.zeros((m, n), dtype=torch.float32, device=a.device)
    for g0 in range(0, nb, s):
        i = (a_q[:, g0:g0 + s].long().t()[:, :, None] * p[g0:g0 + s]).sum(dim=0)  # [M, N] int64
        if i.numel() and int(i.abs().max()) > INT32_MAX:
            raise OverflowError(f"super group at block {g0} overflows int32 (S_eff = {s} is not overflow-safe)")
        acc = acc + a_f[:, g0 // s, None].float() * i.float()
    return acc * b_scale.float().reshape(1, n)


def int8_hybrid_grouped_mm_ref(a, a_q, a_f, b, b_scale, expert_offsets, block_size, super_group_size_eff,
                               q_max, out_dtype, a_rows=None, a_rows_div=1) -> torch.Tensor:
    """Reference of ``moejit.ops.int8.int8_hybrid_grouped_mm`` (the pinned contract): expert e multiplies rows
    ``expert_offsets[e]:expert_offsets[e+1]`` of ``a`` by ``b[e]``; rows ``>= expert_offsets[E]`` are zero here
    (the kernel leaves them unwritten). With ``a_rows``, row r is ``a[a_rows[r] // a_rows_div]`` (clamped to
    ``a``'s rows, as the kernels clamp). Reads the offsets on the host: a reference, not for graphs."""
    if a_rows is not None:
        a = a[(a_rows.long() // a_rows_div).clamp(0, a.shape[0] - 1)]
    out = torch.zeros((a.shape[0], b.shape[1]), dtype=out_dtype, device=a.device)
    offs = expert_offsets.tolist()
    for e in range(b.shape[0]):
        lo, hi = offs[e], offs[e + 1]
        if hi > lo:
            out[lo:hi] = int8_hybrid_mm_ref(a[lo:hi], a_q[lo:hi], a_f[lo:hi], b[e], b_scale[e], block_size,
                                            super_group_size_eff).to(out_dtype)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The schemes it is compared with
# ---------------------------------------------------------------------------------------------------------------

def int8_quant_ref(x: torch.Tensor, per_token: bool = False, scale: torch.Tensor | None = None):
    """Symmetric INT8 with ``real ≈ q · scale``: static per-tensor (``scale`` given), dynamic per-token
    (``[T, 1]``) or dynamic per-tensor (``[1]``); dynamic scales are ``max(amax / 127, 1e-12)``."""
    xf = x.float()
    if scale is not None:
        s = scale.float().reshape(1)
    elif per_token:
        s = div_ieee(xf.abs().amax(dim=-1, keepdim=True), INT8_MAX).clamp(min=MIN_SCALE)
    else:
        s = div_ieee(xf.abs().amax(), INT8_MAX).clamp(min=MIN_SCALE).reshape(1)
    return _to_int8(xf / s), s


def int8_dequant_ref(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()


def int8_block_quant_ref(x: torch.Tensor, block_size: int = 128):
    """Plain float per-block scales (no integer Q): ``scale [T, K/B] = max(amax / 127, 1e-12)``."""
    t, k = x.shape
    xf = x.float().reshape(t, k // block_size, block_size)
    s = div_ieee(xf.abs().amax(dim=-1), INT8_MAX).clamp(min=MIN_SCALE)
    return _to_int8(xf / s[..., None]).reshape(t, k), s


def int8_block_dequant_ref(q: torch.Tensor, scale: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    t, k = q.shape
    return (q.float().reshape(t, k // block_size, block_size) * scale.float()[..., None]).reshape(t, k)


def quantize_weights_int8_ref(w: torch.Tensor):
    """Expert weights ``[E, N, K]`` → ``(w_q int8 [E, N, K], scale float32 [E, N])`` per output channel:
    ``scale = max(amax over K / 127, 1e-12)``, ``w_q = clamp(round(w / scale), -127, 127)``."""
    wf = w.float()
    s = div_ieee(wf.abs().amax(dim=-1), INT8_MAX).clamp(min=MIN_SCALE)
    return _to_int8(wf / s[..., None]), s


ACT_SCHEMES = ("hybrid", "per_tensor", "per_token", "per_block", "none")


def int8_act_qdq_ref(x: torch.Tensor, scheme: str, block_size: int = 128, super_group_size: int = 256,
                     q_max: int = 16) -> torch.Tensor:
    """Quantize-dequantize activations ``x [T, K]`` with one of :data:`ACT_SCHEMES` (float32 result)."""
    if scheme == "hybrid":
        return int8_hybrid_dequant_ref(*int8_hybrid_quant_ref(x, block_size, super_group_size, q_max),
                                       block_size, super_group_size, q_max)
    if scheme in ("per_tensor", "per_token"):
        return int8_dequant_ref(*int8_quant_ref(x, per_token=scheme == "per_token"))
    if scheme == "per_block":
        return int8_block_dequant_ref(*int8_block_quant_ref(x, block_size), block_size)
    if scheme == "none":
        return x.float()
    raise ValueError(f"unknown activation scheme {scheme!r}; expected one of {ACT_SCHEMES}")


def moe_int8_ref(a: torch.Tensor, w13_q: torch.Tensor, w2_q: torch.Tensor, w13_scale: torch.Tensor,
                 w2_scale: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, scheme: str = "hybrid",
                 block_size: int = 128, super_group_size: int = 256, q_max: int = 16,
                 fused_silu_quant: bool = True) -> torch.Tensor:
    """An INT8 MoE layer in float32 simulating its quantization: activations by ``scheme`` (both GEMM inputs),
    weights INT8 per output channel (``w13_q [E, 2N, K]``/``w13_scale [E, 2N]``, ``w2_q [E, K, N]``/
    ``w2_scale [E, K]``). As the GPU pipeline: GEMM outputs are stored in ``a.dtype``; SiLU·mul is float32 and,
    unless ``fused_silu_quant``, rounded to ``a.dtype`` before quantization; a per-tensor scale of the
    intermediate is taken over all of its (routed) rows. Slots with ids outside ``[0, E)`` are dropped.
    Returns float32 ``[M, K]``."""
    def qdq(x):
        return int8_act_qdq_ref(x, scheme, block_size, super_group_size, q_max)

    return moe_qdq_ref(a, w13_q, w2_q, topk_weights, topk_ids, w13_scale, w2_scale, qdq, qdq, round_gemm1=True,
                       round_inter=not fused_silu_quant, round_gemm2=True)


def moe_int8_hybrid_ref(a, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, block_size: int = 128,
                        super_group_size: int = 256, q_max: int = 16, fused_silu_quant: bool = True):
    """The hybrid INT8 MoE layer (``moejit.ops.cutlass_moe_int8_hybrid``) in float32, simulating its exact Q/F
    quantization of the input and of the intermediate. See :func:`moe_int8_ref`."""
    return moe_int8_ref(a, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, "hybrid", block_size,
                        super_group_size, q_max, fused_silu_quant)


def moe_int8_hybrid_fused_ref(a, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, block_size: int = 128,
                              super_group_size: int = 256, q_max: int = 16):
    """The hybrid INT8 MoE layer on the Triton fused kernels (``moejit.ops.triton_moe_int8_hybrid``) in float32,
    simulating its exact Q/F quantization: as :func:`moe_int8_hybrid_ref`, but SiLU·mul takes GEMM1's float32
    result and its output is rounded to ``a.dtype`` (GEMM1 fuses SiLU and stores the intermediate)."""
    def qdq(x):
        return int8_act_qdq_ref(x, "hybrid", block_size, super_group_size, q_max)

    return moe_qdq_ref(a, w13_q, w2_q, topk_weights, topk_ids, w13_scale, w2_scale, qdq, qdq, round_gemm1=False,
                       round_inter=True, round_gemm2=True)


# ---------------------------------------------------------------------------------------------------------------
# INT8 W8A8 (the Triton INT8 layer, moejit.ops.triton_moe_int8): round half to even, scales amax / 127 (IEEE)
# ---------------------------------------------------------------------------------------------------------------

def w8a8_round_ref(v: torch.Tensor) -> torch.Tensor:
    """``rint(clamp(v, ±127))`` to int8 (round half to even, as the Triton quantizer's ``rint``)."""
    return torch.round(v.clamp(-INT8_MAX, INT8_MAX)).to(torch.int8)


def w8a8_scale_ref(amax: torch.Tensor) -> torch.Tensor:
    """``max(amax / 127, 1e-12)`` (IEEE division, as the Triton kernels and the FP8 scales divide): the dynamic
    W8A8 scale, bit for bit on any device."""
    return div_ieee(amax.float(), float(INT8_MAX)).clamp(min=MIN_SCALE)


def int8_quant_w8a8_ref(x: torch.Tensor, scale: torch.Tensor | None = None, per_token: bool = False,
                        group_size: int | None = None):
    """Quantize ``x [T, C]`` to int8 exactly as :func:`moejit.triton.quant.quantize_activations` does: static
    ``scale``, dynamic per token ``[T, 1]``, per 1×``group_size`` group ``[T, C/group_size]``, or per tensor
    ``[1]``. Returns ``(q int8, scale float32)``."""
    xf = x.float()
    if scale is not None:
        s = scale.float().reshape(1)
        return w8a8_round_ref(xf / s), s
    if group_size is not None:
        t, c = xf.shape
        g = xf.reshape(t, c // group_size, group_size)
        s = w8a8_scale_ref(g.abs().amax(dim=-1))
        return w8a8_round_ref(g / s[..., None]).reshape(t, c), s
    if per_token:
        s = w8a8_scale_ref(xf.abs().amax(dim=-1, keepdim=True))
    else:
        s = w8a8_scale_ref(xf.abs().amax()).reshape(1)
    return w8a8_round_ref(xf / s), s


def _dequant_act(q: torch.Tensor, s: torch.Tensor, group_size: int | None) -> torch.Tensor:
    if group_size is not None:
        t, c = q.shape
        return (q.float().reshape(t, c // group_size, group_size) * s[..., None]).reshape(t, c)
    return q.float() * (s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()))


def moe_int8_w8a8_ref(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                      topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor,
                      a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
                      per_act_token: bool = False, block_shape: tuple[int, int] | None = None, *,
                      inter_amax_steps: int = 0) -> torch.Tensor:
    """:func:`triton_moe_int8` in float32, simulating its exact quantization (the INT8 twin of
    :func:`moejit.reference.moe_fp8_ref`): quantize the input (static, per token, 1×bk groups or per tensor),
    GEMM1 with dequantized weights, SiLU·mul in float32 rounded to ``a.dtype`` (the fused GEMM1 stores it so),
    quantize the live rows of the intermediate the same way (a per-tensor amax sees only live rows;
    ``inter_amax_steps`` as in :func:`moejit.reference.moe_fp8_ref`), GEMM2, weighted sum over the live slots.
    Works on CPU or GPU. Returns float32 ``[M, K]``."""
    group = block_shape[1] if block_shape is not None else None

    def qdq(x, static_scale):
        if static_scale is not None and group is None:
            return _dequant_act(*int8_quant_w8a8_ref(x, scale=static_scale), None)
        q, s = int8_quant_w8a8_ref(x, per_token=per_act_token, group_size=group)
        return _dequant_act(q, s, group)

    def qdq_inter(x):
        if inter_amax_steps and a2_scale is None and group is None and not per_act_token:  # dynamic per tensor
            return qdq(x, stepped_amax_scale(x, inter_amax_steps, a.dtype, INT8_MAX, MIN_SCALE))
        return qdq(x, a2_scale)

    return moe_qdq_ref(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale,
                       lambda x: qdq(x, a1_scale), qdq_inter, block_shape)
