"""The op registry: which JIT module holds each ``torch.ops.moejit`` op, and its fake (meta) implementation.

Schemas and CUDA implementations are registered in C++ (kernels_src/bindings.cpp). Fake implementations are
registered here, right after the module's library is loaded, so every op traces under torch.compile and
``FakeTensorMode``. Op wrappers call :func:`op` to get the callable; it loads (and on first use builds) the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class OpEntry:
    name: str
    module: str
    fake: Callable


_OPS: dict[str, OpEntry] = {}
_faked: set[str] = set()


def define(name: str, module: str) -> Callable[[Callable], Callable]:
    """Decorator: declare that op ``moejit::name`` lives in JIT module ``module``; the function is its fake."""

    def wrap(fake: Callable) -> Callable:
        if name in _OPS and _OPS[name].module != module:
            raise ValueError(f"op {name} is already declared in module {_OPS[name].module}")
        _OPS[name] = OpEntry(name, module, fake)
        return fake

    return wrap


def ops() -> dict[str, OpEntry]:
    """All declared ops (name → entry)."""
    return dict(_OPS)


def module_of(name: str) -> str:
    return _OPS[name].module


def register_fakes(module: str) -> None:
    """Register the fake implementations of ``module``'s ops with torch (idempotent)."""
    import torch

    for entry in _OPS.values():
        if entry.module == module and entry.name not in _faked:
            torch.library.register_fake(f"moejit::{entry.name}", entry.fake)
            _faked.add(entry.name)


def op(name: str):
    """The ``torch.ops.moejit.<name>`` overload packet, loading its module first (outside torch.compile)."""
    import torch

    entry = _OPS[name]
    if not torch.compiler.is_compiling():
        from moejit.jit.builder import ensure_loaded

        ensure_loaded(entry.module)
    return getattr(torch.ops.moejit, name)
