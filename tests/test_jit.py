"""The JIT's cache keys, module table, lock and error paths (no GPU needed)."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from moejit import jit
from moejit.errors import MoejitBuildError, MoejitError
from moejit.jit import builder as jit_build
from moejit.jit.lock import file_lock

REPO = Path(__file__).resolve().parent.parent
HAS_CUDA_TORCH = torch.version.cuda is not None and shutil.which("nvcc") is not None


@pytest.fixture
def src_copy(tmp_path, monkeypatch):
    """A private copy of kernels_src so tests can change bytes, and a private cache dir."""
    src = tmp_path / "kernels_src"
    shutil.copytree(REPO / "kernels_src", src)
    monkeypatch.setenv("MOEJIT_KERNELS_SRC", str(src))
    monkeypatch.setenv("MOEJIT_CACHE_DIR", str(tmp_path / "cache"))
    jit_build._tree_hash_cache.clear()
    yield src
    jit_build._tree_hash_cache.clear()


def test_module_table_sources_exist():
    src = jit.kernels_src_dir()
    for module in jit.MODULES.values():
        for source in module.sources + tuple(s for _, extra in module.arch_sources for s in extra):
            assert (src / source).is_file(), f"{module.name}: {source} missing"
        assert module.define.startswith("-DMOEJIT_MODULE_")
        assert f"defined({module.define[2:]})" in (src / "bindings.cpp").read_text(), module.name


def test_fp8_gemm_config_list_matches_the_kernels():
    """moejit.jit.modules.FP8_GEMM_CONFIGS (the module's instantiation TUs, the Python names and the integer passed
    to the op) against GemmConfig in the header: same names, same order, kNumConfigs last; each TU instantiates
    its own configuration."""
    import re

    from moejit.jit.modules import FP8_GEMM_CONFIGS
    from moejit.ops.fp8 import GEMM_CONFIGS

    src = jit.kernels_src_dir()
    header = (src / "fp8_grouped_gemm_sm90.cuh").read_text()
    enum = re.search(r"enum class GemmConfig : int \{(.*?)\};", header, re.S).group(1)
    entries = re.findall(r"k(\w+) = (\d+),", enum)
    names = [name.lower() for name, _ in entries if name != "NumConfigs"]
    assert names == list(FP8_GEMM_CONFIGS) == list(GEMM_CONFIGS)
    assert [int(v) for _, v in entries] == list(range(len(FP8_GEMM_CONFIGS) + 1))
    for name, _ in entries[:-1]:
        for suffix in ("", "_f32"):
            tu = (src / f"fp8_grouped_gemm_sm90_inst_{name.lower()}{suffix}.cu").read_text()
            assert set(re.findall(r"GemmConfig::k(\w+)", tu)) == {name}, (name, suffix)
    dispatch = (src / "fp8_grouped_gemm_sm90.cu").read_text()
    assert all(f"GemmConfig::k{name}" in dispatch for name, _ in entries[:-1])


def test_permute_quant_slot_limit_matches_the_kernel():
    """moejit.ops.fp8.PERMUTE_QUANT_MAX_SLOTS (where the FP8 layer stops fusing its front end) is the number of
    slots fp8_permute_quant's block sorts: its threads times its items per thread."""
    import re

    from moejit.ops.fp8 import PERMUTE_QUANT_MAX_SLOTS

    text = (jit.kernels_src_dir() / "fp8_quant.cu").read_text()
    threads = int(re.search(r"constexpr int kThreads = (\d+);", text).group(1))
    items = int(re.search(r"constexpr int kPermuteItems = (\d+);", text).group(1))
    assert "constexpr int kPermuteMaxSlots = kThreads * kPermuteItems;" in text
    assert PERMUTE_QUANT_MAX_SLOTS == threads * items


def test_arch_sources_only_in_their_arch():
    # The sm_90a build of the INT8 module adds the TMA + wgmma kernels and the define its host code dispatches on.
    module = jit.get_module("sm80_int8")
    sm90 = jit.plan("sm80_int8", "90a").manifest
    sm80 = jit.plan("sm80_int8", "80").manifest
    extra = [s for s in sm90["sources"] if "sm90" in s]
    assert len(extra) == 3 and not [s for s in sm80["sources"] if "sm90" in s]
    assert "-DMOEJIT_ARCH_90A" in sm90["nvcc_flags"] and "-DMOEJIT_ARCH_90A" in sm90["cxx_flags"]
    assert not [f for f in sm80["nvcc_flags"] + sm80["cxx_flags"] if f.startswith("-DMOEJIT_ARCH_")]
    assert module.sources_for("80") == module.sources
    # Modules without arch sources get no define (their cache keys do not move).
    assert not [f for f in jit.plan("common", "90a").manifest["nvcc_flags"] if f.startswith("-DMOEJIT_ARCH_")]


def test_key_is_stable_and_content_addressed(src_copy):
    first = jit.plan("common", "90a")
    assert jit.plan("common", "90a").key == first.key
    assert jit.plan("common", "80").key != first.key
    # One byte in a source → a new key.
    path = src_copy / "activation.cu"
    path.write_bytes(path.read_bytes() + b" ")
    jit_build._tree_hash_cache.clear()
    changed = jit.plan("common", "90a")
    assert changed.key != first.key
    # A header byte too.
    header = src_copy / "common.h"
    header.write_bytes(header.read_bytes() + b"\n")
    jit_build._tree_hash_cache.clear()
    assert jit.plan("common", "90a").key not in (first.key, changed.key)


def test_key_covers_only_the_headers_a_module_includes(src_copy):
    common, fp8, int8 = (jit.plan(m, "90a").key for m in ("common", "sm90_fp8", "sm80_int8"))
    # A header that only the INT8 module includes (through int8_grouped_gemm_sm90.cuh's own includes too).
    header = src_copy / "int8_grouped_gemm_sm90.cuh"
    header.write_bytes(header.read_bytes() + b"\n")
    assert jit.plan("sm80_int8", "90a").key != int8
    assert jit.plan("common", "90a").key == common
    assert jit.plan("sm90_fp8", "90a").key == fp8
    # A header included only by another header (int8_grouped_gemm_sm90.cuh includes int8_gemm_store.cuh).
    int8 = jit.plan("sm80_int8", "90a").key
    nested = src_copy / "int8_gemm_store.cuh"
    nested.write_bytes(nested.read_bytes() + b"\n")
    assert jit.plan("sm80_int8", "90a").key != int8
    # A header every module includes.
    shared = src_copy / "ops.h"
    shared.write_bytes(shared.read_bytes() + b"\n")
    assert jit.plan("common", "90a").key != common
    assert jit.plan("sm90_fp8", "90a").key != fp8
    # A stray header nobody includes changes nothing.
    common = jit.plan("common", "90a").key
    (src_copy / "scratch.cuh").write_text("#pragma once\n")
    assert jit.plan("common", "90a").key == common


def test_mtime_alone_does_not_change_key(src_copy):
    first = jit.plan("common", "90a").key
    path = src_copy / "permute.cu"
    os.utime(path, (time.time() + 100, time.time() + 100))
    jit_build._tree_hash_cache.clear()
    assert jit.plan("common", "90a").key == first


def test_cache_dir_layout(src_copy, tmp_path):
    p = jit.plan("common", "sm_80")
    assert p.out_dir == tmp_path / "cache" / "common" / "sm_80" / p.key
    assert p.library.name == "moejit_common.so"
    assert not p.is_built()


def test_manifest_records_versions(src_copy):
    manifest = jit.plan("common", "90a").manifest
    assert manifest["torch"] == torch.__version__
    assert "-gencode=arch=compute_90a,code=sm_90a" in manifest["nvcc_flags"]
    assert "-DMOEJIT_MODULE_COMMON" in manifest["nvcc_flags"]


def test_unknown_module_and_unsupported_arch():
    with pytest.raises(MoejitError, match="unknown moejit module"):
        jit.plan("nope", "90a")
    with pytest.raises(MoejitError):
        jit.plan("common", "75")


def test_disable_jit_says_to_run_build(src_copy, monkeypatch):
    monkeypatch.setenv("MOEJIT_DISABLE_JIT", "1")
    with pytest.raises(MoejitError, match="moejit build --arch 90a --module common"):
        jit.build("common", "90a")


def test_cutlass_resolution_env_override(tmp_path, monkeypatch):
    include = tmp_path / "cl" / "include" / "cutlass"
    include.mkdir(parents=True)
    (include / "cutlass.h").write_text("")
    (include / "version.h").write_text("#define CUTLASS_MAJOR 9\n#define CUTLASS_MINOR 8\n#define CUTLASS_PATCH 7\n")
    monkeypatch.setenv("MOEJIT_CUTLASS_DIR", str(tmp_path / "cl"))
    found = jit.find_cutlass()
    assert found.source == "MOEJIT_CUTLASS_DIR" and found.version == "9.8.7"
    monkeypatch.setenv("MOEJIT_CUTLASS_DIR", str(tmp_path / "missing"))
    with pytest.raises(MoejitError, match="MOEJIT_CUTLASS_DIR"):
        jit.find_cutlass()


def test_cutlass_from_wheel_is_pinned_version(monkeypatch):
    monkeypatch.delenv("MOEJIT_CUTLASS_DIR", raising=False)
    pytest.importorskip("cutlass_library")
    found = jit.find_cutlass()
    assert found.version == "4.2.0"
    assert (found.include / "cute" / "tensor.hpp").is_file()


_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from moejit.jit.lock import file_lock
    with file_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
""")


def _start_holder(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_times_out_naming_the_lock(tmp_path):
    lock = tmp_path / "x.lock"
    holder = _start_holder(lock)
    try:
        waited = []
        with pytest.raises(MoejitError, match=str(lock)):
            with file_lock(lock, timeout=0.5, on_wait=waited.append):
                pass
        assert waited == [lock]
    finally:
        holder.kill()
        holder.wait()


def test_killed_holder_releases_lock(tmp_path):
    lock = tmp_path / "x.lock"
    holder = _start_holder(lock)
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.wait()
    with file_lock(lock, timeout=5):
        pass
    assert lock.exists()  # the file stays; only the flock matters


@pytest.mark.skipif(not HAS_CUDA_TORCH, reason="needs nvcc and a CUDA-enabled torch")
def test_failed_build_shows_first_errors_and_log(src_copy):
    (src_copy / "activation.cu").write_text("this is not C++;\n")
    with pytest.raises(MoejitBuildError) as info:
        jit.build("common", "80", jobs=1, quiet=True)
    assert "activation.cu" in str(info.value) and "error" in str(info.value)
    assert info.value.log_path and Path(info.value.log_path).is_file()
    assert "full log:" in str(info.value)
    # Nothing half-built is published under the key.
    assert not jit.plan("common", "80").is_built()


@pytest.mark.parametrize("loads_after_rebuild", [True, False])
def test_a_cached_library_that_does_not_load_is_rebuilt_once(tmp_path, fake_jit_load, loads_after_rebuild):
    """A cached .so copied from another machine (or left by another torch) that fails to load is rebuilt once; a
    fresh build that still fails to load raises."""
    stale, fresh = tmp_path / "stale.so", tmp_path / "fresh.so"
    loads = []

    def fake_load_library(path):
        loads.append(Path(path))
        if Path(path) == stale or not loads_after_rebuild:
            raise OSError(f"{path}: undefined symbol: _ZN3c10xyz")

    builds = fake_jit_load(stale, fresh, fake_load_library)
    if loads_after_rebuild:
        assert jit_build.load("common") == fresh
    else:
        with pytest.raises(OSError, match="undefined symbol"):
            jit_build.load("common")
    assert builds == [False, True] and loads == [stale, fresh]
