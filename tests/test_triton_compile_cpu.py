"""Every Triton kernel variant the layers launch, compiled for Hopper (sm_90) without a GPU (tests/triton_compile.py).

The interpreter tests check the kernels' arithmetic; they do not run Triton's code generation, where 8-bit
``tl.dot`` shape rules, constexpr handling, register allocation and shared memory are decided. Here the layers run
on ``meta`` tensors at real model shapes, with every kernel compiled (not launched) for sm_90 with the arguments
and the config — from the shape heuristic — that a GPU run would use: a kernel that does not compile, or a config
needing more shared memory than an H100/H200 block can have, fails here, on the CPU.
"""

import pytest
import torch
from triton_compile import MAX_SHARED_BYTES, compile_only, ptxas_report, spill_bytes

from moejit.int8 import quant as int8_quant
from moejit.moe.triton_fp8 import _fused_moe_quantized
from moejit.triton import align, configs, fused_moe, gluon_moe, quant

FP8 = torch.float8_e4m3fn
META = dict(device="meta")

# (E, topk, K, N) at TP 1 unless named otherwise
SHAPES = {"mixtral-8x7b": (8, 2, 4096, 14336), "qwen3.6-35b-a3b": (256, 8, 2048, 512),
          "deepseek-v3-tp8": (256, 8, 7168, 256)}
# (dtype, shape, mode, M): M picks the heuristic's tile (from the rows per expert, M·topk/E), so each dtype meets
# its tile sizes and scale modes
LAYER_CASES = [
    (FP8, "qwen3.6-35b-a3b", "token_channel", 4),
    (FP8, "qwen3.6-35b-a3b", "token_channel", 8192),
    (FP8, "mixtral-8x7b", "tensor_tensor", 128),
    (FP8, "mixtral-8x7b", "tensor_channel", 512),
    (FP8, "deepseek-v3-tp8", "block", 64),
    (FP8, "deepseek-v3-tp8", "block", 4096),
    (FP8, "deepseek-v3-tp8", "block", 8192),
    (torch.int8, "qwen3.6-35b-a3b", "token_channel", 8192),
    (torch.int8, "mixtral-8x7b", "tensor_tensor", 512),
    (torch.int8, "deepseek-v3-tp8", "block", 128),
    (torch.int8, "deepseek-v3-tp8", "block", 8192),
]


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("MOEJIT_ALIGN", "triton")
    return compile_only(monkeypatch, align, quant, fused_moe, int8_quant, gluon_moe)


def _layer_inputs(dtype, shape, mode, m):
    e, topk, k, n = SHAPES[shape]
    a = torch.empty(m, k, dtype=torch.bfloat16, **META)
    w1, w2 = torch.empty(e, 2 * n, k, dtype=dtype, **META), torch.empty(e, k, n, dtype=dtype, **META)
    routing = torch.empty(m, topk, **META), torch.empty(m, topk, dtype=torch.int32, **META)
    if mode == "block":
        s1, s2 = torch.empty(e, 2 * n // 128, k // 128, **META), torch.empty(e, k // 128, n // 128, **META)
    elif mode.endswith("channel"):
        s1, s2 = torch.empty(e, 2 * n, **META), torch.empty(e, k, **META)
    else:
        s1, s2 = torch.empty(e, **META), torch.empty(e, **META)
    return a, w1, w2, routing, s1, s2


@pytest.mark.parametrize("dtype, shape, mode, m", LAYER_CASES)
def test_layer_kernels_compile_for_hopper(compiled, dtype, shape, mode, m):
    a, w1, w2, (tw, ids), s1, s2 = _layer_inputs(dtype, shape, mode, m)
    block = (128, 128) if mode == "block" else None
    out = _fused_moe_quantized(a, w1, w2, tw, ids, s1, s2, None, None, mode.startswith("token"),
                               mode.endswith("channel"), block, torch.bfloat16)
    assert out.shape == a.shape
    names = [c.kernel for c in compiled]
    assert names.count("fused_moe_kernel") == 2 and "moe_sum_kernel" in names and "_align_place_kernel" in names
    gemm1 = next(c for c in compiled if c.kernel == "fused_moe_kernel")
    assert gemm1.constexprs["SILU_MUL"] and gemm1.constexprs["BLOCK_SIZE_M"] == _heuristic_tile(shape, mode, m)
    for c in compiled:
        assert c.shared <= MAX_SHARED_BYTES, f"{c.kernel} {c.constexprs} needs {c.shared} B of shared memory"


def _heuristic_tile(shape, mode, m):
    e, topk, k, n = SHAPES[shape]
    return configs.heuristic_config(m, e, n, k, topk, (128, 128) if mode == "block" else None)["BLOCK_SIZE_M"]


def test_cases_cover_every_tile_size_per_dtype():
    for dtype in (FP8, torch.int8):
        tiles = {_heuristic_tile(shape, mode, m) for d, shape, mode, m in LAYER_CASES if d == dtype}
        assert tiles >= ({16, 64, 128} if dtype == torch.int8 else {16, 32, 64, 128})


# (shape, M): the hybrid layer's tiles (heuristic with per-K-block scales), one super group (K = 2048) and two
# (Mixtral's GEMM2: K = 14336 = 112 blocks > 65)
HYBRID_CASES = [("qwen3.6-35b-a3b", 4), ("qwen3.6-35b-a3b", 1024), ("qwen3.6-35b-a3b", 8192), ("mixtral-8x7b", 4),
                ("mixtral-8x7b", 512)]


@pytest.mark.parametrize("shape, m", HYBRID_CASES)
def test_int8_hybrid_layer_kernels_compile_for_hopper(compiled, monkeypatch, shape, m):
    from moejit.int8.format import HybridFormat
    from moejit.moe.triton_int8 import _fused_moe_hybrid

    monkeypatch.setattr(int8_quant, "interpreting", lambda: True)  # lets the quantizers take meta tensors
    a, w1, w2, (tw, ids), s1, s2 = _layer_inputs(torch.int8, shape, "token_channel", m)
    out = _fused_moe_hybrid(a, w1, w2, s1, s2, tw, ids, HybridFormat(128, 256, 16))
    assert out.shape == a.shape
    gemms = [c for c in compiled if c.kernel == "fused_moe_kernel"]
    assert len(gemms) == 2 and all(c.constexprs["A_MODE"] == fused_moe.A_HYBRID for c in gemms)
    assert gemms[0].constexprs["SILU_MUL"] and gemms[0].constexprs["ONE_GROUP"]
    assert gemms[1].constexprs["ONE_GROUP"] == (shape != "mixtral-8x7b")
    for c in compiled:
        assert c.shared <= MAX_SHARED_BYTES, f"{c.kernel} {c.constexprs} needs {c.shared} B of shared memory"


@pytest.mark.parametrize("variant", ["plain", "permute", "silu", "scales"])
@pytest.mark.parametrize("k", [2048, 7168])
def test_int8_hybrid_quantizers_compile_for_hopper(compiled, monkeypatch, variant, k):
    monkeypatch.setattr(int8_quant, "interpreting", lambda: True)  # lets the wrappers take meta tensors
    rows = 512
    if variant == "plain":
        int8_quant.int8_hybrid_quant(torch.empty(rows, k, dtype=torch.bfloat16, **META))
    elif variant == "permute":
        int8_quant.int8_hybrid_permute_quant(torch.empty(rows // 8, k, dtype=torch.bfloat16, **META),
                                             torch.empty(rows, dtype=torch.int32, **META), 8)
    elif variant == "silu":
        int8_quant.int8_hybrid_silu_quant(torch.empty(rows, 2 * k, dtype=torch.bfloat16, **META))
    else:
        int8_quant.int8_hybrid_permute_scales(torch.empty(rows // 8, k // 128, dtype=torch.int32, **META),
                                              torch.empty(rows // 8, 1, **META),
                                              torch.empty(rows, dtype=torch.int32, **META), 8)
    # the permute variant first inverts the permutation (a small kernel) unless it is given the inverse
    expected = {"permute": ["_invert_kernel", "_int8_hybrid_quant_kernel"], "scales": ["_permute_scales_kernel"]}
    expected = expected.get(variant, ["_int8_hybrid_quant_kernel"])
    assert [c.kernel for c in compiled] == expected
    assert all(c.shared <= MAX_SHARED_BYTES for c in compiled)
    # the compiled quantizer divides by reciprocals with an fma correction (the interpreter's path is div_rn)
    assert all(c.constexprs["FAST"] for c in compiled if c.kernel == "_int8_hybrid_quant_kernel")


@pytest.mark.parametrize("dtype, shape, m", [(FP8, "mixtral-8x7b", 8192), (FP8, "qwen3.6-35b-a3b", 64),
                                             (torch.int8, "deepseek-v3-tp8", 8192)])
def test_gemm2_overrides_compile_for_hopper(compiled, dtype, shape, m):
    """A tuned table's variant: GEMM2 on its own tile (``gemm2``)."""
    a, w1, w2, (tw, ids), s1, s2 = _layer_inputs(dtype, shape, "token_channel", m)
    e, topk, k, n = SHAPES[shape]
    cfg = dict(configs.heuristic_config(m, e, n, k, topk), gemm2=dict(BLOCK_SIZE_N=256, num_stages=3))
    _fused_moe_quantized(a, w1, w2, tw, ids, s1, s2, None, None, True, True, None, torch.bfloat16, config=cfg)
    gemm1, gemm2 = [c for c in compiled if c.kernel == "fused_moe_kernel"]
    assert gemm1.constexprs["SILU_MUL"] and gemm1.constexprs["BLOCK_SIZE_N"] == cfg["BLOCK_SIZE_N"]
    assert gemm2.constexprs["BLOCK_SIZE_N"] == 256 and gemm2.num_stages == 3
    for c in compiled:
        assert c.shared <= MAX_SHARED_BYTES, f"{c.kernel} {c.constexprs} needs {c.shared} B of shared memory"


@pytest.mark.parametrize("shape, mode, m", [("mixtral-8x7b", "token_channel", 8192),
                                            ("qwen3.6-35b-a3b", "tensor_tensor", 8192),
                                            ("deepseek-v3-tp8", "tensor_channel", 4096)])
@pytest.mark.parametrize("force", ["force", "force64"])
def test_gluon_gemms_compile_without_spills_or_serialized_wgmma(compiled, monkeypatch, shape, mode, m, force):
    """``MOEJIT_TRITON_GLUON=force`` puts both GEMMs on the warp-specialized Gluon kernel. Its point is that each
    K step's wgmma runs while the previous step's partial is promoted, so ptxas must neither spill nor serialize
    the wgmmas (its C7512/C7514/C7515 notes: too few registers, accumulators read in flight, ...): a performance
    property of the compiled code, checked here without a GPU. Both tile shapes: 128 rows (the two consumer warp
    groups split the rows) and 64 (they split the columns)."""
    monkeypatch.setenv("MOEJIT_TRITON_GLUON", force)
    monkeypatch.setattr(gluon_moe, "_hopper", lambda device: True)
    monkeypatch.setattr(gluon_moe, "_num_sms", lambda index: 132)
    a, w1, w2, (tw, ids), s1, s2 = _layer_inputs(FP8, shape, mode, m)
    _fused_moe_quantized(a, w1, w2, tw, ids, s1, s2, None, None, mode.startswith("token"), mode.endswith("channel"),
                         None, torch.bfloat16)
    gemms = [c for c in compiled if c.kernel == "gluon_moe_kernel"]
    assert [c.constexprs["SILU_MUL"] for c in gemms] == [True, False]
    assert {c.constexprs["BLOCK_M"] for c in gemms} == {64 if force == "force64" else 128}
    assert "fused_moe_kernel" not in [c.kernel for c in compiled]
    for c in gemms:
        report = ptxas_report(c.ptx)
        assert spill_bytes(report) == 0, report
        assert "C75" not in report, report
        assert c.shared <= MAX_SHARED_BYTES


@pytest.mark.parametrize("block_m", [64, 128])
@pytest.mark.parametrize("silu_mul", [True, False])
def test_gluon_max_stages_fit_shared_memory(compiled, monkeypatch, block_m, silu_mul):
    """gluon_moe.MAX_STAGES is what fits: the kernel at that many stages (with the epilogue's shared-memory
    staging of the output tile) stays within an H100/H200 block's shared memory, one more stage does not, and
    the launcher refuses it with a clear error before compiling."""
    from moejit.errors import MoejitInputError
    from moejit.triton.align import Alignment
    from moejit.triton.fused_moe import A_ROW, W_CHANNEL

    monkeypatch.setattr(gluon_moe, "_num_sms", lambda index: 132)
    e, k, n, slots = 8, 1024, 512, 4096
    bn = gluon_moe.TILE_VALUES // block_m // (2 if silu_mul else 1)
    a = torch.empty(slots, k, dtype=FP8, **META)
    w = torch.empty(e, 2 * n if silu_mul else n, k, dtype=FP8, **META)
    c = torch.empty(slots, n, dtype=torch.bfloat16, **META)
    padded = slots + e * block_m
    ids = [torch.empty(size, dtype=torch.int32, **META) for size in (padded, padded // block_m, 1)]
    align = Alignment(*ids)
    routed = None if silu_mul else torch.empty(slots, **META)
    a_s, w_s = torch.empty(slots, 1, **META), torch.empty(e, w.shape[1], **META)

    def launch(cfg):
        gluon_moe.invoke_gluon_moe_gemm(a, w, c, a_s, w_s, routed, align, 2, A_ROW, W_CHANNEL, cfg, silu_mul=silu_mul)

    stages = gluon_moe.MAX_STAGES[block_m]
    for st in (stages, stages + 1):
        cfg = dict(BLOCK_SIZE_M=block_m, BLOCK_SIZE_N=bn, GROUP_SIZE_M=8, gluon=1, gluon_stages=st)
        if st > stages:
            with pytest.raises(MoejitInputError, match="gluon_stages"):
                launch(cfg)
            monkeypatch.setitem(gluon_moe.MAX_STAGES, block_m, st)  # compile it anyway: it must not fit
        launch(cfg)
        shared = compiled[-1].shared
        assert (shared <= MAX_SHARED_BYTES) == (st == stages), f"{st} stages: {shared} B of shared memory"
