"""The JIT: arch flags, CUTLASS/CUDA discovery, the module table, the content-keyed cache and build locks.

Nothing is compiled at import. ``load(name)`` builds (once per machine) and loads a module; ``build(name, arch)``
compiles ahead of time without a GPU.
"""

from moejit.jit.arch import detect_arch, gencode_flags, normalize_arch
from moejit.jit.builder import BuildResult, build, built_modules, ensure_loaded, load, loaded_modules, plan
from moejit.jit.modules import MODULES, JitModule, get_module
from moejit.jit.paths import cache_root, find_cuda_home, find_cutlass, kernels_src_dir

__all__ = [
    "MODULES", "JitModule", "BuildResult", "build", "built_modules", "cache_root", "detect_arch", "ensure_loaded",
    "find_cuda_home", "find_cutlass", "gencode_flags", "get_module", "kernels_src_dir", "load", "loaded_modules",
    "normalize_arch", "plan",
]
