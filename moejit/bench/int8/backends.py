"""What ``moejit bench-int8`` compares, and its parameters: pure Python (no torch at import), CPU-testable.

Backends (``--backends``; all by default), each a :class:`~moejit.bench.backends.Backend` over one weight layout:

=============  ==========================================================  ===============  =========
name           layer                                                       weights          needs
=============  ==========================================================  ===============  =========
hybrid         ``cutlass_moe_int8_hybrid`` (the seed's runner; Q/F acts)   int8 per-channel sm_80+
cutlass-pt     CUTLASS INT8 grouped GEMMs, dynamic per-tensor activations  int8 per-channel sm_80+
triton         ``triton_moe_int8``, per-token × per-channel (the baseline) int8 per-channel sm_80+
triton-block   ``triton_moe_int8``, 1×128 act groups × 128×128 blocks      int8 128×128     sm_80+
triton-hybrid  ``triton_moe_int8_hybrid`` (Q/F acts on the fused kernels)  int8 per-channel sm_80+
cutlass-fp8    ``cutlass_moe_fp8``, per-token × per-channel                fp8 per-channel  sm_90 only
triton-fp8     ``triton_moe_fp8``, per-token × per-channel                 fp8 per-channel  sm_89+
=============  ==========================================================  ===============  =========

Speedups are against ``triton`` (:func:`moejit.bench.report.baseline_backend`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

from moejit.bench.backends import OpBackend, QuantOpts
from moejit.errors import MoejitError

# weight layouts (keys of Int8Inputs.variants)
FLOAT, INT8_CHANNEL, INT8_BLOCK, FP8_CHANNEL = "float", "int8_channel", "int8_block", "fp8_channel"
BLOCK_SHAPE = (128, 128)

ENV_HELP = ("MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT (default 1) / MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT (default 0); "
            "the seed's VLLM_INT8_HYBRID_* names are accepted")


@dataclass(frozen=True)
class Int8Params:
    """The hybrid format and pipeline switches of one run (the seed's options)."""

    block_size: int = 128
    super_group_size: int = 256
    q_max: int = 16
    fused_silu_quant: bool = True
    fused_permute_quant: bool = False

    @property
    def s_eff(self) -> int:
        from moejit.int8.format import effective_super_group

        return effective_super_group(self.block_size, self.super_group_size, self.q_max)

    def check(self) -> None:
        """Raise :class:`moejit.errors.MoejitInputError` unless (B, S, q_max) is a valid hybrid format."""
        from moejit.int8.format import check_params

        check_params(self.block_size, self.super_group_size, self.q_max)

    def describe(self) -> str:
        return (f"Q/F B={self.block_size} S={self.super_group_size} (S_eff={self.s_eff}) q_max={self.q_max}; "
                f"fused permute+quant {'on' if self.fused_permute_quant else 'off'}, fused SiLU+quant "
                f"{'on' if self.fused_silu_quant else 'off'}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["super_group_size_eff"] = self.s_eff
        return d


def resolve_params(block_size: int, super_group_size: int, q_max: int, fused_silu_quant: bool | None,
                   fused_permute_quant: bool | None) -> Int8Params:
    """The run's parameters: switches given on the command line win, else the runner's environment variables
    (:func:`moejit.moe.int8_hybrid.resolve_switches`), else fused SiLU on, fused permute off. Raises
    :class:`moejit.errors.MoejitInputError` for an invalid format or a non-boolean environment value."""
    from moejit.moe.int8_hybrid import resolve_switches

    silu, perm = resolve_switches(fused_silu_quant, fused_permute_quant)
    params = Int8Params(block_size, super_group_size, q_max, silu, perm)
    params.check()
    return params


# ---------------------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackendSpec:
    name: str
    label: str
    variant: str
    act_scales: str        # CellResult.act_scales: how the activations are quantized
    per_act_token: bool
    per_out_ch: bool
    locations: tuple[str, ...]
    min_cc: tuple[int, int] = (8, 0)
    max_cc: tuple[int, int] | None = None
    cc_reason: str = ""


SPECS: tuple[BackendSpec, ...] = (
    BackendSpec("hybrid", "CUTLASS INT8 hybrid", INT8_CHANNEL, "hybrid Q/F 1×B", False, True,
                ("moejit.moe.int8_hybrid:cutlass_moe_int8_hybrid",),
                cc_reason="the CUTLASS INT8 grouped GEMMs need compute capability 8.0+"),
    BackendSpec("cutlass-pt", "CUTLASS INT8 per-tensor", INT8_CHANNEL, "dynamic per-tensor", False, True,
                ("moejit.bench.int8.layers:cutlass_moe_int8_per_tensor",),
                cc_reason="the CUTLASS INT8 grouped GEMMs need compute capability 8.0+"),
    BackendSpec("triton", "Triton INT8 tok×ch", INT8_CHANNEL, "dynamic per-token", True, True,
                ("moejit.ops:triton_moe_int8", "moejit.moe.triton_int8:triton_moe_int8"),
                cc_reason="int8 tl.dot needs compute capability 8.0+"),
    BackendSpec("triton-block", "Triton INT8 block", INT8_BLOCK, "dynamic 1×128 groups", False, False,
                ("moejit.ops:triton_moe_int8", "moejit.moe.triton_int8:triton_moe_int8"),
                cc_reason="int8 tl.dot needs compute capability 8.0+"),
    BackendSpec("triton-hybrid", "Triton INT8 hybrid", INT8_CHANNEL, "hybrid Q/F 1×B", False, True,
                ("moejit.ops:triton_moe_int8_hybrid", "moejit.moe.triton_int8:triton_moe_int8_hybrid"),
                cc_reason="int8 tl.dot needs compute capability 8.0+"),
    BackendSpec("cutlass-fp8", "CUTLASS FP8 tok×ch", FP8_CHANNEL, "dynamic per-token", True, True,
                ("moejit.ops:cutlass_moe_fp8", "moejit.moe.cutlass_fp8:cutlass_moe_fp8"), (9, 0), (10, 0),
                "the CUTLASS FP8 grouped GEMM is SM90 only"),
    BackendSpec("triton-fp8", "Triton FP8 tok×ch", FP8_CHANNEL, "dynamic per-token", True, True,
                ("moejit.ops:triton_moe_fp8", "moejit.moe.triton_fp8:triton_moe_fp8"), (8, 9), None,
                "FP8 tensor cores need compute capability 8.9+"),
)
BACKEND_NAMES: tuple[str, ...] = tuple(s.name for s in SPECS)
LABELS: dict[str, str] = {s.name: s.label for s in SPECS}


class Int8Backend(OpBackend):
    """An :class:`~moejit.bench.backends.OpBackend` (lazy import, compute-capability gate) whose callable takes
    the cell's inputs in its own weight layout (``spec.variant``) and, for the hybrid runner, the run's
    :class:`Int8Params`."""

    def __init__(self, spec: BackendSpec, params: Int8Params):
        super().__init__(spec.name, spec.label, spec.locations, spec.min_cc, spec.max_cc, spec.cc_reason)
        self.spec, self.params = spec, params

    def prepare(self, inputs, quant: QuantOpts | None = None) -> Callable[[], object]:
        fn, reason = self._resolve()
        if fn is None:
            raise MoejitError(reason)
        return make_call(self.spec, fn, inputs, self.params)


def make_call(spec: BackendSpec, fn, x, params: Int8Params) -> Callable[[], object]:
    """The zero-argument call of ``fn`` on the cell's inputs ``x`` (an ``Int8Inputs``) in ``spec``'s layout."""
    w1, w2, s1, s2 = x.variants[spec.variant]
    a, tw, ids = x.a, x.topk_weights, x.topk_ids
    if spec.name == "hybrid":
        p = params
        return lambda: fn(a, w1, w2, s1, s2, tw, ids, block_size=p.block_size, super_group_size=p.super_group_size,
                          q_max=p.q_max, fused_silu_quant=p.fused_silu_quant,
                          fused_permute_quant=p.fused_permute_quant)
    if spec.name == "triton-hybrid":
        p = params
        return lambda: fn(a, w1, w2, s1, s2, tw, ids, block_size=p.block_size, super_group_size=p.super_group_size,
                          q_max=p.q_max)
    if spec.name == "cutlass-pt":
        return lambda: fn(a, w1, w2, s1, s2, tw, ids)
    if spec.variant == INT8_BLOCK:
        return lambda: fn(a, w1, w2, tw, ids, s1, s2, block_shape=BLOCK_SHAPE)
    return lambda: fn(a, w1, w2, tw, ids, s1, s2, per_act_token=spec.per_act_token, per_out_ch=spec.per_out_ch)


def get_int8_backends(names: Iterable[str], params: Int8Params) -> list[Int8Backend]:
    """Backends by name (case-insensitive, order of :data:`BACKEND_NAMES` kept); an unknown name is a
    :class:`MoejitError` listing the known ones."""
    wanted = []
    for name in names:
        key = name.strip().lower()
        if key not in BACKEND_NAMES:
            raise MoejitError(f"unknown backend {name!r}; known backends: {', '.join(BACKEND_NAMES)}")
        wanted.append(key)
    return [Int8Backend(s, params) for s in SPECS if s.name in wanted]


def variants_needed(backends: Sequence) -> list[str]:
    """The weight layouts the chosen backends read (the float weights are always kept for the reference)."""
    out = []
    for b in backends:
        v = b.spec.variant
        if v not in out:
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Shapes and the plan
# ---------------------------------------------------------------------------------------------------------------

def cli_shape(num_experts: int, topk: int, hidden: int, intermediate: int):
    """The shape of ``--num-experts/--top-k/--hidden/--intermediate``, named after the registered model with the
    same numbers (the defaults are Qwen3.6-35B-A3B's), else ``custom``."""
    from moejit.bench.models import MODELS, ModelShape

    for shape in MODELS.values():
        if (shape.num_experts, shape.topk, shape.hidden, shape.intermediate) == (num_experts, topk, hidden,
                                                                                 intermediate):
            return shape
    return ModelShape("custom", num_experts, topk, hidden, intermediate, source="command line")


def weight_bytes_int8(shape, variants: Sequence[str]) -> int:
    """Bytes of the weights a run keeps per shape: the float weights (bf16, the reference's) and each layout."""
    elems = shape.weight_elements()
    e, n, k = shape.num_experts, shape.intermediate, shape.hidden
    total = 2 * elems  # float weights, bf16
    for v in variants:
        if v == INT8_BLOCK:
            scales = e * (-(-2 * n // 128) * -(-k // 128) + -(-k // 128) * -(-n // 128)) * 4
        else:
            scales = e * (2 * n + k) * 4
        total += elems + scales
    return total


def shape_problems(shape, params: Int8Params, backend_names: Sequence[str]) -> list[str]:
    """Why some backends cannot run a shape (K or N not a multiple of the block sizes): one line each."""
    out = []
    k, n = shape.hidden, shape.intermediate
    if "hybrid" in backend_names and (k % params.block_size or n % params.block_size):
        out.append(f"{shape.name}: hybrid needs K={k} and N={n} to be multiples of --quant-block-size "
                   f"{params.block_size}")
    if "triton-block" in backend_names and (k % BLOCK_SHAPE[1] or n % BLOCK_SHAPE[1]):
        out.append(f"{shape.name}: triton-block needs K={k} and N={n} to be multiples of 128")
    return out
