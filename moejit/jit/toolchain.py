"""The host C++ compiler the JIT links with, and the check that a module shares the process's libstdc++.

A torch extension must use the libstdc++ that the process has already loaded (libtorch's). A compiler that links
its own static copy into the library (``-static-libstdc++`` from a wrapper script or a specs file) makes modules
that load and run their kernels, then crash on the first C++ error message that formats a number: the static
copy's stream and locale machinery is not the one the process set up. Our GPU machine's ``CXX`` is such a
compiler; every torch extension it links, moejit's or ``torch.utils.cpp_extension.load_inline``'s, segfaults in
``std::ostream::_M_insert<long>`` on such a message (docs/notes.md, twelfth session).

So before a build, :func:`build_cxx` tries the compiler torch would use (``$CXX``, else ``c++``) on a tiny
library; if that library does not need ``libstdc++.so``, the build uses the first ``g++``/``c++`` that links it
dynamically, and says so. After a build, and before loading a cached library, :func:`links_libstdcxx_dynamically`
reads the library's ELF dynamic section, so a library with a static libstdc++ is never cached or loaded.
"""

from __future__ import annotations

import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from moejit.errors import MoejitBuildError

_PROBE_SOURCE = "#include <string>\nstd::string moejit_probe(long x) { return std::to_string(x); }\n"
_FALLBACKS = ("g++", "c++", "/usr/bin/g++", "/usr/bin/c++")
_probe_cache: dict[str, bool | None] = {}

_SHT_DYNAMIC = 6
_DT_NEEDED = 1


def needed_libraries(library: Path) -> list[str] | None:
    """The ``DT_NEEDED`` entries of a 64-bit little-endian ELF shared library, or None where ``library`` is not
    one (or cannot be read). Reads the section headers, the dynamic section and its string table only."""
    try:
        with open(library, "rb") as f:
            def read(offset: int, size: int) -> bytes:
                f.seek(offset)
                return f.read(size)

            header = read(0, 64)
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return None
            shoff, = struct.unpack_from("<Q", header, 0x28)
            shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
            table = read(shoff, shentsize * shnum)
            sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
            names: list[str] = []
            for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
                if kind != _SHT_DYNAMIC:
                    continue
                strtab = read(sections[link][4], sections[link][5])
                dynamic = read(offset, size)
                for pos in range(0, len(dynamic) - 15, entsize or 16):
                    tag, value = struct.unpack_from("<qQ", dynamic, pos)
                    if tag == 0:
                        break
                    if tag == _DT_NEEDED:
                        names.append(strtab[value:strtab.index(b"\0", value)].decode(errors="replace"))
            return names
    except (OSError, struct.error, IndexError, ValueError):
        return None


def links_libstdcxx_dynamically(library: Path) -> bool | None:
    """True when ``library`` needs ``libstdc++.so``, False when it does not (a static copy, or no C++ at all),
    None when it is no ELF library this check can read."""
    needed = needed_libraries(library)
    if needed is None:
        return None
    return any(name.startswith("libstdc++.so") for name in needed)


def probe_cxx(cxx: str) -> bool | None:
    """Whether ``cxx`` (a command line, as ``CXX`` may be: ``ccache g++``) links a small C++ shared library against
    the shared libstdc++ (None: it could not build one, so the real build will report why). Memoised per
    compiler."""
    if cxx not in _probe_cache:
        result: bool | None = None
        with tempfile.TemporaryDirectory(prefix="moejit-cxx-") as tmp:
            source, library = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
            source.write_text(_PROBE_SOURCE)
            try:
                proc = subprocess.run([*shlex.split(cxx), "-shared", "-fPIC", "-O1", str(source), "-o", str(library)],
                                      capture_output=True, timeout=120)
                if proc.returncode == 0:
                    result = links_libstdcxx_dynamically(library)
            except (OSError, ValueError, subprocess.SubprocessError):
                result = None
        _probe_cache[cxx] = result
    return _probe_cache[cxx]


def default_cxx() -> str:
    """The compiler torch.utils.cpp_extension links with: ``$CXX``, else ``c++``."""
    return os.environ.get("CXX") or "c++"


def build_cxx() -> str | None:
    """The compiler a JIT build must link with when it is not :func:`default_cxx`, else None.

    Raises :class:`moejit.errors.MoejitBuildError` when the default compiler links libstdc++ statically and no
    ``g++``/``c++`` found on the machine links it dynamically."""
    if sys.platform != "linux":
        return None
    user = default_cxx()
    if probe_cxx(user) is not False:  # fine, or unusable (then the build itself says why)
        return None
    seen = {os.path.realpath(shutil.which(user) or user)}
    for candidate in _FALLBACKS:
        path = shutil.which(candidate)
        if path is None or os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        if probe_cxx(path):
            print(f"moejit: the C++ compiler {user!r} links libstdc++ statically into shared libraries, which makes "
                  f"torch extensions crash on C++ error messages; building with {path} instead (set CXX to another "
                  "compiler that links the shared libstdc++ to choose it)", file=sys.stderr, flush=True)
            return path
    raise MoejitBuildError(
        f"the C++ compiler {user!r} links libstdc++ statically into shared libraries (a -static-libstdc++ "
        "flag in a wrapper or specs file, or a library folder without libstdc++.so), and no g++ or c++ on this "
        "machine links it dynamically. A torch extension built so crashes on its first C++ error message; set CXX "
        "to a compiler that links the shared libstdc++.")


def check_library(library: Path, cxx: str) -> None:
    """Raise :class:`moejit.errors.MoejitBuildError` when a freshly linked ``library`` carries its own libstdc++."""
    if links_libstdcxx_dynamically(library) is False:
        raise MoejitBuildError(
            f"{library.name} was linked without the shared libstdc++ (compiler {cxx!r}): it carries a static copy, "
            "which crashes on the first C++ error message in a torch process. Set CXX to a compiler that links "
            "libstdc++ dynamically and rebuild.", str(library))
