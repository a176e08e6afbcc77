"""Float32 references of the common ops and of the unquantized MoE layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def div_ieee(x: torch.Tensor, d: float) -> torch.Tensor:
    """``x / d`` as an IEEE float32 division on every device. CUDA torch multiplies by the rounded reciprocal of a
    Python scalar divisor, which can differ in the last bit: a scale ``amax / 448`` one ulp off the kernels' moves
    every quotient that the exact scale puts on a rounding tie (amax's bf16 significand a multiple of 7 makes
    ``amax / 448`` exact and ties frequent: up to 1.2% of the e4m3 values flipped, 3% layer error, seen on an H200)."""
    return x / torch.full_like(x, d)


def stepped_amax_scale(x: torch.Tensor, steps: int, dtype: torch.dtype, q_max: float,
                       min_scale: float) -> torch.Tensor:
    """The dynamic per-tensor scale ``max(amax / q_max, min_scale)`` of ``x`` (values of ``dtype``, a 16-bit float)
    with its amax moved ``steps`` representable values of ``dtype`` up (or down). A dynamic per-tensor scale is
    discontinuous in the data: when the intermediate's largest element lies near a rounding boundary of
    ``dtype``, a kernel's tensor-core sum and a float32 reference can round it to neighbouring values, and the
    scale moves one step (2⁻⁸ to 2⁻⁷ relative for bf16) with both correct — which moves ~9% of the e4m3
    roundings and changes the layer's output by ~2%. A reference at ``steps = ±1`` is the one such a kernel
    matches. Returns float32 ``[1]``."""
    amax = x.abs().amax().to(dtype).reshape(1) if x.numel() else torch.zeros(1, dtype=dtype, device=x.device)
    if steps:
        assert dtype in (torch.bfloat16, torch.float16), dtype
        amax = (amax.view(torch.int16) + steps).clamp(min=0).view(dtype)  # |x| ≥ 0: the bits order the values
    return div_ieee(amax.float(), q_max).clamp(min=min_scale)


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


def moe_qdq_ref(a: torch.Tensor, w1_q: torch.Tensor, w2_q: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor, w1_scale: torch.Tensor, w2_scale: torch.Tensor, qdq_a, qdq_inter,
                block_shape: tuple[int, int] | None = None, *, round_gemm1: bool = False, round_inter: bool = True,
                round_gemm2: bool = False) -> torch.Tensor:
    """A quantized MoE layer in float32, given how it quantizes its activations: ``qdq_a(a_f32)`` and
    ``qdq_inter(inter_f32)`` return the quantized-then-dequantized float32 activations. GEMM1 with dequantized
    weights, SiLU·mul in float32, ``qdq_inter`` on the live rows only (slots with ids outside ``[0, E)`` are
    dropped; a dynamic per-tensor scale sees only live rows, as a fused kernel does), GEMM2, weighted sum.

    Where the pipeline stores a value in the activation dtype, the reference rounds it to ``a.dtype``: the GEMM1
    product before SiLU (``round_gemm1``), the SiLU·mul output before its quantization (``round_inter``; the FP8
    and W8A8 layers store it so), each GEMM2 row before the weighted sum (``round_gemm2``). The FP8, INT8 W8A8 and
    INT8 hybrid references are this with their quantizers and rounding points. Returns float32 ``[M, K]``."""
    m, topk = topk_ids.shape
    num_experts = w1_q.shape[0]
    a_dq = qdq_a(a.float())
    flat_ids = topk_ids.reshape(-1).long()
    valid = (flat_ids >= 0) & (flat_ids < num_experts)
    tokens = torch.arange(m * topk, device=a.device) // topk
    inter = torch.zeros((m * topk, w1_q.shape[1] // 2), dtype=torch.float32, device=a.device)
    for e in range(num_experts):
        sel = torch.nonzero(flat_ids == e).flatten()
        if sel.numel() == 0:
            continue
        h = a_dq[tokens[sel]] @ dequant_weight_ref(w1_q[e], w1_scale[e], block_shape).t()
        if round_gemm1:
            h = h.to(a.dtype).float()
        n = h.shape[1] // 2
        inter[sel] = F.silu(h[:, :n]) * h[:, n:]
    if round_inter:
        inter = inter.to(a.dtype).float()
    valid_idx = torch.nonzero(valid).flatten()
    inter_dq = qdq_inter(inter[valid_idx])
    out_rows = torch.zeros((m * topk, w2_q.shape[1]), dtype=torch.float32, device=a.device)
    for e in range(num_experts):
        sel_local = torch.nonzero(flat_ids[valid_idx] == e).flatten()
        if sel_local.numel() == 0:
            continue
        y = inter_dq[sel_local] @ dequant_weight_ref(w2_q[e], w2_scale[e], block_shape).t()
        out_rows[valid_idx[sel_local]] = y.to(a.dtype).float() if round_gemm2 else y
    weights = topk_weights.float().reshape(-1) * valid
    return (out_rows * weights[:, None]).reshape(m, topk, -1).sum(dim=1)


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


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ``‖out − ref‖ / ‖ref‖`` in float64 (inf if out has NaN/inf)."""
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return float("inf")
    denom = r.norm().item()
    return (o - r).norm().item() / (denom if denom > 0 else 1.0)
