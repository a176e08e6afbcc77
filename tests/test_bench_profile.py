"""CPU tests of the per-kernel breakdown's formatting (moejit.bench.profile; the profiling itself needs a GPU)."""

import pytest

from moejit.bench.profile import KernelTime, format_breakdown, kernel_breakdown, short_name


def test_short_name_strips_signatures_and_cuts():
    name = "void moejit::(anonymous namespace)::unpermute_kernel<__nv_bfloat16, 8>(__nv_bfloat16 const*, int)"
    assert short_name(name) == "moejit::{anon}::unpermute_kernel<__nv_bfloat16, 8>"
    long = "_ZN7cutlass13device_kernel" + "x" * 200
    assert len(short_name(long, 40)) == 40 and short_name(long, 40).endswith("…")
    assert short_name("Memset (Device)") == "Memset (Device)"


def test_format_breakdown_totals_and_gap():
    rows = [KernelTime("gemm", 1.0, 200.0), KernelTime("quant", 2.0, 15.5)]
    text = format_breakdown(rows, total_us=230.0)
    lines = text.splitlines()
    assert "200.0" in lines[1] and "gemm" in lines[1] and "15.5" in lines[2] and " 2.0" in lines[2]
    assert "215.5" in lines[-1] and " 3.0" in lines[-1] and "+14.5 µs between kernels" in lines[-1]
    assert "between" not in format_breakdown(rows)


def test_kernel_breakdown_rejects_no_iterations():
    with pytest.raises(ValueError, match="iters"):
        kernel_breakdown(lambda: None, iters=0)
