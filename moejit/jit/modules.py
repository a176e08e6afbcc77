"""The JIT module table: the one list of compiled modules, their sources and the archs they build for.

Each module is a shared library of ``TORCH_LIBRARY_FRAGMENT(moejit, m)`` ops (no pybind11, so it does not depend on
the Python version), built only when one of its ops is first used. Its sources are compiled as separate translation
units so ninja builds them in parallel; ``kernels_src/bindings.cpp`` is compiled into every module with
``-DMOEJIT_MODULE_<NAME>`` selecting that module's op registrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moejit.jit.arch import arch_number, normalize_arch

COMMON_NVCC_FLAGS = (
    "-O3",
    "-std=c++17",
    "-DNDEBUG",
    "-lineinfo",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    # torch's defaults hide the half/bf16 operators that CUTLASS and our kernels use.
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
    "-Xcompiler=-fno-strict-aliasing",
)
COMMON_CXX_FLAGS = ("-O3", "-std=c++17", "-DNDEBUG")
# Tile configurations of the SM90 FP8 grouped GEMM, in the order of GemmConfig (fp8_grouped_gemm_sm90.cuh); each
# one is a pair of instantiation TUs, fp8_grouped_gemm_sm90_inst_<config>.cu (bf16, fp16) and <config>_f32.cu.
FP8_GEMM_CONFIGS = ("swap16", "swap32", "swap64", "swap96", "coop128", "wide16")

CUTLASS_NVCC_FLAGS = (
    "-DCUTLASS_ENABLE_TENSOR_CORE_MMA=1",
    "-DCUTE_USE_PACKED_TUPLE=1",
    "-DCUTLASS_VERSIONS_GENERATED",
    "--ftemplate-backtrace-limit=0",
)


@dataclass(frozen=True)
class JitModule:
    """One compiled module. ``sources`` are paths relative to ``kernels_src/`` (bindings.cpp is implicit)."""

    name: str
    description: str
    sources: tuple[str, ...]
    needs_cutlass: bool = False
    # Archs the module is built for: any arch >= min_arch, or exactly those in only_archs when given.
    min_arch: int = 80
    only_archs: tuple[str, ...] = ()
    extra_nvcc_flags: tuple[str, ...] = field(default_factory=tuple)
    # Sources compiled only for one arch: ((arch, (sources...)), ...). Such a build also gets -DMOEJIT_ARCH_<ARCH>
    # (e.g. -DMOEJIT_ARCH_90A), so host code can dispatch to those kernels.
    arch_sources: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def define(self) -> str:
        return f"-DMOEJIT_MODULE_{self.name.upper()}"

    def supports(self, arch: str) -> bool:
        arch = normalize_arch(arch)
        if self.only_archs:
            return arch in self.only_archs
        return arch_number(arch) >= self.min_arch

    def sources_for(self, arch: str) -> tuple[str, ...]:
        arch = normalize_arch(arch)
        return self.sources + tuple(s for a, extra in self.arch_sources if normalize_arch(a) == arch for s in extra)

    def arch_define(self, arch: str) -> list[str]:
        arch = normalize_arch(arch)
        return [f"-DMOEJIT_ARCH_{arch.upper()}"] if any(normalize_arch(a) == arch for a, _ in self.arch_sources) else []

    def nvcc_flags(self, arch: str, gencode: list[str]) -> list[str]:
        flags = list(COMMON_NVCC_FLAGS) + gencode + [self.define] + self.arch_define(arch)
        if self.needs_cutlass:
            flags += list(CUTLASS_NVCC_FLAGS)
        return flags + list(self.extra_nvcc_flags)

    def cxx_flags(self, arch: str) -> list[str]:
        return list(COMMON_CXX_FLAGS) + [self.define] + self.arch_define(arch)


MODULES: dict[str, JitModule] = {
    m.name: m
    for m in (
        JitModule(
            name="common",
            description="activation, permute/unpermute (CUB), MoE problem sizes, block alignment",
            sources=("activation.cu", "permute.cu", "align.cu"),
        ),
        JitModule(
            name="sm90_fp8",
            description="FP8 quantization, CUTLASS 3.x SM90 FP8 grouped GEMM (per-tensor/token × per-tensor/channel)",
            sources=("fp8_quant.cu", "fp8_grouped_gemm_sm90.cu")
            + tuple(f"fp8_grouped_gemm_sm90_inst_{c}{o}.cu" for c in FP8_GEMM_CONFIGS for o in ("", "_f32")),
            needs_cutlass=True,
            only_archs=("90a",),
        ),
        JitModule(
            name="sm80_int8",
            description="INT8 grouped GEMMs (per-tensor / per-token x per-channel, hybrid blockwise Q/F): CUTLASS 2.x SM80 "
                        "mma.sync kernels for every arch, plus TMA + wgmma kernels in the sm_90a build",
            sources=("int8_grouped_gemm.cu", "int8_hybrid_grouped_gemm.cu", "int8_gemm_inst_pt_m64.cu",
                     "int8_gemm_inst_pt_m128.cu", "int8_gemm_inst_hy_m64.cu", "int8_gemm_inst_hy_m128.cu",
                     "int8_gemm_inst_hymg_m64.cu", "int8_gemm_inst_hymg_m128.cu"),
            arch_sources=(("90a", ("int8_gemm_sm90_inst_pt.cu", "int8_gemm_sm90_inst_hy.cu",
                                   "int8_gemm_sm90_inst_hymg.cu")),),
            needs_cutlass=True,
            min_arch=80,
        ),
    )
}


def get_module(name: str) -> JitModule:
    from moejit.errors import MoejitError

    try:
        return MODULES[name]
    except KeyError:
        raise MoejitError(f"unknown moejit module {name!r}; known: {', '.join(MODULES)}") from None
