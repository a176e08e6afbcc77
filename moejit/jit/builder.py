"""Build, cache and load JIT modules: the one place that drives nvcc.

Cache layout (root from :func:`moejit.jit.paths.cache_root`)::

    <root>/<module>/sm_<arch>/<key>/moejit_<module>.so   the library, with build.json and build.log beside it
    <root>/<module>/sm_<arch>/<key>.lock                 flock held while one process builds that key

``key`` is a SHA-256 over the bytes of every source and header the module compiles (ours and CUTLASS's), the
compiler flags, the arch, and the torch, CUDA and CUTLASS versions. Same key → the library is loaded directly
(no compiler, no ninja). Any byte changed → a new key → a rebuild, seeded with the previous build's objects so
ninja recompiles only what changed.

The compile itself runs in a child process (``python -m moejit.jit.worker``) so that a module built ahead of time
for another arch is never loaded into this process, and a crashing compiler cannot take the caller down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from moejit.errors import MoejitBuildError, MoejitError
from moejit.jit.arch import detect_arch, gencode_flags, normalize_arch
from moejit.jit.lock import file_lock
from moejit.jit.modules import JitModule, get_module
from moejit.jit.paths import cache_root, find_cuda_home, find_cutlass, kernels_src_dir
from moejit.jit.toolchain import build_cxx, check_library, default_cxx, links_libstdcxx_dynamically

_HEADER_SUFFIXES = (".h", ".cuh", ".hpp", ".inl")
_HEARTBEAT_S = float(os.environ.get("MOEJIT_BUILD_HEARTBEAT_S", 30))
_loaded: dict[str, Path] = {}
_loaded_arch: str | None = None
_load_lock = threading.Lock()
_tree_hash_cache: dict[str, str] = {}
_LOCAL_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)


def _log(message: str) -> None:
    print(f"moejit: {message}", file=sys.stderr, flush=True)


def _hash_tree(root: Path, suffixes: tuple[str, ...]) -> str:
    """SHA-256 over (relative path, bytes) of every file under ``root`` with one of ``suffixes``; memoised."""
    memo_key = f"{root}|{suffixes}"
    if memo_key not in _tree_hash_cache:
        digest = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.suffix in suffixes and p.is_file()):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        _tree_hash_cache[memo_key] = digest.hexdigest()
    return _tree_hash_cache[memo_key]


def _local_headers(src: Path, sources: list[Path]) -> list[Path]:
    """The headers under ``src`` that ``sources`` include with ``#include "..."``, transitively: each name is
    resolved beside the including file, then in ``src`` (the build's include folder); names found in neither
    (CUTLASS's, CUDA's) are left to the other parts of the key."""
    root = src.resolve()
    found: set[Path] = set()
    pending = [p.resolve() for p in sources]
    while pending:
        path = pending.pop()
        for raw in _LOCAL_INCLUDE.findall(path.read_bytes()):
            name = raw.decode()
            for candidate in (path.parent / name, root / name):
                candidate = candidate.resolve()
                if candidate.is_file() and candidate.is_relative_to(root):
                    if candidate not in found:
                        found.add(candidate)
                        pending.append(candidate)
                    break
    return sorted(found)


def _hash_files(root: Path, files: list[Path]) -> str:
    """SHA-256 over (path relative to ``root``, bytes) of ``files``."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root.resolve())).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def torch_versions() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "cuda": str(torch.version.cuda)}


@dataclass(frozen=True)
class BuildPlan:
    """Everything that determines one module's library for one arch, and where it lives."""

    module: JitModule
    arch: str
    key: str
    manifest: dict

    @property
    def module_dir(self) -> Path:
        return cache_root() / self.module.name / f"sm_{self.arch}"

    @property
    def out_dir(self) -> Path:
        return self.module_dir / self.key

    @property
    def library(self) -> Path:
        return self.out_dir / f"moejit_{self.module.name}.so"

    @property
    def lock_path(self) -> Path:
        return self.module_dir / f"{self.key}.lock"

    def is_built(self) -> bool:
        return self.library.is_file() and (self.out_dir / "build.json").is_file()


def plan(module_name: str, arch: str) -> BuildPlan:
    """Compute the cache key of ``module_name`` for ``arch`` (no compiler is run)."""
    module = get_module(module_name)
    arch = normalize_arch(arch)
    if not module.supports(arch):
        raise MoejitError(f"module {module.name!r} is not built for sm_{arch} "
                          f"(it needs {', '.join('sm_' + a for a in module.only_archs) or f'sm_{module.min_arch}+'})")
    src = kernels_src_dir()
    sources = [src / "bindings.cpp"] + [src / s for s in module.sources_for(arch)]
    for path in sources:
        if not path.is_file():
            raise MoejitError(f"module {module.name!r}: source {path} is missing")
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    manifest = {
        "module": module.name,
        "arch": arch,
        "sources": [str(p) for p in sources],
        "sources_hash": digest.hexdigest(),
        # only the headers this module's sources include: editing one kernel family's header rebuilds that module
        "headers_hash": _hash_files(src, _local_headers(src, sources)),
        "nvcc_flags": module.nvcc_flags(arch, gencode_flags(arch)),
        "cxx_flags": module.cxx_flags(arch),
        **torch_versions(),
    }
    if module.needs_cutlass:
        cutlass = find_cutlass()
        manifest["cutlass_version"] = cutlass.version
        manifest["cutlass_source"] = cutlass.source
        manifest["include_dirs"] = [str(p) for p in cutlass.include_dirs]
        manifest["cutlass_hash"] = "|".join(
            _hash_tree(p, _HEADER_SUFFIXES) for p in dict.fromkeys(cutlass.include_dirs))
    keyed = {k: v for k, v in manifest.items() if k not in ("sources", "include_dirs", "cutlass_source")}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    return BuildPlan(module, arch, key, manifest)


@dataclass(frozen=True)
class BuildResult:
    plan: BuildPlan
    seconds: float
    cached: bool

    @property
    def library(self) -> Path:
        return self.plan.library


def _first_errors(log: str, limit: int = 12) -> str:
    lines = [ln for ln in log.splitlines() if re.search(r"\berror\b|Error|FAILED", ln)]
    return "\n".join(lines[:limit]) or "\n".join(log.splitlines()[-limit:])


def _seed_from_previous(plan_: BuildPlan, work: Path) -> None:
    """Copy the newest finished build's objects into ``work`` so ninja only recompiles what changed."""
    if not plan_.module_dir.is_dir():
        return
    previous = [d for d in plan_.module_dir.iterdir() if d.is_dir() and (d / "build.json").is_file()]
    if not previous:
        return
    newest = max(previous, key=lambda d: (d / "build.json").stat().st_mtime)
    shutil.copytree(newest, work, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.so", "build.json", "build.log", "lock"))


def _run_compiler(plan_: BuildPlan, work: Path, jobs: int | None) -> None:
    cuda_home = find_cuda_home()
    env = dict(os.environ)
    env["CUDA_HOME"] = str(cuda_home)
    env["PATH"] = f"{cuda_home / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # torch's ninja defaults to all cores; a module's translation units are independent so that is what we want.
    env["MAX_JOBS"] = str(jobs or os.cpu_count() or 1)
    cxx = build_cxx()  # None: the default compiler links the shared libstdc++, as a torch extension must
    if cxx is not None:
        env["CXX"] = cxx
    request = {
        "name": f"moejit_{plan_.module.name}",
        "sources": plan_.manifest["sources"],
        "extra_cflags": plan_.manifest["cxx_flags"],
        "extra_cuda_cflags": plan_.manifest["nvcc_flags"],
        "extra_include_paths": [str(kernels_src_dir())] + plan_.manifest.get("include_dirs", []),
        "build_directory": str(work),
    }
    log_path = work / "build.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moejit.jit.worker", json.dumps(request)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        while True:
            try:
                proc.wait(timeout=_HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                _log(f"  still building {plan_.module.name} for sm_{plan_.arch} "
                     f"({time.monotonic() - started:.0f} s; log: {log_path})")
            except BaseException:
                proc.kill()
                raise
    if proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        raise MoejitBuildError(
            f"building moejit module {plan_.module.name!r} for sm_{plan_.arch} failed:\n{_first_errors(text)}\n"
            f"full log: {log_path}", str(log_path))
    check_library(work / plan_.library.name, cxx or default_cxx())


def build(module_name: str, arch: str, jobs: int | None = None, force: bool = False,
          quiet: bool = False) -> BuildResult:
    """Build ``module_name`` for ``arch`` into the cache unless an identical build is already there."""
    plan_ = plan(module_name, arch)
    if plan_.is_built() and not force:
        return BuildResult(plan_, 0.0, cached=True)
    if os.environ.get("MOEJIT_DISABLE_JIT", "0") not in ("", "0"):
        raise MoejitError(
            f"module {plan_.module.name!r} for sm_{plan_.arch} is not built and MOEJIT_DISABLE_JIT is set; "
            f"run `moejit build --arch {plan_.arch} --module {plan_.module.name}` first "
            f"(cache: {cache_root()})")

    def waiting(lock: Path) -> None:
        _log(f"waiting for another process that is building {plan_.module.name} for sm_{plan_.arch} "
             f"(lock: {lock})")

    with file_lock(plan_.lock_path, on_wait=waiting):
        if plan_.is_built() and not force:  # built by the process we waited for
            return BuildResult(plan_, 0.0, cached=True)
        n_units = len(plan_.manifest["sources"])
        if not quiet:
            _log(f"compiling module '{plan_.module.name}' for sm_{plan_.arch} ({n_units} translation units). "
                 "This happens once per machine and can take a few minutes.")
        started = time.monotonic()
        work = plan_.module_dir / f"{plan_.key}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _seed_from_previous(plan_, work)
        _run_compiler(plan_, work, jobs)
        seconds = time.monotonic() - started
        record = dict(plan_.manifest, key=plan_.key, seconds=round(seconds, 1), built_at=time.time())
        (work / "build.json").write_text(json.dumps(record, indent=1))
        shutil.rmtree(plan_.out_dir, ignore_errors=True)
        os.replace(work, plan_.out_dir)
        if not quiet:
            _log(f"built '{plan_.module.name}' for sm_{plan_.arch} in {seconds:.1f} s → {plan_.library}")
        return BuildResult(plan_, seconds, cached=False)


def load(module_name: str) -> Path:
    """Make the ops of ``module_name`` available in this process, building the module on first use. A cached
    library that fails to load (copied from another machine, say) is rebuilt once."""
    global _loaded_arch
    if module_name in _loaded:
        return _loaded[module_name]
    with _load_lock:
        if module_name in _loaded:
            return _loaded[module_name]
        import torch

        arch = detect_arch()
        if _loaded_arch is not None and arch != _loaded_arch:
            raise MoejitError(f"moejit modules are already loaded for sm_{_loaded_arch}; "
                              f"one process cannot mix them with sm_{arch}")
        result = build(module_name, arch)
        if result.cached and links_libstdcxx_dynamically(result.library) is False:
            # built before this check existed, by a compiler that linked libstdc++ statically (toolchain.py)
            _log(f"the cached build of '{module_name}' for sm_{arch} carries a static libstdc++; rebuilding it")
            result = build(module_name, arch, force=True)
        try:
            torch.ops.load_library(str(result.library))
        except OSError as exc:
            if not result.cached:
                raise
            # a cached library that does not load here (copied from another machine, say): rebuild it once
            _log(f"the cached build of '{module_name}' for sm_{arch} does not load ({exc}); rebuilding it")
            result = build(module_name, arch, force=True)
            torch.ops.load_library(str(result.library))
        from moejit import registry

        registry.register_fakes(module_name)
        _loaded[module_name] = result.library
        _loaded_arch = arch
        return result.library


def ensure_loaded(module_name: str) -> None:
    """Cheap check used by every op wrapper; a no-op once the module is loaded."""
    if module_name not in _loaded:
        load(module_name)


def loaded_modules() -> dict[str, Path]:
    return dict(_loaded)


def built_modules() -> list[dict]:
    """Every finished build in the cache (from its build.json), newest first."""
    root = cache_root()
    records = []
    if root.is_dir():
        for meta in root.glob("*/sm_*/*/build.json"):
            try:
                record = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            record["path"] = str(meta.parent)
            records.append(record)
    return sorted(records, key=lambda r: r.get("built_at", 0), reverse=True)
