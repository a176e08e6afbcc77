"""A warp-specialized FP8 MoE GEMM for Hopper, written in Gluon (Triton's explicit-layout dialect).

Same contract as :func:`moejit.triton.fused_moe.fused_moe_kernel` for FP8 with per-tensor or per-row activation
scales × per-expert or per-channel weight scales: ``C[slot] = (A[slot // TOP_K] · W[e]ᵀ) · scales [· router
weight]``, optionally with SwiGLU fused (W holds gate ‖ up, C gets ``silu(gate) · up``), over the expert-sorted,
block-padded slot list of :mod:`moejit.triton.align`.

Why a second kernel: Hopper's FP8 tensor cores keep ~14 significant bits while they accumulate, so partial sums
are promoted to a float32 accumulator every 128 products (``fused_moe.PROMOTE_INTERVAL``). In the ``tl.dot``
kernel each promotion waits for its wgmma to finish, and all warps of a program meet at a barrier every K step
(the gathered A rows are loaded by every warp), so the tensor cores idle during every promotion: 16–29% of GEMM1
at large M (docs/triton_fp8.md). Here:

- one loader warp group (4 warps, 40 registers a thread) gathers the A rows with ``cp.async`` (through the sorted
  slot ids: no permuted copy) and brings the weight tiles with TMA into a ring of ``STAGES`` shared-memory
  buffers, signalling mbarriers;
- the consumers are two warp groups (8 warps, 232 registers a thread after ``setmaxnreg``). With BLOCK_M = 128
  each owns 64 rows of the tile; with BLOCK_M = 64 each owns half of its columns. Each issues the wgmma of K step
  ``k`` into a fresh partial accumulator, then waits only for step ``k-1``'s wgmma, promotes that partial into its
  float32 accumulator and frees the stage, so the tensor core always has the next step queued. A thread holds
  the sum and two partials: 3 × 64 float32 values, which bounds the tile to BLOCK_M · BLOCK_N (· 2 with the gate
  and up tiles of SwiGLU) = 128 · 128 (:func:`tile_fits`);
- the kernel is persistent (one program per SM walking the tiles, GROUP_M m-blocks per sweep over N), so the
  loader fills the next tile's stages while the consumers run the epilogue, which stages the output tile through
  shared memory so that each thread stores 16 contiguous bytes of a row.

The promotion interval is STEP_K = 128, as in the ``tl.dot`` kernel: the two add the same float32 partials and
give the same bits (measured on an H200, docs/triton_fp8.md). Needs sm_90, K a multiple of 2 · STEP_K, FP8 e4m3
operands; :func:`eligible` says whether a GEMM qualifies, and the layer runs the ``tl.dot`` kernel otherwise.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (async_copy, fence_async_shared, mbarrier, tma,
                                                               warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from moejit.errors import MoejitInputError
from moejit.triton.align import Alignment
from moejit.triton.fused_moe import A_ROW, A_TENSOR, W_CHANNEL, W_TENSOR, _epilogue

BLOCK_K = 128  # one K step = one promotion
STEP_K = gl.constexpr(BLOCK_K)  # the same, inside kernels
BLOCK_MS = (64, 128)  # tile rows: 64 (the two consumer warp groups split the columns) or 128 (they split the rows)
# float32 values a consumer thread holds per tile: the sum, and two partials in flight → 3 × BM·BN_out / 256 ≤ 192
TILE_VALUES = 128 * 128
CONSUMER_WARPS = 8  # the default partition: two warp groups
LOADER_WARPS, LOADER_REGS = gl.constexpr(4), gl.constexpr(40)  # one loader warp group and its setmaxnreg
MAX_STAGES = {64: 5, 128: 6}  # stages that fit 227 KB of shared memory beside the epilogue's staging of the tile
MAXNREG = 168  # per thread at launch (384 threads = 65536 / 168 rounded down to 8): setmaxnreg moves the rest


@gluon.jit
def _tile(t, num_pid_n, num_m_live, GROUP_M: gl.constexpr):
    """(m-block, n-block) of persistent tile ``t``: GROUP_M m-blocks share each sweep over N (L2 reuse of W)."""
    per_group = GROUP_M * num_pid_n
    first_m = (t // per_group) * GROUP_M
    size_m = gl.minimum(num_m_live - first_m, GROUP_M)
    return first_m + (t % per_group) % size_m, (t % per_group) // size_m


@gluon.jit
def _loader(a_ptr, w_desc, a_bufs, b_bufs, ready_a, ready_b, empty, sorted_ids_ptr, expert_ids_ptr,
            num_post_pad_ptr, N, K, num_slots, stride_am, N_W,
            TOP_K: gl.constexpr, SILU_MUL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
            GROUP_M: gl.constexpr, STAGES: gl.constexpr):
    """Worker partition (4 warps): for every K step of every tile, wait for a free stage, TMA the weight tile(s)
    (gate, and up with SILU_MUL), and gather the tile's A rows with cp.async (padded slots read nothing: zeros)."""
    # 16 bytes a thread, 8 threads a 128-byte row, 16 rows a pass over the 4 warps
    layout: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [4, 1], [1, 0])
    num_m_live = gl.cdiv(gl.load(num_post_pad_ptr), BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    w_bytes: gl.constexpr = (2 if SILU_MUL else 1) * BLOCK_N * STEP_K
    offs_k = gl.arange(0, STEP_K, layout=gl.SliceLayout(0, layout))
    it = 0
    for t in range(gl.program_id(0), num_m_live * num_pid_n, gl.num_programs(0)):
        pid_m, pid_n = _tile(t, num_pid_n, num_m_live, GROUP_M)
        expert = gl.load(expert_ids_ptr + pid_m)
        slots = gl.load(sorted_ids_ptr + pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout)))
        live = slots < num_slots
        a_ptrs = a_ptr + (slots // TOP_K).to(gl.int64)[:, None] * stride_am + offs_k[None, :]
        mask = live[:, None] & (offs_k[None, :] < STEP_K)
        w_row = expert * N_W + pid_n * BLOCK_N
        for k in range(0, K, STEP_K):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            b = b_bufs.index(s)
            mbarrier.expect(ready_b.index(s), w_bytes)
            tma.async_copy_global_to_shared(w_desc, [w_row, k], ready_b.index(s), b.slice(0, BLOCK_N))
            if SILU_MUL:
                tma.async_copy_global_to_shared(w_desc, [w_row + N, k], ready_b.index(s), b.slice(BLOCK_N, BLOCK_N))
            async_copy.async_copy_global_to_shared(a_bufs.index(s), a_ptrs + k, mask=mask)
            async_copy.mbarrier_arrive(ready_a.index(s), increment_count=False)
            it += 1


@gluon.jit
def _issue(it, a_bufs, b_bufs, ready_a, ready_b, dst, dst_u, SILU_MUL: gl.constexpr,
           BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """Wait for pipeline step ``it``'s stage, then issue its wgmma(s) into the (free) registers ``dst``
    (``dst_u``: the up tile's), starting from zero. Returns the in-flight partials."""
    s = it % STAGES
    ph = (it // STAGES) & 1
    mbarrier.wait(ready_b.index(s), ph)
    mbarrier.wait(ready_a.index(s), ph)
    fence_async_shared()  # the cp.async writes (generic proxy) before the wgmma reads them (async proxy)
    a = a_bufs.index(s)
    b = b_bufs.index(s)
    p = warpgroup_mma(a, b.slice(0, BLOCK_N).permute((1, 0)), dst, use_acc=False, is_async=True)
    pu = p
    if SILU_MUL:
        pu = warpgroup_mma(a, b.slice(BLOCK_N, BLOCK_N).permute((1, 0)), dst_u, use_acc=False, is_async=True)
    return p, pu


@gluon.jit
def _pin(x):
    """``x``, computed here: a volatile no-op on every element keeps the compiler from moving the arithmetic that
    produced ``x`` past the next wgmma issue (which would keep the partial's registers alive: a copy, spills)."""
    return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=False, pack=1)


@gluon.jit
def _retire(it, p, pu, acc, acc_u, empty, OUTSTANDING: gl.constexpr, SILU_MUL: gl.constexpr,
            STAGES: gl.constexpr):
    """Wait until at most OUTSTANDING wgmmas are in flight (step ``it``'s are done), free its stage, and promote
    its partials into the float32 accumulators. Returns the partials (now free registers) and the sums."""
    if SILU_MUL:
        d, du = warpgroup_mma_wait(OUTSTANDING, deps=(p, pu))
        acc_u = _pin(acc_u + du)
    else:
        d = warpgroup_mma_wait(OUTSTANDING, deps=(p, ))
        du = d
    mbarrier.arrive(empty.index(it % STAGES), count=1)
    return d, du, _pin(acc + d), acc_u


@gluon.jit
def _consumer(a_bufs, b_bufs, ready_a, ready_b, empty, c_ptr, a_scale_ptr, w_scale_ptr,
              topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr, N, K, num_slots, stride_cm,
              stride_asm, stride_wse, stride_wsn,
              TOP_K: gl.constexpr, A_MODE: gl.constexpr, W_MODE: gl.constexpr, MUL_ROUTED_WEIGHT: gl.constexpr,
              SILU_MUL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr,
              STAGES: gl.constexpr, UNROLL: gl.constexpr):
    """The default partition: two consumer warp groups, splitting each tile's rows (BLOCK_M 128) or columns
    (BLOCK_M 64) between them (the NVMMA layout's ``warps_per_cta``). K step k's wgmma is issued into a fresh
    partial accumulator before step k-1's is waited for and promoted (added to the float32 sum), so the tensor core
    never drains for a promotion. Then the epilogue: scales, SiLU·mul, router weight, store. The stage is freed
    by one arrive after a barrier of both warp groups (how Gluon lowers ``mbarrier.arrive``), hence ``empty``'s
    count of 1."""
    WARPS_M: gl.constexpr = BLOCK_M // 16  # 16 rows a warp; two warp groups side by side when BLOCK_M is 64
    WARPS_N: gl.constexpr = 8 // WARPS_M
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS_M, WARPS_N],
                                                     instr_shape=[16, BLOCK_N // WARPS_N, 32])
    NMMA: gl.constexpr = 2 if SILU_MUL else 1  # wgmma groups a K step
    num_m_live = gl.cdiv(gl.load(num_post_pad_ptr), BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout)
    it = 0
    for t in range(gl.program_id(0), num_m_live * num_pid_n, gl.num_programs(0)):
        pid_m, pid_n = _tile(t, num_pid_n, num_m_live, GROUP_M)
        # UNROLL K steps an iteration, alternating two partials (P0, P1) whose registers are reused in place (a
        # copy would make ptxas serialize the wgmmas). Each step's wgmma is issued before the previous one is
        # retired; the iteration's last is retired with nothing in flight, because ptxas also serializes
        # everything when a wgmma is in flight across a loop's back edge while accumulators are read
        # (C7514): one drain per UNROLL steps instead of one per step.
        acc = zero
        acc_u = zero
        d0 = zero
        d0u = zero
        d1 = zero
        d1u = zero
        for k in range(0, K, UNROLL * STEP_K):
            p0, p0u = _issue(it, a_bufs, b_bufs, ready_a, ready_b, d0, d0u, SILU_MUL, BLOCK_N, STAGES)
            for j in gl.static_range(1, UNROLL):
                if j % 2 == 1:
                    p1, p1u = _issue(it + j, a_bufs, b_bufs, ready_a, ready_b, d1, d1u, SILU_MUL, BLOCK_N,
                                     STAGES)
                    d0, d0u, acc, acc_u = _retire(it + j - 1, p0, p0u, acc, acc_u, empty, NMMA, SILU_MUL, STAGES)
                else:
                    p0, p0u = _issue(it + j, a_bufs, b_bufs, ready_a, ready_b, d0, d0u, SILU_MUL, BLOCK_N,
                                     STAGES)
                    d1, d1u, acc, acc_u = _retire(it + j - 1, p1, p1u, acc, acc_u, empty, NMMA, SILU_MUL, STAGES)
            d1, d1u, acc, acc_u = _retire(it + UNROLL - 1, p1, p1u, acc, acc_u, empty, 0, SILU_MUL, STAGES)
            it += UNROLL

        # epilogue
        row_l: gl.constexpr = gl.SliceLayout(1, layout)
        col_l: gl.constexpr = gl.SliceLayout(0, layout)
        slots = gl.load(sorted_ids_ptr + pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_l))
        live = slots < num_slots
        rows = slots // TOP_K
        expert = gl.load(expert_ids_ptr + pid_m).to(gl.int64)
        offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_l)
        cols = offs_n % N  # wrapped: the columns past N are never stored
        out = _epilogue(acc, acc_u, rows, slots, live, a_scale_ptr, w_scale_ptr, topk_weights_ptr, expert, cols, N,
                        stride_asm, stride_wse, stride_wsn, A_MODE, W_MODE, SILU_MUL, MUL_ROUTED_WEIGHT)
        # the store goes through shared memory into 16-byte runs along each output row (from the accumulator
        # layout a warp writes 4-byte pieces of 8 rows: 11% of DeepSeek-V3's GEMM2, 25% of a K=1024 GEMM on an H200)
        TPR: gl.constexpr = BLOCK_N // 8 if BLOCK_N // 8 < 32 else 32  # threads along a row
        st_l: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TPR, TPR], [8, 1], [1, 0])
        o = gl.convert_layout(out.to(c_ptr.dtype.element_ty), st_l)
        s_rows = gl.convert_layout(slots, gl.SliceLayout(1, st_l))
        s_cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, st_l))
        gl.store(c_ptr + s_rows.to(gl.int64)[:, None] * stride_cm + s_cols[None, :], o,
                 mask=(s_rows < num_slots)[:, None] & (s_cols[None, :] < N))


@gluon.jit
def gluon_moe_kernel(a_ptr, w_desc, c_ptr, a_scale_ptr, w_scale_ptr, topk_weights_ptr,
                     sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr,
                     N, K, num_slots, N_W, stride_am, stride_cm, stride_asm, stride_wse, stride_wsn,
                     TOP_K: gl.constexpr, A_MODE: gl.constexpr, W_MODE: gl.constexpr,
                     MUL_ROUTED_WEIGHT: gl.constexpr, SILU_MUL: gl.constexpr, BLOCK_M: gl.constexpr,
                     BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr, UNROLL: gl.constexpr,
                     A_LAYOUT: gl.constexpr):
    """``C[slot, n] = scales · Σ_k A[slot // TOP_K, k] · W[e, n, k]`` (module docstring). ``w_desc``: a TMA
    descriptor over W as ``[E·N_W, K]`` with ``[BLOCK_N, STEP_K]`` boxes; N_W = 2N with SILU_MUL (gate ‖ up)."""
    NB: gl.constexpr = 2 if SILU_MUL else 1
    a_bufs = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_M, STEP_K], A_LAYOUT)
    b_bufs = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, NB * BLOCK_N, STEP_K], w_desc.layout)
    ready_a = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    ready_b = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready_a.index(i), count=128)  # one cp.async arrival per loader thread
        mbarrier.init(ready_b.index(i), count=1)  # the TMA's expect-tx
        mbarrier.init(empty.index(i), count=1)  # the consumers: one arrive after their barrier
    gl.warp_specialize([
        (_consumer, (a_bufs, b_bufs, ready_a, ready_b, empty, c_ptr, a_scale_ptr, w_scale_ptr, topk_weights_ptr,
                     sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr, N, K, num_slots, stride_cm, stride_asm,
                     stride_wse, stride_wsn, TOP_K, A_MODE, W_MODE, MUL_ROUTED_WEIGHT, SILU_MUL, BLOCK_M, BLOCK_N,
                     GROUP_M, STAGES, UNROLL)),
        (_loader, (a_ptr, w_desc, a_bufs, b_bufs, ready_a, ready_b, empty, sorted_ids_ptr, expert_ids_ptr,
                   num_post_pad_ptr, N, K, num_slots, stride_am, N_W, TOP_K, SILU_MUL, BLOCK_M, BLOCK_N, GROUP_M,
                   STAGES)),
    ], [LOADER_WARPS], [LOADER_REGS])


GLUON_ENV = "MOEJIT_TRITON_GLUON"


def gluon_mode() -> str:
    """``MOEJIT_TRITON_GLUON``: ``1`` (default) runs this kernel where the config asks for it (``"gluon": 1``),
    ``0`` never, ``force`` / ``force64`` wherever it can run, with 128-row / 64-row tiles (the configs are
    rewritten by :func:`forced_configs`)."""
    raw = os.environ.get(GLUON_ENV, "1").strip().lower()
    if raw in ("", "1", "true", "on", "yes"):
        return "1"
    if raw in ("0", "false", "off", "no"):
        return "0"
    if raw in ("force", "force64"):
        return raw
    raise MoejitInputError(f"environment variable {GLUON_ENV}={raw!r}: use 1, 0, force or force64")


def _hopper(device: torch.device) -> bool:
    return device.type == "cuda" and _is_sm90(device.index if device.index is not None else
                                              torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _is_sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(index) == (9, 0)


def eligible(device: torch.device, dtype: torch.dtype, k: int, a_mode: int, w_mode: int) -> bool:
    """Whether this kernel can run a GEMM over a reduction of ``k``: an sm_90 GPU, e4m3 operands, ``k`` a
    multiple of 2·BLOCK_K (the consumer runs K steps in pairs), per-tensor/per-row × per-expert/per-channel
    scales."""
    return (_hopper(device) and dtype == torch.float8_e4m3fn
            and k % (2 * BLOCK_K) == 0 and a_mode in (A_TENSOR, A_ROW) and w_mode in (W_TENSOR, W_CHANNEL))


def layer_eligible(device: torch.device, dtype: torch.dtype, k: int, n: int, a_mode: int, w_mode: int) -> bool:
    """Whether this kernel can run both GEMMs of a layer: :func:`eligible` for GEMM1's reduction over the hidden
    size ``k`` and GEMM2's over the intermediate size ``n``."""
    return all(eligible(device, dtype, r, a_mode, w_mode) for r in (k, n))


def tile_fits(block_m: int, block_n: int, silu_mul: bool) -> bool:
    """Whether a ``block_m`` × ``block_n`` output tile (gate and up tiles of ``block_n`` columns each with
    ``silu_mul``) fits the consumers' registers: BLOCK_M 64 or 128, ``block_m · block_n · (2 if silu_mul else 1)``
    float32 values = :data:`TILE_VALUES` (each of 256 threads then holds 64 values of the sum and 2 × 64 of the
    partials in flight)."""
    return block_m in BLOCK_MS and block_m * block_n * (2 if silu_mul else 1) == TILE_VALUES


def use_gluon(a: torch.Tensor, w: torch.Tensor, a_mode: int, w_mode: int, config: dict,
              silu_mul: bool = False) -> bool:
    """Whether the layer runs this GEMM here: the config asks for it (``"gluon": 1``), the switch allows it,
    :func:`eligible`, and A's rows and W are contiguous. A config that asks for it with a tile that does not
    fit (:func:`tile_fits`) is an error, not a silent fallback."""
    if not config.get("gluon") or gluon_mode() == "0":
        return False
    if not (a.dtype == w.dtype and eligible(a.device, a.dtype, a.shape[1], a_mode, w_mode)
            and a.stride(1) == 1 and w.is_contiguous()):
        return False
    if not tile_fits(config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], silu_mul):
        raise MoejitInputError(
            f"config {config} asks for the Gluon kernel with a {config['BLOCK_SIZE_M']} x {config['BLOCK_SIZE_N']}"
            f"{' (gate + up)' if silu_mul else ''} tile: it runs BLOCK_SIZE_M 64 or 128 with BLOCK_SIZE_M x "
            f"BLOCK_SIZE_N{' x 2' if silu_mul else ''} = {TILE_VALUES}")
    return True


def forced_configs(config: dict, config2: dict, block_m: int = 128) -> tuple[dict, dict]:
    """The configs of ``MOEJIT_TRITON_GLUON=force``: both GEMMs here with ``block_m``-row tiles (128, or 64 with
    ``force64``) and the widest tile that fits (:func:`tile_fits`), 4 stages, GROUP_SIZE_M 8."""
    base = dict(BLOCK_SIZE_M=block_m, GROUP_SIZE_M=8, gluon=1, gluon_stages=4)
    bn = TILE_VALUES // block_m
    return {**config, **base, "BLOCK_SIZE_N": bn // 2}, {**config2, **base, "BLOCK_SIZE_N": bn}


def unroll(k: int) -> int:
    """K steps a consumer iteration (one wgmma drain each): the largest of 8, 4, 2 that divides K / BLOCK_K."""
    steps = k // BLOCK_K
    return next(u for u in (8, 4, 2) if steps % u == 0)


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def invoke_gluon_moe_gemm(a: torch.Tensor, w: torch.Tensor, c: torch.Tensor, a_scale: torch.Tensor,
                          w_scale: torch.Tensor, topk_weights: torch.Tensor | None, align: Alignment, top_k: int,
                          a_mode: int, w_mode: int, config: dict, silu_mul: bool = False) -> torch.Tensor:
    """:func:`moejit.triton.fused_moe.invoke_fused_moe_gemm`'s contract on :func:`gluon_moe_kernel` (check
    :func:`use_gluon` first; the alignment's block size must be the config's BLOCK_SIZE_M). Config keys used:
    ``BLOCK_SIZE_M`` and ``BLOCK_SIZE_N`` (:func:`tile_fits`), ``GROUP_SIZE_M``, ``gluon_stages``."""
    num_slots, n = c.shape
    e, n_w, k = w.shape
    bm, bn = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"]
    assert n_w == (2 * n if silu_mul else n) and a.shape[1] == k and tile_fits(bm, bn, silu_mul)
    assert align.sorted_ids.shape[0] % bm == 0
    stages = config.get("gluon_stages", 4)
    if stages > MAX_STAGES[bm]:
        raise MoejitInputError(f"config {config}: gluon_stages {stages} does not fit shared memory with "
                               f"BLOCK_SIZE_M {bm} (at most {MAX_STAGES[bm]})")
    w_layout = gl.NVMMASharedLayout.get_default_for([bn, BLOCK_K], gl.float8e4nv)
    w_desc = TensorDescriptor(w.view(e * n_w, k), [e * n_w, k], [k, 1], [bn, BLOCK_K], w_layout)
    a_layout = gl.NVMMASharedLayout.get_default_for([bm, BLOCK_K], gl.float8e4nv)
    ws = w_scale.reshape(e, -1)
    num_tiles = align.expert_ids.shape[0] * triton.cdiv(n, bn)  # an upper bound: the padded length is on the GPU
    grid = (max(1, min(_num_sms(a.device.index or 0), num_tiles)),)
    gluon_moe_kernel[grid](
        a, w_desc, c, a_scale, ws, topk_weights if topk_weights is not None else c,
        align.sorted_ids, align.expert_ids, align.num_post_pad,
        n, k, num_slots, n_w, a.stride(0), c.stride(0),
        a_scale.stride(0) if a_mode == A_ROW else 0, ws.stride(0), ws.stride(1) if w_mode == W_CHANNEL else 0,
        TOP_K=top_k, A_MODE=a_mode, W_MODE=w_mode, MUL_ROUTED_WEIGHT=topk_weights is not None, SILU_MUL=silu_mul,
        BLOCK_M=bm, BLOCK_N=bn, GROUP_M=config.get("GROUP_SIZE_M", 1), STAGES=stages, UNROLL=unroll(k),
        A_LAYOUT=a_layout, num_warps=CONSUMER_WARPS, maxnreg=MAXNREG,
    )
    return c
