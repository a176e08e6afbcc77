"""The fused MoE GEMM in Triton: ``C[slot] = (A[row(slot)] · W[e]ᵀ) · scales [· router weight]`` for every slot
of every expert, walking the expert-sorted, block-padded slot list of :mod:`moejit.triton.align`.

- A rows are gathered through the sorted slot ids (``row = slot // top_k``): no permuted copy of the activations.
- A and W are quantized (``float8_e4m3fn`` or ``int8``), multiplied with ``tl.dot`` (float32 accumulation for FP8,
  int32 for INT8), and scaled in the epilogue: activation scale per tensor (``[1]``) or per row (``[rows, 1]``) ×
  weight scale per expert (``[E]``) or per output channel (``[E, N]``).
- FP8 accumulation: Hopper's FP8 tensor-core accumulation keeps fewer mantissa bits than float32 (DeepSeek-V3
  report, §3.3.2); left alone over K = 14336 it costs ~1-2% relative error. Partial sums are promoted to the
  float32 accumulator every 128 products (``max_num_imprecise_acc``), DeepSeek's interval. On sm_90 this makes
  ptxas wait for each wgmma before the promotion (warning C7517): a speed cost not measured yet (docs/notes.md).
- Block-wise (DeepSeek-V3): ``W`` scales ``[E, ceil(N/GROUP_N), ceil(K/GROUP_K)]``, ``A`` scales
  ``[rows, K/GROUP_K]`` (1×GROUP_K groups); each K step's partial product is scaled before accumulating in float32
  (so BLOCK_K divides GROUP_K).
- INT8 hybrid blockwise (the Q/F format of :mod:`moejit.int8.format`): ``A`` int8 with an integer ``Q`` per
  (row, K-block of ``QBLOCK``) and a float ``F`` per (row, super group of ``SG_BLOCKS`` blocks), ``W`` per output
  channel. Each K step's int32 product is multiplied by the rows' Q and summed in int32 (exact, and overflow-free
  for the format's safe super groups); once per super group the int32 sum is converted and multiplied by F.
- Writes ``C [num_slots, N]`` in C's dtype (bf16/fp16); padded rows (sentinel ids) are neither read nor written.
- GEMM1 of the layer fuses SwiGLU: each program accumulates a gate tile and the matching up tile and stores
  ``silu(gate) · up`` computed in float32 — exactly the reference's rounding (one rounding to the activation dtype),
  and half the intermediate traffic of storing ``[gate ‖ up]``.

The grid is sized for the worst-case padded length; programs past ``num_post_pad`` return at once, so the launch
never depends on data (graph-capturable, no host sync). One kernel serves FP8 and INT8 ("extend, don't fork"):
the quantized dtype only changes the accumulator type.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moejit.triton.align import Alignment

# scale modes (constexpr): activation A_MODE 0 per tensor, 1 per row, 2 1×GROUP_K groups, 3 hybrid Q/F (int8);
# weight W_MODE 0 per expert, 1 per output channel, 2 GROUP_N×GROUP_K blocks
A_TENSOR, A_ROW, A_GROUP, A_HYBRID = 0, 1, 2, 3
W_TENSOR, W_CHANNEL, W_BLOCK = 0, 1, 2
# FP8 products summed inside the tensor core before promotion to float32 (DeepSeek-V3's interval); a config's
# "promote_every" overrides it (0: never promote). Independent of BLOCK_SIZE_K: Triton splits a longer dot.
PROMOTE_INTERVAL = 128


@triton.jit
def _scale_out(acc, rows, slot_mask, a_scale_ptr, w_scale_ptr, expert, offs_wn, stride_asm, stride_wse, stride_wsn,
               A_MODE: tl.constexpr, W_MODE: tl.constexpr):
    """float32 result of an accumulator: per-tensor or per-row activation × per-expert or per-channel weight scale
    (block-wise accumulators are already scaled)."""
    out = acc.to(tl.float32)
    if W_MODE != 2:
        if A_MODE == 3:
            pass  # hybrid: F is applied per super group (:func:`_fold_group`)
        elif A_MODE == 1:
            out = out * tl.load(a_scale_ptr + rows.to(tl.int64) * stride_asm, mask=slot_mask, other=0.0)[:, None]
        else:
            out = out * tl.load(a_scale_ptr)
        if W_MODE == 1:
            out = out * tl.load(w_scale_ptr + expert * stride_wse + offs_wn * stride_wsn)[None, :]
        else:
            out = out * tl.load(w_scale_ptr + expert * stride_wse)
    return out


@triton.jit
def _mma(acc, a, w, IS_INT: tl.constexpr, PROMOTE_EVERY: tl.constexpr):
    """acc += a · w. FP8 on sm_90 accumulates inside the tensor core with reduced precision; PROMOTE_EVERY bounds
    how many products are summed that way before they are added to the float32 accumulator (0: never promote)."""
    if IS_INT:
        acc = tl.dot(a, w, acc=acc, out_dtype=tl.int32)
    elif PROMOTE_EVERY > 0:
        acc = tl.dot(a, w, acc=acc, max_num_imprecise_acc=PROMOTE_EVERY)
    else:
        acc = tl.dot(a, w, acc=acc)
    return acc


@triton.jit
def _mma_block(acc, a, w, a_s, w_s, IS_INT: tl.constexpr):
    """acc += (a · w) · a_s ⊗ w_s for one K step of block-wise scales (the partial product is promoted here)."""
    if IS_INT:
        part = tl.dot(a, w, out_dtype=tl.int32).to(tl.float32)
    else:
        part = tl.dot(a, w)
    # scaled as (part · a_s) · w_s: building the a_s ⊗ w_s tile first keeps a fifth full fp32 tile live (spills)
    return acc + (part * a_s[:, None]) * w_s[None, :]


@triton.jit
def _fold_group(acc_f, acc, f_ptrs, g, slot_mask):
    """Hybrid: the float accumulator plus one super group's int32 sum times the rows' F of group ``g``."""
    f = tl.load(f_ptrs + g, mask=slot_mask, other=0.0)
    return acc_f + acc.to(tl.float32) * f[:, None]


@triton.jit
def _epilogue(acc, acc_u, rows, slots, slot_mask, a_scale_ptr, w_scale_ptr, topk_weights_ptr, expert, offs_wn, N,
              stride_asm, stride_wse, stride_wsn, A_MODE: tl.constexpr, W_MODE: tl.constexpr,
              SILU_MUL: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr):
    """A tile's float32 output from its accumulators: the scales (:func:`_scale_out`; ``offs_wn``: the weight rows
    of its gate columns, the up rows ``N`` further), ``silu(gate) · up`` with SILU_MUL, × the router weight of each
    slot. Also the Gluon kernel's (:mod:`moejit.triton.gluon_moe`), so the two give the same bits."""
    out = _scale_out(acc, rows, slot_mask, a_scale_ptr, w_scale_ptr, expert, offs_wn, stride_asm, stride_wse,
                     stride_wsn, A_MODE, W_MODE)
    if SILU_MUL:
        up = _scale_out(acc_u, rows, slot_mask, a_scale_ptr, w_scale_ptr, expert, offs_wn + N, stride_asm,
                        stride_wse, stride_wsn, A_MODE, W_MODE)
        out = out / (1.0 + tl.exp(-out)) * up
    if MUL_ROUTED_WEIGHT:
        rw = tl.load(topk_weights_ptr + slots, mask=slot_mask, other=0.0).to(tl.float32)
        out = out * rw[:, None]
    return out


@triton.jit
def fused_moe_kernel(
    a_ptr, w_ptr, c_ptr, a_scale_ptr, w_scale_ptr, topk_weights_ptr,
    sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr, a_f_ptr,
    N, K, num_slots, num_m_blocks,
    stride_am, stride_we, stride_wn, stride_cm,
    stride_asm, stride_wse, stride_wsn, stride_wsk, stride_afm,
    TOP_K: tl.constexpr, A_MODE: tl.constexpr, W_MODE: tl.constexpr,
    QBLOCK: tl.constexpr, SG_BLOCKS: tl.constexpr, ONE_GROUP: tl.constexpr,
    GROUP_N: tl.constexpr, GROUP_K: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr, SILU_MUL: tl.constexpr,
    EVEN_K: tl.constexpr, PROMOTE_EVERY: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
):
    """``C[slot, n] = scales · Σ_k A[slot // TOP_K, k] · W[e, n, k]``. With SILU_MUL, W has 2N rows (gate ‖ up) and
    each program computes the gate tile and the matching up tile and stores ``silu(gate) · up``. Hybrid (A_MODE 3):
    ``a_scale_ptr`` holds Q (int32 ``[rows, K/QBLOCK]``), ``a_f_ptr`` F (float32 ``[rows, G]``); ONE_GROUP when the
    whole K is one super group (``K <= SG_BLOCKS · QBLOCK``)."""
    # grouped ordering of (m-block, n-block) tiles: GROUP_SIZE_M m-blocks share each sweep over N (L2 reuse of W)
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = tl.minimum(num_m_blocks - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    if pid_m * BLOCK_SIZE_M >= tl.load(num_post_pad_ptr):
        return
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    IS_INT: tl.constexpr = a_ptr.dtype.element_ty == tl.int8

    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    slots = tl.load(sorted_ids_ptr + offs_m)
    slot_mask = slots < num_slots
    rows = slots // TOP_K
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_wn = offs_n % N  # wrap instead of masking the weight loads; the wrapped columns are never stored
    offs_wu = offs_wn + N  # the up rows (SILU_MUL)

    a_ptrs = a_ptr + rows[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + expert * stride_we + offs_wn[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    u_ptrs = w_ptr + expert * stride_we + offs_wu[None, :].to(tl.int64) * stride_wn + offs_k[:, None]

    ACC_T: tl.constexpr = tl.int32 if (IS_INT and W_MODE != 2) else tl.float32
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=ACC_T)
    acc_u = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N if SILU_MUL else 16), dtype=ACC_T)
    # hybrid with several super groups: float accumulators that take each group's int32 sum times F
    FOLD: tl.constexpr = A_MODE == 3 and not ONE_GROUP
    acc_f = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N if FOLD else 16), dtype=tl.float32)
    acc_uf = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N if (FOLD and SILU_MUL) else 16), dtype=tl.float32)
    f_ptrs = a_f_ptr + rows.to(tl.int64) * stride_afm
    a_s_ptrs = a_scale_ptr + rows.to(tl.int64) * stride_asm
    w_s_ptrs = w_scale_ptr + expert * stride_wse + (offs_wn // GROUP_N) * stride_wsn
    u_s_ptrs = w_scale_ptr + expert * stride_wse + (offs_wu // GROUP_N) * stride_wsn
    for k0 in range(0, K, BLOCK_SIZE_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=slot_mask[:, None], other=0.0)
            w = tl.load(w_ptrs)
            if SILU_MUL:
                u = tl.load(u_ptrs)
        else:
            k_mask = offs_k < K - k0
            a = tl.load(a_ptrs, mask=slot_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
            if SILU_MUL:
                u = tl.load(u_ptrs, mask=k_mask[:, None], other=0.0)
        if A_MODE == 3:
            # one K step lies inside one Q block (QBLOCK % BLOCK_SIZE_K == 0): Q·P summed in int32
            q = tl.load(a_s_ptrs + k0 // QBLOCK, mask=slot_mask, other=0)
            acc += tl.dot(a, w, out_dtype=tl.int32) * q[:, None]
            if SILU_MUL:
                acc_u += tl.dot(a, u, out_dtype=tl.int32) * q[:, None]
            if FOLD:
                if (k0 + BLOCK_SIZE_K) % (SG_BLOCKS * QBLOCK) == 0:  # the last step of a super group
                    g = k0 // (SG_BLOCKS * QBLOCK)
                    acc_f = _fold_group(acc_f, acc, f_ptrs, g, slot_mask)
                    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=ACC_T)
                    if SILU_MUL:
                        acc_uf = _fold_group(acc_uf, acc_u, f_ptrs, g, slot_mask)
                        acc_u = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=ACC_T)
        elif W_MODE == 2:
            kg = k0 // GROUP_K
            a_s = tl.load(a_s_ptrs + kg, mask=slot_mask, other=0.0)
            acc = _mma_block(acc, a, w, a_s, tl.load(w_s_ptrs + kg * stride_wsk), IS_INT)
            if SILU_MUL:
                acc_u = _mma_block(acc_u, a, u, a_s, tl.load(u_s_ptrs + kg * stride_wsk), IS_INT)
        else:
            acc = _mma(acc, a, w, IS_INT, PROMOTE_EVERY)
            if SILU_MUL:
                acc_u = _mma(acc_u, a, u, IS_INT, PROMOTE_EVERY)
        a_ptrs += BLOCK_SIZE_K
        w_ptrs += BLOCK_SIZE_K
        u_ptrs += BLOCK_SIZE_K

    if A_MODE == 3:  # the last (or only) super group; after an exact fold its sum is zero
        last_g = (K - 1) // (SG_BLOCKS * QBLOCK)
        if FOLD:
            acc = _fold_group(acc_f, acc, f_ptrs, last_g, slot_mask)
            if SILU_MUL:
                acc_u = _fold_group(acc_uf, acc_u, f_ptrs, last_g, slot_mask)
        else:
            acc = _fold_group(tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32), acc, f_ptrs, 0, slot_mask)
            if SILU_MUL:
                acc_u = _fold_group(tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32), acc_u, f_ptrs, 0,
                                    slot_mask)
    out = _epilogue(acc, acc_u, rows, slots, slot_mask, a_scale_ptr, w_scale_ptr, topk_weights_ptr, expert, offs_wn,
                    N, stride_asm, stride_wse, stride_wsn, A_MODE, W_MODE, SILU_MUL, MUL_ROUTED_WEIGHT)
    c_ptrs = c_ptr + slots[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=slot_mask[:, None] & (offs_n[None, :] < N))


def invoke_fused_moe_gemm(a: torch.Tensor, w: torch.Tensor, c: torch.Tensor, a_scale: torch.Tensor,
                          w_scale: torch.Tensor, topk_weights: torch.Tensor | None, align: Alignment, top_k: int,
                          a_mode: int, w_mode: int, config: dict, block_shape: tuple[int, int] | None = None,
                          silu_mul: bool = False, a_f: torch.Tensor | None = None,
                          hybrid: tuple[int, int] | None = None):
    """Launch :func:`fused_moe_kernel` for ``c [num_slots, N] = a[rows] · w[e]ᵀ`` (see the module docstring).

    ``a [rows, K]`` quantized; ``w [E, N, K]`` (``[E, 2N, K]`` with ``silu_mul``: c = silu(gate) · up);
    ``a_scale`` ``[1]`` / ``[rows, 1]`` / ``[rows, K/GROUP_K]``; ``w_scale`` ``[E]`` / ``[E, N]`` /
    ``[E, N/GROUP_N, K/GROUP_K]`` (over w's rows); ``top_k`` maps slot → row of ``a``. Hybrid (``a_mode ==
    A_HYBRID``, int8, ``w_mode == W_CHANNEL``): ``a_scale`` is Q int32 ``[rows, K/B]``, ``a_f`` F float32
    ``[rows, G]`` and ``hybrid = (B, S_eff)`` (block size, effective super group in blocks).
    """
    num_slots, n = c.shape
    k = a.shape[1]
    assert w.shape[1] == (2 * n if silu_mul else n) and w.shape[2] == k and a.dtype == w.dtype
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    group_n, group_k = block_shape if block_shape is not None else (1, 1)
    if w_mode == W_BLOCK:
        bk = min(bk, group_k)
        assert group_k % bk == 0, "BLOCK_SIZE_K must divide the scale group along K"
    qblock, sg_blocks = hybrid if hybrid is not None else (1, 1)
    if a_mode == A_HYBRID:
        assert a.dtype == torch.int8 and w_mode == W_CHANNEL and a_f is not None and hybrid is not None
        bk = min(bk, qblock)
        assert qblock % bk == 0 and k % qblock == 0, "BLOCK_SIZE_K must divide the Q block, which must divide K"
    grid = (align.expert_ids.shape[0] * triton.cdiv(n, bn),)
    e = w.shape[0]
    ws = w_scale.reshape(e, -1) if w_mode != W_BLOCK else w_scale
    stride_wsn = ws.stride(1) if w_mode != W_TENSOR else 0
    stride_wsk = ws.stride(2) if w_mode == W_BLOCK else 0
    fused_moe_kernel[grid](
        a, w, c, a_scale, ws, topk_weights if topk_weights is not None else c,
        align.sorted_ids, align.expert_ids, align.num_post_pad, a_f if a_f is not None else a_scale,
        n, k, num_slots, align.expert_ids.shape[0],
        a.stride(0), w.stride(0), w.stride(1), c.stride(0),
        a_scale.stride(0) if a_mode != A_TENSOR else 0, ws.stride(0), stride_wsn, stride_wsk,
        a_f.stride(0) if a_f is not None else 0,
        TOP_K=top_k, A_MODE=a_mode, W_MODE=w_mode, QBLOCK=qblock, SG_BLOCKS=sg_blocks,
        ONE_GROUP=k <= qblock * sg_blocks, GROUP_N=group_n, GROUP_K=group_k,
        MUL_ROUTED_WEIGHT=topk_weights is not None, SILU_MUL=silu_mul, EVEN_K=k % bk == 0,
        PROMOTE_EVERY=min(config.get("promote_every", PROMOTE_INTERVAL), bk),
        BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=config.get("GROUP_SIZE_M", 1),
        num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3),
    )
    return c


@triton.jit
def moe_sum_kernel(y_ptr, ids_ptr, out_ptr, K, num_experts, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    """``out[m] = Σ_j y[m*TOP_K + j]`` over the live slots (id in [0, E)); y rows of dropped slots are unwritten."""
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < K
    acc = tl.zeros((BLOCK,), tl.float32)
    for j in tl.static_range(TOP_K):
        e = tl.load(ids_ptr + m * TOP_K + j)
        live = (e >= 0) & (e < num_experts)
        acc += tl.load(y_ptr + (m * TOP_K + j) * K + cols, mask=mask & live, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * K + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def moe_sum(y: torch.Tensor, topk_ids: torch.Tensor, num_experts: int, out: torch.Tensor) -> torch.Tensor:
    m, top_k = topk_ids.shape
    k = y.shape[1]
    block = min(triton.next_power_of_2(k), 1024)
    if m:
        moe_sum_kernel[(m, triton.cdiv(k, block))](y, topk_ids, out, k, num_experts, TOP_K=top_k, BLOCK=block,
                                                   num_warps=4)
    return out
