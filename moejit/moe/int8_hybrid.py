"""The INT8 hybrid blockwise MoE layer (seed 003): CUTLASS INT8 hybrid grouped GEMMs (SM80 kernels; TMA + wgmma ones
on Hopper) around Triton Q/F quantizers.

Pipeline of :func:`cutlass_moe_int8_hybrid` (nothing synchronizes with the host; CUDA-graph capturable)::

    quant → permute     int8_hybrid_quant(hidden) → moe_permute(xq)    (fused_permute_quant=False: the M token
                        + Q, F gathered per row                         rows quantized, their int8 copies sorted)
    permute+quant       int8_hybrid_permute_quant(hidden, …)            (fused_permute_quant=True: one kernel,
                                                                         each token row quantized once, written
                                                                         to its slots)
    GEMM1  int8_hybrid_grouped_mm(xq, Q, F, w13_q, w13_scale[, a_rows=sort_idx])  → [rows, 2N] in hidden.dtype
    act    int8_hybrid_silu_quant(h)                            (fused_silu_quant=True)
           or silu_and_mul(h) → int8_hybrid_quant               (fused_silu_quant=False)
    GEMM2  int8_hybrid_grouped_mm(…, w2_q, w2_scale)            → [rows, K]
    out    moe_unpermute(rows, topk_weights, inv_idx)           weighted reduce, float32 accumulate

The unfused path quantizes before it permutes. The quantization is a function of each row alone, so every
permuted copy of a token row has that row's int8 values, Q and F: quantizing the ``M`` token rows and copying the
int8 rows (with their Q and F) to the slots gives the same bytes as the seed's order (copy the 16-bit rows to
the ``M·topk`` slots, then quantize every copy) with a quarter of the traffic: the only ``M·topk``-row copy is
the int8 one (at Qwen3.6-35B-A3B M=8192 it moves ~200 MB instead of ~670 MB). The fused path needs only the permutation,
not permuted rows: it calls the common module's ``moe_permute`` with a zero-width ``[M, 0]`` hidden tensor,
which runs the same sort, expert offsets and inverse map and copies no rows (so the sort is identical to the
unfused path's).

``MOEJIT_INT8_HYBRID_GATHER=1`` (a benchmarking switch, default 0) has the unfused path copy no int8 rows either:
it sorts with the zero-width ``moe_permute`` and GEMM1 reads the token rows through ``sort_idx``
(``int8_hybrid_grouped_mm(..., a_rows=sort_idx, a_rows_div=topk)``). The same bytes reach the GEMM (bit-identical
output), but on an H200 the SM90 kernel's gathering producer made GEMM1 37% slower than the row copy it saves
(``docs/int8_gemm.md``), so it is off.

Super groups: the layer passes the *effective* super group ``S_eff = min(super_group_size, safe)`` (see
:mod:`moejit.int8.format`) to both quantizers and GEMMs, so a requested super group longer than the overflow-safe
length is split into safe pieces, each with its own F; the int32 accumulators cannot overflow.

Switch defaults (arguments left ``None``) come from the environment at call time:
``MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT`` (default 1) and ``MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT`` (default 0);
the seed's ``VLLM_INT8_HYBRID_FUSED_SILU_QUANT`` / ``VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT`` are accepted too, and
the ``MOEJIT_`` name wins when both are set. Values: 1/0, true/false, yes/no, on/off (case-insensitive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from moejit.envflags import env_flag
from moejit.errors import MoejitInputError
from moejit.int8.format import HybridFormat

ENV_FUSED_SILU_QUANT = ("MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT", "VLLM_INT8_HYBRID_FUSED_SILU_QUANT")
ENV_FUSED_PERMUTE_QUANT = ("MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT", "VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT")
ENV_GATHER = ("MOEJIT_INT8_HYBRID_GATHER",)  # the unfused front end without a row copy (module docstring)

# The hybrid grouped GEMM. None: ``moejit.ops.int8.int8_hybrid_grouped_mm`` (the CUTLASS op), imported on first
# use. Tests may set this to a torch implementation of the same contract.
_hybrid_grouped_mm = None


def resolve_switches(fused_silu_quant: bool | None = None, fused_permute_quant: bool | None = None):
    """``(fused_silu_quant, fused_permute_quant)``: explicit arguments win, else the environment, else (True,
    False)."""
    silu = env_flag(ENV_FUSED_SILU_QUANT, True) if fused_silu_quant is None else bool(fused_silu_quant)
    perm = env_flag(ENV_FUSED_PERMUTE_QUANT, False) if fused_permute_quant is None else bool(fused_permute_quant)
    return silu, perm


def _grouped_mm():
    if _hybrid_grouped_mm is not None:
        return _hybrid_grouped_mm
    try:
        from moejit.ops.int8 import int8_hybrid_grouped_mm
    except ImportError as exc:  # the CUTLASS INT8 module is not part of this build
        raise MoejitInputError("cutlass_moe_int8_hybrid needs moejit.ops.int8.int8_hybrid_grouped_mm (the "
                               f"sm80_int8 module), which is not available: {exc}") from exc
    return int8_hybrid_grouped_mm


def _channel_scale(name: str, scale, num_experts: int, n_out: int) -> torch.Tensor:
    """Accept ``[E, N_out]`` / ``[E, N_out, 1]`` float32 per-channel scales, or ``[E]`` / ``[E, 1]`` / ``[E, 1, 1]``
    per-expert scales (broadcast to ``[E, N_out]``); returns a contiguous ``[E, N_out]`` tensor."""
    from moejit.ops import _validate

    _validate.check_tensor(name, scale, dtypes=(torch.float32,))
    shape = tuple(scale.shape)
    if shape[:2] == (num_experts, n_out) and all(d == 1 for d in shape[2:]):
        return scale.reshape(num_experts, n_out).contiguous()
    if scale.numel() == num_experts and shape and shape[0] == num_experts:
        return scale.reshape(num_experts, 1).expand(num_experts, n_out).contiguous()
    raise MoejitInputError(f"{name} must be float32 [E, N_out] = [{num_experts}, {n_out}] per output channel "
                           f"(or [E] per expert), got shape {shape}")


def check_hybrid_layer(hidden, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, fmt: HybridFormat):
    """The argument checks of both hybrid layers (this runner and :func:`moejit.ops.triton_moe_int8_hybrid`).
    Returns ``(shape, K, w13_scale [E, 2N], w2_scale [E, K])`` with the scales made contiguous per channel."""
    # Imported here, not at the top: moejit.ops re-exports this module (see moejit.int8.quant).
    from moejit.moe import checks
    from moejit.ops import _validate

    shape = checks.check_moe_weights(hidden, w13_q, w2_q, checks.INT8)
    num_experts, k, n = shape.num_experts, shape.k, shape.n
    checks.check_routing(hidden, topk_weights, topk_ids, num_experts)
    if k % fmt.block_size or n % fmt.block_size:
        raise MoejitInputError(f"hidden size K = {k} and intermediate size N = {n} must be multiples of "
                               f"block_size {fmt.block_size}")
    w13_s = _channel_scale("w13_scale", w13_scale, num_experts, 2 * n)
    w2_s = _channel_scale("w2_scale", w2_scale, num_experts, k)
    _validate.check_same_device(hidden=hidden, w13_scale=w13_s, w2_scale=w2_s)
    return shape, k, w13_s, w2_s


def cutlass_moe_int8_hybrid(hidden: torch.Tensor, w13_q: torch.Tensor, w2_q: torch.Tensor,
                            w13_scale: torch.Tensor, w2_scale: torch.Tensor, topk_weights: torch.Tensor,
                            topk_ids: torch.Tensor, *, block_size: int = 128, super_group_size: int = 256,
                            q_max: int = 16, fused_silu_quant: bool | None = None,
                            fused_permute_quant: bool | None = None) -> torch.Tensor:
    """One MoE layer with INT8 hybrid blockwise activations and INT8 per-channel weights.

    Args:
        hidden: ``[M, K]`` bf16/fp16 activations.
        w13_q: ``[E, 2N, K]`` int8 in [-127, 127] (gate ‖ up); ``w13_scale``: float32 ``[E, 2N]`` (see
            :func:`moejit.ops.quantize_weights_int8`). Symmetric weights only: the int32 overflow bound assumes
            |w| ≤ 127, and -128 is not checked (it would cost a pass over the weights every call).
        w2_q: ``[E, K, N]`` int8 in [-127, 127]; ``w2_scale``: float32 ``[E, K]``.
        topk_weights, topk_ids: ``[M, topk]`` routing; ids outside ``[0, E)`` (e.g. -1) are dropped slots.
        block_size, super_group_size, q_max: the Q/F format (B, requested S, q_max); K and N must be multiples
            of B. A super group longer than the overflow-safe length is split (module docstring).
        fused_silu_quant, fused_permute_quant: pipeline switches; None reads the environment (module docstring).

    Returns ``[M, K]`` in ``hidden.dtype``. Nothing synchronizes with the host (the id range check of
    :mod:`moejit.moe.checks` runs only in eager mode), so the layer captures into CUDA graphs.
    """
    fmt = HybridFormat(block_size, super_group_size, q_max)
    _, k, w13_s, w2_s = check_hybrid_layer(hidden, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, fmt)
    fused_silu, fused_perm = resolve_switches(fused_silu_quant, fused_permute_quant)

    m = hidden.shape[0]
    if m == 0:
        return hidden.new_empty((0, k))
    return hybrid_stages(hidden, w13_q, w2_q, w13_s, w2_s, topk_weights, topk_ids, fmt, fused_silu, fused_perm)()


# ---------------------------------------------------------------------------------------------------------------
# The pipeline as stages: what the runner runs, and what `moejit bench-int8` times stage by stage
# ---------------------------------------------------------------------------------------------------------------

def stage_names(fused_permute_quant: bool, fused_silu_quant: bool) -> list[str]:
    """The hybrid runner's stages for one switch setting, in order."""
    first = ["permute+quant (fused)"] if fused_permute_quant else ["quant", "permute"]
    act = ["SiLU+quant (fused)"] if fused_silu_quant else ["SiLU·mul", "quant"]
    return first + ["GEMM1"] + act + ["GEMM2", "unpermute"]


@dataclass
class StagedForward:
    """The hybrid pipeline as a list of ``(name, fn)`` stages sharing :attr:`state`; calling it runs them in order
    (this is how :func:`moejit.ops.cutlass_moe_int8_hybrid` runs) and returns ``state["out"]``."""

    stages: list[tuple[str, Callable[[], None]]]
    state: dict = field(default_factory=dict)

    def __call__(self, mark: Callable[[int], None] | None = None) -> torch.Tensor:
        """Run every stage; ``mark(i)`` is called before stage 0 (i = 0) and after stage i - 1 (i = 1 … n)."""
        if mark is not None:
            mark(0)
        for i, (_, fn) in enumerate(self.stages):
            fn()
            if mark is not None:
                mark(i + 1)
        return self.state["out"]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.stages]


def hybrid_stages(hidden, w13_q, w2_q, w13_scale, w2_scale, topk_weights, topk_ids, fmt: HybridFormat,
                  fused_silu_quant: bool, fused_permute_quant: bool) -> StagedForward:
    """The runner's pipeline on validated inputs (``w13_scale [E, 2N]``, ``w2_scale [E, K]`` float32, ``M > 0``)
    as ``(name, fn)`` stages (see :func:`stage_names`); calling the result runs them in order and returns the
    ``[M, K]`` output."""
    # Imported here, not at the top: moejit.ops re-exports this module (see moejit.int8.quant).
    from moejit.int8.quant import (int8_hybrid_permute_quant, int8_hybrid_permute_scales, int8_hybrid_quant,
                                   int8_hybrid_silu_quant)
    from moejit.ops import common

    b, s, qm, s_eff = fmt.block_size, fmt.super_group_size, fmt.q_max, fmt.s_eff
    m = hidden.shape[0]
    num_experts = w13_q.shape[0]
    topk = topk_ids.shape[1]
    dtype = hidden.dtype
    mm = _grouped_mm()
    gather = not fused_permute_quant and env_flag(ENV_GATHER, False)
    st: dict = {}
    stages: list[tuple[str, Callable[[], None]]] = []

    if fused_permute_quant:
        def permute_quant():
            # the permutation only: a zero-width hidden runs the same sort and copies nothing (module docstring)
            _, st["offsets"], sort_idx, st["inv_idx"] = common.moe_permute(hidden.new_empty((m, 0)), topk_ids,
                                                                           num_experts)
            st["a1"] = int8_hybrid_permute_quant(hidden, sort_idx, topk, b, s, qm, inv_idx=st["inv_idx"])
        stages.append(("permute+quant (fused)", permute_quant))
    else:
        def quant():
            st["tokens"] = int8_hybrid_quant(hidden, b, s, qm)

        def permute():
            # the token rows' int8 copies (or, gathering, only the sort: GEMM1 reads the token rows through
            # sort_idx), and the Q and F rows of the token each permuted row copies (module docstring: the same
            # bytes as quantizing the permuted 16-bit rows)
            xq, q, f = st.pop("tokens")
            rows, st["offsets"], sort_idx, st["inv_idx"] = common.moe_permute(
                hidden.new_empty((m, 0)) if gather else xq, topk_ids, num_experts)
            st["a1"] = (xq if gather else rows, *int8_hybrid_permute_scales(q, f, sort_idx, topk))
            st["a1_rows"] = sort_idx
        stages += [("quant", quant), ("permute", permute)]

    def gemm1():
        a1, a1_q, a1_f = st["a1"]
        rows = {"a_rows": st["a1_rows"], "a_rows_div": topk} if gather else {}
        st["h"] = mm(a1, a1_q, a1_f, w13_q, w13_scale, st["offsets"], b, s_eff, qm, dtype, **rows)
    stages.append(("GEMM1", gemm1))

    if fused_silu_quant:
        def silu_quant():
            st["a2"] = int8_hybrid_silu_quant(st["h"], b, s, qm)
        stages.append(("SiLU+quant (fused)", silu_quant))
    else:
        def silu():
            st["act"] = common.silu_and_mul(st["h"])

        def quant2():
            st["a2"] = int8_hybrid_quant(st["act"], b, s, qm)
        stages += [("SiLU·mul", silu), ("quant", quant2)]

    def gemm2():
        a2, a2_q, a2_f = st["a2"]
        st["y"] = mm(a2, a2_q, a2_f, w2_q, w2_scale, st["offsets"], b, s_eff, qm, dtype)
    stages.append(("GEMM2", gemm2))

    def unpermute():
        st["out"] = common.moe_unpermute(st["y"], topk_weights, st["inv_idx"])
    stages.append(("unpermute", unpermute))
    return StagedForward(stages, st)
