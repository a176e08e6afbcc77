"""Where things are: the kernel sources, the CUTLASS headers, the CUDA toolkit and the build cache."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from moejit.errors import MoejitError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = PACKAGE_DIR.parent
CUTLASS_PINNED_VERSION = "4.2.0"


def kernels_src_dir() -> Path:
    """The folder of .cu/.cpp/.h sources: ``MOEJIT_KERNELS_SRC``, else ``kernels_src/`` beside the package."""
    env = os.environ.get("MOEJIT_KERNELS_SRC")
    candidates = [Path(env)] if env else []
    candidates += [PACKAGE_DIR / "_kernels_src", REPO_DIR / "kernels_src"]
    for candidate in candidates:
        if (candidate / "bindings.cpp").is_file():
            return candidate
    raise MoejitError("cannot find moejit's kernel sources (kernels_src/bindings.cpp); install moejit from a "
                      "source checkout (`pip install -e .`) or set MOEJIT_KERNELS_SRC")


@dataclass(frozen=True)
class CutlassHeaders:
    """A CUTLASS header tree: ``include`` holds cutlass/ and cute/, ``util_include`` holds cutlass/util/."""

    include: Path
    util_include: Path
    source: str  # "MOEJIT_CUTLASS_DIR", "submodule" or "nvidia-cutlass wheel"
    version: str

    @property
    def include_dirs(self) -> list[Path]:
        return [self.include, self.util_include]


def _read_cutlass_version(include: Path) -> str:
    text = (include / "cutlass" / "version.h").read_text(errors="replace")
    parts = [re.search(rf"#define\s+CUTLASS_{key}\s+(\d+)", text) for key in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) if m else "?" for m in parts)


def _headers_at(root: Path, source: str) -> CutlassHeaders | None:
    """CUTLASS headers under a repository-style root (include/, tools/util/include/)."""
    include = root / "include"
    if not (include / "cutlass" / "cutlass.h").is_file():
        return None
    util = root / "tools" / "util" / "include"
    return CutlassHeaders(include, util if util.is_dir() else include, source, _read_cutlass_version(include))


def find_cutlass() -> CutlassHeaders:
    """Resolve CUTLASS headers: ``MOEJIT_CUTLASS_DIR``, the populated ``cutlass`` submodule, the nvidia-cutlass wheel."""
    env = os.environ.get("MOEJIT_CUTLASS_DIR")
    if env:
        found = _headers_at(Path(env), "MOEJIT_CUTLASS_DIR")
        if found is None:
            raise MoejitError(f"MOEJIT_CUTLASS_DIR={env} has no include/cutlass/cutlass.h")
        return found
    found = _headers_at(REPO_DIR / "cutlass", "submodule")
    if found is not None:
        return found
    try:
        import importlib.util

        spec = importlib.util.find_spec("cutlass_library")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        found = _headers_at(Path(spec.origin).parent / "source", "nvidia-cutlass wheel")
        if found is not None:
            return found
    raise MoejitError("CUTLASS headers not found: pip install nvidia-cutlass==4.2.0.0, populate the cutlass "
                      "submodule (git submodule update --init cutlass), or set MOEJIT_CUTLASS_DIR")


def find_cuda_home() -> Path:
    """The CUDA toolkit root: ``CUDA_HOME``/``CUDA_PATH``, else the toolkit that ``nvcc`` on PATH belongs to."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and (Path(value) / "bin" / "nvcc").exists():
            return Path(value)
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for candidate in candidates:
        if (candidate / "bin" / "nvcc").exists() and (candidate / "include" / "cuda_runtime.h").exists():
            return candidate
    raise MoejitError("the CUDA toolkit (nvcc) was not found: install it or set CUDA_HOME; "
                      "or run `moejit build` on a machine that has it and copy the cache (MOEJIT_CACHE_DIR)")


def cache_root() -> Path:
    """``MOEJIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/moejit`` (``~/.cache/moejit``)."""
    env = os.environ.get("MOEJIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "moejit"
