"""Compile Triton kernels for Hopper (sm_90) on a machine without a GPU, through the code that launches them.

:func:`compile_only` makes ``kernel[grid](*args, **kwargs)`` of every ``@triton.jit`` function of the given modules
compile the kernel with Triton's real compiler (and ptxas) for sm_90 with the argument types of that call, instead
of launching it. Run a layer on ``meta`` tensors (shapes and strides, no
memory) under it and every kernel variant the layer would launch for that shape — the heuristic's config
included — goes through the code generation the interpreter skips: ``tl.dot`` shape and type rules, constexpr
handling, register allocation, shared memory. Each compile is recorded with its shared memory, which a launch on
an H100/H200 would refuse above 227 KB.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.runtime.jit import mangle_type

HOPPER = GPUTarget("cuda", 90, 32)
MAX_SHARED_BYTES = 227 * 1024  # per block, opt-in, on sm_90

_POINTEE = {torch.float8_e4m3fn: "fp8e4nv", torch.int8: "i8", torch.uint8: "u8", torch.int32: "i32",
            torch.int64: "i64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclasses.dataclass
class Compiled:
    kernel: str
    constexprs: dict
    num_warps: int
    num_stages: int
    shared: int
    ptx: str


def _signature(kernel, args, kwargs):
    names = kernel.arg_names
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    constexprs = {p.name for p in kernel.params if p.is_constexpr}
    sig, consts, attrs = {}, {}, {}
    for i, name in enumerate(names):
        value = bound[name]
        if name in constexprs or value is None:
            sig[name], consts[name] = "constexpr", value
        elif isinstance(value, TensorDescriptor):  # a Gluon kernel's TMA descriptor: Triton's own type string
            sig[name] = mangle_type(value)
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + _POINTEE[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch's allocations are 256-byte aligned
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]  # as Triton's launcher specializes
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: no Triton type for argument {name} = {value!r}")
    return sig, consts, attrs


def _compile_instead_of_run(kernel, log: list[Compiled]):
    def run(*args, grid=None, warmup=False, **kwargs):
        sig, consts, attrs = _signature(kernel, args, kwargs)
        options = {k: kwargs[k] for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
        source = GluonASTSource if isinstance(kernel, GluonJITFunction) else ASTSource
        compiled = triton.compile(source(kernel, sig, consts, attrs), target=HOPPER, options=options)
        log.append(Compiled(kernel.__name__, consts, options.get("num_warps", 4), options.get("num_stages", 3),
                            compiled.metadata.shared, compiled.asm["ptx"]))
    return run


def compile_only(monkeypatch, *modules) -> list[Compiled]:
    """Make every ``@triton.jit`` function of ``modules`` compile instead of run when launched (``kernel[grid](...)``
    calls ``kernel.run``; the functions stay in place, so kernels still find the helpers they call); returns the
    (growing) log of what was compiled."""
    log: list[Compiled] = []
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, triton.runtime.jit.JITFunction):
                monkeypatch.setattr(value, "run", _compile_instead_of_run(value, log))
    return log


def ptxas_report(ptx: str) -> str:
    """ptxas's verbose report (``-v``: registers, spills, and its C75xx notes on serialized wgmma) for a kernel's
    PTX, assembled for sm_90a with the ptxas that Triton ships."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src, out = f"{tmp}/k.ptx", f"{tmp}/k.cubin"
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", src, "-o", out], capture_output=True,
                              text=True, check=True)
    return done.stdout + done.stderr


def spill_bytes(report: str) -> int:
    return sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", report))
