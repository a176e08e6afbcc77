"""The JIT's host-compiler check: a module must need the shared libstdc++, never carry a static copy (no GPU)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from moejit import jit
from moejit.errors import MoejitBuildError
from moejit.jit import builder as jit_build
from moejit.jit import toolchain

GXX = shutil.which("g++")


def _has_static_libstdcxx() -> bool:
    if GXX is None:
        return False
    found = subprocess.run([GXX, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    return Path(found).is_absolute()  # g++ prints the bare name when it has none


pytestmark = pytest.mark.skipif(not _has_static_libstdcxx(), reason="needs g++ with a static libstdc++")
SOURCE = ("#include <sstream>\n#include <string>\n"
          "std::string f(long x) { std::ostringstream s; s << x; return s.str(); }\n")


@pytest.fixture(autouse=True)
def fresh_probe_cache(monkeypatch):
    monkeypatch.setattr(toolchain, "_probe_cache", {})


@pytest.fixture
def static_cxx(tmp_path):
    """A g++ wrapper that links libstdc++ statically, like the GPU machine's CXX."""
    wrapper = tmp_path / "bin" / "g++-static"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {GXX} "$@" -static-libstdc++\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _link(cxx, directory, name):
    """Links SOURCE into ``directory/name.so`` with ``cxx``; returns the compiler's exit status."""
    src = directory / f"{name}.cpp"
    src.write_text(SOURCE)
    return subprocess.run([cxx, "-shared", "-fPIC", "-O1", str(src), "-o", str(directory / f"{name}.so")]).returncode


def _library(tmp_path, cxx, name):
    assert _link(cxx, tmp_path, name) == 0
    return tmp_path / f"{name}.so"


def test_needed_libraries_tells_a_static_libstdcxx_apart(tmp_path, static_cxx):
    dynamic, static = _library(tmp_path, GXX, "dyn"), _library(tmp_path, static_cxx, "static")
    assert "libstdc++.so.6" in toolchain.needed_libraries(dynamic)
    assert not any(n.startswith("libstdc++") for n in toolchain.needed_libraries(static))
    assert "libc.so.6" in toolchain.needed_libraries(static)  # the parser does read the table
    assert toolchain.links_libstdcxx_dynamically(dynamic) is True
    assert toolchain.links_libstdcxx_dynamically(static) is False
    (tmp_path / "text.so").write_text("not an ELF file")
    assert toolchain.needed_libraries(tmp_path / "text.so") is None
    assert toolchain.links_libstdcxx_dynamically(tmp_path / "missing.so") is None
    with pytest.raises(MoejitBuildError, match="static copy"):
        toolchain.check_library(static, static_cxx)
    toolchain.check_library(dynamic, GXX)


def test_a_good_compiler_is_left_alone(monkeypatch):
    monkeypatch.setenv("CXX", GXX)
    assert toolchain.build_cxx() is None


def test_a_static_libstdcxx_compiler_is_replaced_by_one_that_links_it(monkeypatch, static_cxx, capsys):
    monkeypatch.setenv("CXX", static_cxx)
    chosen = toolchain.build_cxx()
    assert chosen is not None and os.path.realpath(chosen) != os.path.realpath(static_cxx)
    assert toolchain.probe_cxx(chosen) is True
    assert "links libstdc++ statically" in capsys.readouterr().err


def test_a_compiler_command_line_is_probed_as_one(monkeypatch, static_cxx):
    """CXX may be a command line (``ccache g++``), as torch's ninja file takes it."""
    assert toolchain.probe_cxx(f"env {GXX}") is True
    monkeypatch.setenv("CXX", f"env {static_cxx}")
    assert toolchain.probe_cxx(f"env {static_cxx}") is False
    assert toolchain.build_cxx() is not None


def test_no_usable_compiler_is_a_clear_error(monkeypatch, static_cxx):
    monkeypatch.setenv("CXX", static_cxx)
    monkeypatch.setattr(toolchain, "_FALLBACKS", (static_cxx,))
    with pytest.raises(MoejitBuildError, match="set CXX"):
        toolchain.build_cxx()


def test_a_compiler_that_cannot_build_is_left_to_the_build(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert toolchain.build_cxx() is None


class _FakeWorker:
    """Stands in for the compile worker: links the probe source with the CXX it was given into the module's
    library path, as torch's ninja link step would."""

    envs: list = []

    def __init__(self, argv, stdout, stderr, env):
        import json

        request = json.loads(argv[-1])
        cxx = env.get("CXX") or "c++"
        _FakeWorker.envs.append(cxx)
        self.returncode = _link(cxx, Path(request["build_directory"]), request["name"])

    def wait(self, timeout=None):
        return self.returncode


@pytest.fixture
def fake_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("MOEJIT_CACHE_DIR", str(tmp_path / "cache"))
    from types import SimpleNamespace

    # the builder's own view of subprocess only: the compiler probes still run for real
    monkeypatch.setattr(jit_build, "subprocess", SimpleNamespace(Popen=_FakeWorker, STDOUT=subprocess.STDOUT,
                                                                 TimeoutExpired=subprocess.TimeoutExpired))
    monkeypatch.setattr(jit_build, "find_cuda_home", lambda: Path("/usr/local/cuda"))
    _FakeWorker.envs = []
    return _FakeWorker


def test_the_build_links_with_the_replacement_compiler(monkeypatch, static_cxx, fake_worker):
    monkeypatch.setenv("CXX", static_cxx)
    result = jit.build("common", "80", jobs=1, quiet=True)
    assert fake_worker.envs and fake_worker.envs[0] != static_cxx
    assert toolchain.links_libstdcxx_dynamically(result.library) is True
    assert jit.plan("common", "80").is_built()


def test_a_static_libstdcxx_library_is_never_published(monkeypatch, static_cxx, fake_worker):
    monkeypatch.setenv("CXX", static_cxx)
    monkeypatch.setattr(jit_build, "build_cxx", lambda: None)  # as if the probe had been fooled
    with pytest.raises(MoejitBuildError, match="static copy"):
        jit.build("common", "80", jobs=1, quiet=True)
    assert fake_worker.envs == [static_cxx]
    assert not jit.plan("common", "80").is_built()


def test_a_cached_static_libstdcxx_library_is_rebuilt_before_loading(tmp_path, static_cxx, fake_jit_load):
    stale, fresh = _library(tmp_path, static_cxx, "stale"), _library(tmp_path, GXX, "fresh")
    loads = []
    builds = fake_jit_load(stale, fresh, lambda path: loads.append(Path(path)))
    assert jit_build.load("common") == fresh
    assert builds == [False, True] and loads == [fresh]


def test_info_names_the_compiler_a_build_uses(monkeypatch, static_cxx):
    from click.testing import CliRunner

    from moejit.cli import main

    monkeypatch.setenv("CXX", static_cxx)
    result = CliRunner().invoke(main, ["info"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "which links libstdc++ statically" in result.output
