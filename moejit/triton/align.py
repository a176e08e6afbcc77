"""Block alignment for the fused MoE GEMM, on the device and CUDA-graph capturable.

From ``topk_ids [M, topk]`` it builds what the fused kernel walks over:

- ``sorted_ids [max_padded]`` int32: slot indices ``m * topk + j`` grouped by expert, each expert's run padded to a
  multiple of ``block_m`` with the sentinel ``M * topk`` (the kernel masks rows ``>= M * topk``);
- ``expert_ids [max_padded / block_m]`` int32: the expert of each block of ``block_m`` sorted slots;
- ``num_post_pad [1]`` int32: the padded total actually used (a multiple of ``block_m``).

Output buffers are sized for the worst case ``max_padded = M*topk + E*(block_m - 1)`` (rounded up to a whole block)
so nothing depends on the data and no host synchronization is needed. Ids outside ``[0, E)`` (``-1`` marks a slot
routed to no local expert) are dropped. Within one expert the order of slots is not specified (chunks claim their
ranges with atomics); every row of the GEMM is computed independently, so results do not depend on it.

The CUDA twin, :func:`moejit.ops.moe_align_block_size` (``kernels_src/align.cu``), has the same contract;
``MOEJIT_ALIGN=cuda`` makes :func:`align_block_size` use it (default ``triton``), and ``scripts/bench_triton_fp8.py
--align`` times both.

Two launches plus one memset: per-chunk histograms accumulated into ``counts``; then every program recomputes the
padded offsets from the counts, writes its share of the block → expert map, and scatters its chunk (ranks within a
chunk from a comparison matrix, the chunk's base inside each expert's run from one vector atomic per chunk).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

_CHUNK = 128  # slots per program in the count/scatter kernels (the rank matrix is _CHUNK × _CHUNK)
_SCAN_BLOCKS = 64  # entries of the block → expert map written per program


class Alignment(NamedTuple):
    sorted_ids: torch.Tensor  # [max_padded] int32
    expert_ids: torch.Tensor  # [max_blocks] int32
    num_post_pad: torch.Tensor  # [1] int32


def max_padded_size(num_slots: int, num_experts: int, block_m: int) -> int:
    """Worst-case length of ``sorted_ids``: every expert may need ``block_m - 1`` pad slots; whole blocks."""
    from moejit.ops.common import align_max_padded

    return align_max_padded(num_slots, num_experts, block_m)


def align_impl() -> str:
    """``"triton"`` (default) or ``"cuda"``, from ``MOEJIT_ALIGN``."""
    impl = os.environ.get("MOEJIT_ALIGN", "triton").strip().lower() or "triton"
    if impl not in ("triton", "cuda"):
        raise ValueError(f"MOEJIT_ALIGN must be 'triton' or 'cuda', got {impl!r}")
    return impl


@triton.jit
def _align_count_kernel(ids_ptr, counts_ptr, sorted_ids_ptr, num_slots, num_experts, max_padded,
                        CHUNK: tl.constexpr, E_POW2: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * CHUNK + tl.arange(0, CHUNK)
    # every program also pre-fills its slice of sorted_ids with the sentinel; the scatter overwrites real slots
    tl.store(sorted_ids_ptr + offs, tl.full((CHUNK,), 0, tl.int32) + num_slots, mask=offs < max_padded)
    raw = tl.load(ids_ptr + offs, mask=offs < num_slots, other=-1)  # int32 or int64: compare before narrowing
    valid = (raw >= 0) & (raw < num_experts)
    hist = tl.histogram(tl.where(valid, raw, 0).to(tl.int32), E_POW2, mask=valid)
    bins = tl.arange(0, E_POW2)
    tl.atomic_add(counts_ptr + bins, hist, mask=(bins < num_experts) & (hist > 0), sem="relaxed")


@triton.jit
def _align_place_kernel(ids_ptr, counts_ptr, fill_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr,
                        num_slots, num_experts, max_blocks, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
                        E_POW2: tl.constexpr, SCAN_BLOCKS: tl.constexpr):
    """Every program recomputes the padded offsets from the (finished) counts — E values, cheaply — then writes
    its share of the block → expert map and scatters its chunk of slots."""
    pid = tl.program_id(0)
    e = tl.arange(0, E_POW2)
    counts = tl.load(counts_ptr + e, mask=e < num_experts, other=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total = tl.sum(padded, axis=0)
    if pid == 0:
        tl.store(num_post_pad_ptr, total)
    # block b belongs to expert #{e : ends[e] <= b * BLOCK_M}; blocks past the total get -1 (never read: the GEMM
    # stops at num_post_pad)
    b = pid * SCAN_BLOCKS + tl.arange(0, SCAN_BLOCKS)
    ends_valid = tl.where(e < num_experts, ends, 2147483647)
    expert = tl.sum((ends_valid[None, :] <= (b * BLOCK_M)[:, None]).to(tl.int32), axis=1)
    expert = tl.where(b * BLOCK_M < total, expert, -1)
    tl.store(expert_ids_ptr + b, expert, mask=b < max_blocks)

    idx = tl.arange(0, CHUNK)
    offs = pid * CHUNK + idx
    raw = tl.load(ids_ptr + offs, mask=offs < num_slots, other=-1)
    valid = (raw >= 0) & (raw < num_experts)
    safe = tl.where(valid, raw, 0).to(tl.int32)
    hist = tl.histogram(safe, E_POW2, mask=valid)
    # one vector atomic claims this chunk's range inside every expert's run
    base = tl.atomic_add(fill_ptr + e, hist, mask=(e < num_experts) & (hist > 0), sem="relaxed")
    base = tl.where(hist > 0, base, 0) + starts
    # rank of each slot among the earlier slots of this chunk routed to the same expert
    same = (safe[:, None] == safe[None, :]) & (idx[None, :] < idx[:, None]) & valid[None, :]
    rank = tl.sum(same.to(tl.int32), axis=1)
    pos = tl.gather(base, safe, 0) + rank
    tl.store(sorted_ids_ptr + pos, offs, mask=valid)


def align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int, impl: str | None = None) -> Alignment:
    """Sort the slots of ``topk_ids`` by expert, padded per expert to ``block_m`` (see the module docstring).
    ``impl``: ``"triton"`` or ``"cuda"`` (:func:`moejit.ops.moe_align_block_size`); None reads ``MOEJIT_ALIGN``."""
    if block_m < 1 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two, got {block_m}")
    if impl is None:
        impl = align_impl()
    elif impl not in ("triton", "cuda"):
        raise ValueError(f"impl must be 'triton' or 'cuda', got {impl!r}")
    if impl == "cuda":
        from moejit.ops.common import moe_align_block_size

        return Alignment(*moe_align_block_size(topk_ids.contiguous(), num_experts, block_m))
    device = topk_ids.device
    ids = topk_ids.reshape(-1)
    num_slots = ids.numel()
    max_padded = max_padded_size(num_slots, num_experts, block_m)
    sorted_ids = torch.empty(max_padded, dtype=torch.int32, device=device)
    expert_ids = torch.empty(max_padded // block_m, dtype=torch.int32, device=device)
    num_post_pad = torch.empty(1, dtype=torch.int32, device=device)
    scratch = torch.zeros(2 * num_experts, dtype=torch.int32, device=device)  # counts ‖ fill cursors
    counts, fill = scratch[:num_experts], scratch[num_experts:]
    e_pow2 = triton.next_power_of_2(max(num_experts, 2))
    max_blocks = max_padded // block_m
    _align_count_kernel[(triton.cdiv(max_padded, _CHUNK),)](
        ids, counts, sorted_ids, num_slots, num_experts, max_padded, CHUNK=_CHUNK, E_POW2=e_pow2, num_warps=4)
    grid = max(triton.cdiv(num_slots, _CHUNK), triton.cdiv(max_blocks, _SCAN_BLOCKS))
    _align_place_kernel[(grid,)](ids, counts, fill, sorted_ids, expert_ids, num_post_pad, num_slots, num_experts,
                                 max_blocks, BLOCK_M=block_m, CHUNK=_CHUNK, E_POW2=e_pow2,
                                 SCAN_BLOCKS=_SCAN_BLOCKS, num_warps=4)
    return Alignment(sorted_ids, expert_ids, num_post_pad)


def align_block_size_ref(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Torch reference (host logic): per-expert slot lists in slot order, padded; returns the same three tensors
    with a canonical (stable) order within each expert."""
    ids = topk_ids.reshape(-1).long().cpu()
    num_slots = ids.numel()
    max_padded = max_padded_size(num_slots, num_experts, block_m)
    sorted_ids = torch.full((max_padded,), num_slots, dtype=torch.int32)
    expert_ids = torch.full((max_padded // block_m,), -1, dtype=torch.int32)
    pos = 0
    for e in range(num_experts):
        slots = torch.nonzero(ids == e).flatten()
        n = slots.numel()
        padded = -(-n // block_m) * block_m
        sorted_ids[pos:pos + n] = slots.int()
        expert_ids[pos // block_m:(pos + padded) // block_m] = e
        pos += padded
    return sorted_ids, expert_ids, torch.tensor([pos], dtype=torch.int32)
