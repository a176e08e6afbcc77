"""Float32 torch references for every moejit op and for a whole MoE layer.

These run anywhere torch runs (CPU or GPU) and are what the tests and the benchmark's error column compare
against. Quantization-simulating references live beside the quantizers they mirror.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[:, :N]) * x[:, N:]`` in float32, rounded to ``x.dtype``."""
    n = x.shape[-1] // 2
    xf = x.float()
    return (F.silu(xf[..., :n]) * xf[..., n:]).to(x.dtype)


def moe_permute_ref(hidden: torch.Tensor, topk_ids: torch.Tensor, num_experts: int):
    """Reference of :func:`moejit.ops.moe_permute` (same outputs, same conventions)."""
    m, topk = topk_ids.shape
    flat = topk_ids.reshape(-1).long()
    keys = torch.where((flat >= 0) & (flat < num_experts), flat, torch.full_like(flat, num_experts))
    sort_idx = torch.sort(keys, stable=True).indices
    sorted_keys = keys[sort_idx]
    offsets = torch.searchsorted(sorted_keys, torch.arange(num_experts + 1, device=keys.device))
    inv_idx = torch.empty_like(sort_idx)
    inv_idx[sort_idx] = torch.arange(m * topk, device=keys.device)
    inv_idx = torch.where(keys < num_experts, inv_idx, torch.full_like(inv_idx, -1))
    rows = hidden[sort_idx // topk] if m * topk else hidden.new_empty((0, hidden.shape[1]))
    return rows, offsets.int(), sort_idx.int(), inv_idx.int()


def moe_unpermute_ref(rows: torch.Tensor, topk_weights: torch.Tensor, inv_idx: torch.Tensor) -> torch.Tensor:
    """``out[m] = Σ_j w[m, j] · rows[inv_idx[m*topk + j]]`` (slots with inv_idx -1 skipped), float32 accumulate."""
    m, topk = topk_weights.shape
    idx = inv_idx.long().reshape(m, topk)
    gathered = rows.float()[idx.clamp(min=0)]  # [M, topk, K]
    weights = topk_weights.float() * (idx >= 0)
    return torch.einsum("mj,mjk->mk", weights, gathered).to(rows.dtype)


def moe_problem_sizes_ref(expert_offsets: torch.Tensor, n: int, k: int, swap_ab: bool = False) -> torch.Tensor:
    rows = (expert_offsets[1:] - expert_offsets[:-1]).int()
    full = lambda v: torch.full_like(rows, v)  # noqa: E731
    cols = (full(n), rows, full(k)) if swap_ab else (rows, full(n), full(k))
    return torch.stack(cols, dim=1)


def moe_ref(a: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
            topk_ids: torch.Tensor, w1_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None,
            activation: str = "silu") -> torch.Tensor:
    """The unquantized MoE layer in float32: ``Σ_j w[m,j] · W2[e] · act(W1[e] · a[m])`` with ``e = topk_ids[m,j]``.

    ``w1 [E, 2N, K]`` and ``w2 [E, K, N]`` may be quantized; ``w*_scale`` (``[E]``, ``[E, 1, 1]`` or per output
    channel ``[E, N_out]``/``[E, N_out, 1]``) dequantize them. Returns float32 ``[M, K]``.
    """
    if activation != "silu":
        raise ValueError(f"unsupported activation {activation!r}")
    num_experts = w1.shape[0]
    out = torch.zeros((a.shape[0], w2.shape[1]), dtype=torch.float32, device=a.device)
    af = a.float()
    for e in range(num_experts):
        token, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        if token.numel() == 0:
            continue
        w1e = dequant_weight_ref(w1[e], None if w1_scale is None else w1_scale[e])
        w2e = dequant_weight_ref(w2[e], None if w2_scale is None else w2_scale[e])
        h = af[token] @ w1e.t()
        n = h.shape[1] // 2
        y = (F.silu(h[:, :n]) * h[:, n:]) @ w2e.t()
        out.index_add_(0, token, y * topk_weights[token, slot].float()[:, None])
    return out


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ``‖out − ref‖ / ‖ref‖`` in float64 (inf if out has NaN/inf)."""
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return float("inf")
    denom = r.norm().item()
    return (o - r).norm().item() / (denom if denom > 0 else 1.0)


# ---------------------------------------------------------------------------------------------------------------
# FP8 (e4m3) quantization, exactly as design.md defines it, and the whole FP8 layer simulating it.

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
    Dynamic scales are ``max(amax / 448, 1e-12)``. Returns ``(q fp8, scale float32)``.
    """
    xf = x.float()
    if scale is not None:
        s = scale.float().reshape(())
        q = (xf / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        return q, scale.float().reshape(1)
    if group_size is not None:
        m, k = xf.shape
        g = xf.reshape(m, k // group_size, group_size)
        s = (g.abs().amax(dim=-1) / FP8_MAX).clamp(min=MIN_SCALE)
        q = (g / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(m, k)
        return q, s
    if per_token:
        s = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    else:
        s = (xf.abs().amax() / FP8_MAX).clamp(min=MIN_SCALE).reshape(1)
    q = (xf / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, s


def fp8_dequant_ref(q: torch.Tensor, scale: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Inverse of :func:`fp8_quant_ref` in float32."""
    qf = q.float()
    if group_size is not None:
        m, k = qf.shape
        return (qf.reshape(m, k // group_size, group_size) * scale.float()[..., None]).reshape(m, k)
    return qf * scale.float().reshape(-1, 1) if scale.numel() > 1 else qf * scale.float().reshape(())


def quantize_weights_fp8_ref(w: torch.Tensor, per_out_ch: bool = False, block_shape: tuple[int, int] | None = None):
    """Quantize expert weights ``[E, N_out, K]`` to e4m3: per expert ``[E]``, per output channel ``[E, N_out]``,
    or ``block_shape=(bn, bk)`` blocks ``[E, N_out/bn, K/bk]``. Returns ``(w_q, scale float32)``."""
    e, n, k = w.shape
    wf = w.float()
    if block_shape is not None:
        bn, bk = block_shape
        blocks = wf.reshape(e, n // bn, bn, k // bk, bk)
        s = (blocks.abs().amax(dim=(2, 4)) / FP8_MAX).clamp(min=MIN_SCALE)
        q = (blocks / s[:, :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(e, n, k)
        return q, s
    if per_out_ch:
        s = (wf.abs().amax(dim=-1) / FP8_MAX).clamp(min=MIN_SCALE)
        return (wf / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s
    s = (wf.abs().amax(dim=(1, 2)) / FP8_MAX).clamp(min=MIN_SCALE)
    return (wf / s[:, None, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s


def dequant_weight_ref(w_q: torch.Tensor, scale: torch.Tensor | None,
                       block_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """One expert's weights ``[N_out, K]`` back to float32. ``scale``: one element (per tensor), ``N_out``
    elements (per output channel), or ``[N_out/bn, K/bk]`` blocks with ``block_shape=(bn, bk)``; None: no scale."""
    wf = w_q.float()
    if scale is None:
        return wf
    s = scale.float()
    if block_shape is not None:
        bn, bk = block_shape
        full = s.repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)
        return wf * full[: wf.shape[0], : wf.shape[1]]
    if s.numel() == 1:
        return wf * s.reshape(())
    if s.numel() == wf.shape[0]:
        return wf * s.reshape(-1, 1)
    raise ValueError(f"weight scale of shape {tuple(scale.shape)} matches no layout for weights {tuple(w_q.shape)}")


def moe_fp8_ref(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor,
                a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
                per_act_token: bool = False, block_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """The FP8 MoE layer in float32, simulating its exact quantization: quantize the input (static per-tensor if
    ``a1_scale`` is given, else dynamic per-token or per-tensor, or 1×block_k groups with ``block_shape``), GEMM1
    with dequantized weights, SiLU·mul, quantize the intermediate the same way (with ``a2_scale``), GEMM2,
    weighted sum. Dynamic per-tensor scales of the intermediate are taken over all of its rows, as a fused
    kernel sees them. Returns float32 ``[M, K]``."""
    group = block_shape[1] if block_shape is not None else None

    def qdq(x, static_scale):
        if static_scale is not None and group is None:
            q, s = fp8_quant_ref(x, scale=static_scale)
            return fp8_dequant_ref(q, s)
        q, s = fp8_quant_ref(x, per_token=per_act_token, group_size=group)
        return fp8_dequant_ref(q, s, group)

    m, topk = topk_ids.shape
    num_experts = w1_q.shape[0]
    a_dq = qdq(a.float(), a1_scale)
    flat_ids = topk_ids.reshape(-1).long()
    valid = (flat_ids >= 0) & (flat_ids < num_experts)
    tokens = torch.arange(m * topk, device=a.device) // topk
    inter = torch.zeros((m * topk, w1_q.shape[1] // 2), dtype=torch.float32, device=a.device)
    for e in range(num_experts):
        sel = torch.nonzero(flat_ids == e).flatten()
        if sel.numel() == 0:
            continue
        h = a_dq[tokens[sel]] @ dequant_weight_ref(w1_q[e], w1_scale[e], block_shape).t()
        n = h.shape[1] // 2
        inter[sel] = F.silu(h[:, :n]) * h[:, n:]
    inter = inter.to(a.dtype).float()  # the GEMM1 output is stored in the activation dtype
    inter_dq = qdq(inter[valid], a2_scale)
    out_rows = torch.zeros((m * topk, w2_q.shape[1]), dtype=torch.float32, device=a.device)
    valid_idx = torch.nonzero(valid).flatten()
    for e in range(num_experts):
        sel_local = torch.nonzero(flat_ids[valid_idx] == e).flatten()
        if sel_local.numel() == 0:
            continue
        y = inter_dq[sel_local] @ dequant_weight_ref(w2_q[e], w2_scale[e], block_shape).t()
        out_rows[valid_idx[sel_local]] = y
    weights = topk_weights.float().reshape(-1) * valid
    return (out_rows * weights[:, None]).reshape(m, topk, -1).sum(dim=1)
