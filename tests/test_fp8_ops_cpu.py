"""CPU-runnable parts of the FP8 ops: the grouped-GEMM configuration heuristic, argument validation that happens
before any kernel (no GPU needed), and the fake implementations used by torch.compile."""

import pytest
import torch

from moejit import ops, registry
from moejit.errors import MoejitInputError
from moejit.ops.fp8 import GEMM_CONFIGS

FP8 = torch.float8_e4m3fn


@pytest.mark.parametrize("rows, e, want", [
    (8, 8, "swap16"),          # Mixtral decode, M=4 topk=2
    (64 * 8, 256, "swap16"),   # Qwen M=64 topk=8: 2 rows per expert (K = 4096 here: not wide16)
    (128, 8, "swap32"),        # Mixtral M=64: 16 rows per expert
    (136, 8, "swap64"),        # 17 rows per expert
    (1024 * 8, 256, "swap64"),  # Qwen M=1024: 32 rows per expert
    (264, 8, "swap96"),        # 33 rows per expert
    (512, 8, "swap96"),        # Mixtral M=256: 64 rows per expert
    (2048 * 8, 256, "swap96"),  # Qwen / DeepSeek-V3 M=2048: 64 rows per expert
    (520, 8, "coop128"),       # 65 rows per expert
    (4096 * 8, 256, "coop128"),
    (0, 8, "swap16"),
])
def test_grouped_mm_config(rows, e, want):
    assert ops.grouped_mm_config(rows, e, 4096, 4096) == want
    assert want in GEMM_CONFIGS


@pytest.mark.parametrize("rows, e, n, k, want", [
    (64 * 8, 256, 2048, 512, "wide16"),    # Qwen3.6 GEMM2 at M=64: ~220 experts × 16 tiles of 128 rows
    (16 * 8, 256, 2048, 512, "wide16"),    # M=16: ~101 × 16
    (4 * 8, 256, 2048, 512, "swap16"),     # M=4: ~30 × 16 = 480 tiles
    (64 * 8, 256, 1024, 2048, "wide16"),   # Qwen3.6 GEMM1 at M=64: ~220 × 8
    (16 * 8, 256, 1024, 2048, "swap16"),   # ... at M=16: ~101 × 8 = 810
    (4 * 8, 256, 7168, 2048, "wide16"),    # DeepSeek-V3 GEMM2 at M=4: ~30 experts × 56 tiles
    (4 * 8, 256, 4096, 7168, "swap16"),    # its GEMM1: K = 7168
    (8, 8, 2 * 14336, 4096, "swap16"),     # Mixtral GEMM1 at M=4: K = 4096
    (8, 8, 4096, 14336, "swap16"),         # Mixtral GEMM2 at M=4 (split over K instead)
])
def test_wide_decode_tiles_for_short_k_and_thousands_of_tiles(rows, e, n, k, want):
    assert ops.grouped_mm_config(rows, e, n, k) == want


@pytest.mark.parametrize("rows, e, n, k, config, sms, want", [
    (8, 8, 4096, 14336, "swap16", 132, 4),      # Mixtral GEMM2 at M=4: ~5.3 experts · 32 tiles on 264 slots
    (2, 8, 4096, 14336, "swap16", 132, 4),      # M=1: ~1.9 experts; 4 slices fill 91% of the last wave, as 8 do
    (16, 8, 4096, 14336, "swap16", 132, 1),     # M=8: ~7.2 experts, 87% already
    (128, 8, 4096, 14336, "swap32", 132, 1),    # M=64: 8 · 32 = 256 tiles on 264 slots
    (32, 256, 7168, 2048, "swap16", 132, 1),    # DeepSeek-V3 M=4: 32·56 tiles fill 13 waves
    (512, 256, 2048, 512, "swap16", 132, 1),    # Qwen M=64: K = 512 is too short to split
    (8, 8, 4096, 14336, "coop128", 132, 1),     # only swapped (decode) configurations split
    (8, 8, 4096, 14336, "swap16", 0, 1),        # no GPU (fake-tensor trace): no split
    (8, 8, 4096, 2176, "swap16", 132, 1),       # K/2 = 1088 is not a multiple of 128
    (0, 8, 4096, 14336, "swap16", 132, 1),
])
def test_grouped_mm_k_splits(rows, e, n, k, config, sms, want):
    got = ops.grouped_mm_k_splits(rows, e, n, k, config, sms)
    assert got == want
    assert k % (128 * got) == 0


def test_validation_before_any_kernel():
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    with pytest.raises(MoejitInputError, match="CUDA"):
        ops.fp8_quant(x)
    with pytest.raises(MoejitInputError, match="CUDA"):
        ops.silu_mul_fp8_quant(x)
    a = torch.zeros(4, 64).to(FP8)
    b = torch.zeros(2, 32, 64).to(FP8)
    offsets = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(MoejitInputError, match="CUDA"):
        ops.cutlass_fp8_grouped_mm(a, b, offsets, torch.ones(1), torch.ones(2))
    with pytest.raises(MoejitInputError, match="a must have dtype"):
        ops.cutlass_fp8_grouped_mm(a.float(), b, offsets, torch.ones(1), torch.ones(2))
    for bad in (0, 17, 2.0, True):
        with pytest.raises(MoejitInputError, match="k_splits must be an int"):
            ops.cutlass_fp8_grouped_mm(a, b, offsets, torch.ones(1), torch.ones(2), k_splits=bad)
    w1 = torch.zeros(2, 64, 48).to(FP8)
    w2 = torch.zeros(2, 48, 32).to(FP8)
    with pytest.raises(MoejitInputError, match="CUDA"):
        ops.cutlass_moe_fp8(torch.randn(3, 48, dtype=torch.bfloat16), w1, w2, torch.rand(3, 1),
                            torch.zeros(3, 1, dtype=torch.int32), torch.ones(2), torch.ones(2))


def test_fakes_give_the_right_shapes():
    fakes = registry.ops()
    x = torch.empty(5, 64, dtype=torch.bfloat16, device="meta")
    q, s = fakes["fp8_quant"].fake(x, None, True, None)
    assert q.shape == (5, 64) and q.dtype == FP8 and s.shape == (5, 1)
    q, s = fakes["silu_mul_fp8_quant"].fake(x, None, False, None, None)
    assert q.shape == (5, 32) and s.shape == (1,)
    a = torch.empty(7, 64, dtype=FP8, device="meta")
    b = torch.empty(3, 48, 64, dtype=FP8, device="meta")
    out = fakes["cutlass_fp8_grouped_mm"].fake(a, b, None, None, None, torch.float32, 0)
    assert out.shape == (7, 48) and out.dtype == torch.float32
