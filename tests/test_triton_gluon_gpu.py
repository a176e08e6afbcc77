"""GPU tests of the warp-specialized Gluon FP8 GEMM (moejit.triton.gluon_moe), alone and inside the Triton FP8
layer (``MOEJIT_TRITON_GLUON=force`` puts both of the layer's GEMMs on it wherever it can run).

Tolerances:
- the layer: as tests/test_triton_fp8_gpu.py (≤ 1e-2 vs moe_fp8_ref, ≤ 0.08 vs moe_ref);
- one GEMM against the tl.dot kernel: ≤ 5e-3 relative Frobenius error. Both sum the same float32 partials, each
  promoted every 128 products, in a different order, then round to bf16 (2^-9 relative per element); against a
  float32 product of the dequantized operands, ≤ 5e-3 as well (the tensor core's reduced-precision accumulation
  inside each 128-product partial adds ~1e-4).
"""

import pytest
import torch
import triton_layer_cases as cases

from moejit.moe.weights import quantize_weights_fp8
from moejit.reference import moe_fp8_ref, rel_error

FP8 = torch.float8_e4m3fn
weights = cases.WeightCache(quantize_weights_fp8)


def _sm90():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _sm90(), reason="the Gluon kernel needs sm_90")]


@pytest.fixture
def gen():
    return cases.cuda_generator()


@pytest.fixture(params=["force", "force64"])
def gluon_calls(monkeypatch, request):
    """Force the Gluon kernel in the layer, with 128-row and with 64-row tiles; the list collects one entry per
    Gluon GEMM launched."""
    from moejit.triton import gluon_moe

    monkeypatch.setenv("MOEJIT_TRITON_GLUON", request.param)
    calls = []
    real = gluon_moe.invoke_gluon_moe_gemm

    def counted(*args, **kwargs):
        calls.append(kwargs.get("silu_mul", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(gluon_moe, "invoke_gluon_moe_gemm", counted)
    return calls


def run_layer(name, mode, m, gen, **kw):
    from moejit.ops import triton_moe_fp8

    return cases.run_layer(triton_moe_fp8, moe_fp8_ref, weights, 448, name, mode, m, gen, **kw)


CASES = [(name, mode, m) for name in cases.SHAPES
         for mode in ("token_channel", "tensor_tensor", "static_tensor", "tensor_channel") for m in (1, 37, 700)]
CASES += [("qwen3.6-35b-a3b", "token_channel", 4096), ("mixtral-8x7b", "token_channel", 2048),
          ("deepseek-v3-tp8", "tensor_channel", 2048)]


@pytest.mark.parametrize("name,mode,m", CASES)
def test_layer_vs_references(gen, gluon_calls, name, mode, m):
    out, ref, inputs = run_layer(name, mode, m, gen)
    assert gluon_calls == [True, False], "both GEMMs should have run on the Gluon kernel"
    cases.check_vs_references(out, ref, inputs, f"gluon {name} {mode} M={m}", mode)


def test_hot_empty_dropped_topk1_fp16(gen, gluon_calls):
    cases.check_hot_empty_dropped_topk1_fp16(run_layer, gen, all_dropped_mode="token_channel")
    assert gluon_calls, "the Gluon kernel never ran"


def test_cuda_graph(gen, gluon_calls):
    from moejit.ops import triton_moe_fp8

    cases.check_cuda_graph(triton_moe_fp8, moe_fp8_ref, weights, "token_channel", gen)
    assert gluon_calls


def _dequant_rows(a_q, a_s, w, ws, ids_flat, slots, top_k, silu, n):
    rows = []
    for s in slots.tolist():
        e = int(ids_flat[s])
        y = (w[e].float() * ws[e].float()[:, None]) @ (a_q[s // top_k].float() * a_s[s // top_k].float())
        if silu:
            y = y[:n] / (1 + torch.exp(-y[:n])) * y[n:]
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("silu_mul", [True, False])
@pytest.mark.parametrize("block_m,stages,group_m", [(128, 4, 8), (128, 6, 1), (64, 5, 1), (64, 2, 4)])
def test_gemm_matches_tl_dot_and_leaves_dropped_rows(gen, silu_mul, block_m, stages, group_m):
    """One GEMM on the Gluon kernel and on the tl.dot kernel, same inputs: dropped slots (id -1) and a hot
    expert; the output is poisoned with NaN first, so rows of dropped slots must stay NaN (unwritten) and every
    live row must be written."""
    from moejit.triton import gluon_moe
    from moejit.triton.align import align_block_size
    from moejit.triton.fused_moe import A_ROW, W_CHANNEL, invoke_fused_moe_gemm
    from moejit.triton.quant import quantize_activations

    bn = gluon_moe.TILE_VALUES // block_m // (2 if silu_mul else 1)  # the widest tile that fits
    e, top_k, k, n = 16, 4, 1024, 352  # N not a multiple of 64: a partial last column tile
    m = 300
    w_rows = 2 * n if silu_mul else n
    w, ws = quantize_weights_fp8((torch.randn(e, w_rows, k, device="cuda", generator=gen) / k ** 0.5).bfloat16(),
                                 True, None)
    a = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
    a_q, a_s = quantize_activations(a, FP8, per_token=True)
    tw, ids = cases.routing(m, e, top_k, gen)
    ids[:150, 0] = 5  # a hot expert
    ids[::9, 2] = -1  # dropped slots
    cfg = dict(BLOCK_SIZE_M=block_m, BLOCK_SIZE_N=bn, GROUP_SIZE_M=group_m, gluon=1, gluon_stages=stages)
    routed = None if silu_mul else tw
    out = torch.full((m * top_k, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    gluon_moe.invoke_gluon_moe_gemm(a_q, w, out, a_s, ws, routed, align_block_size(ids, e, block_m), top_k, A_ROW,
                                    W_CHANNEL, cfg, silu_mul=silu_mul)
    ref_cfg = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    expect = torch.zeros_like(out)
    invoke_fused_moe_gemm(a_q, w, expect, a_s, ws, routed, align_block_size(ids, e, 64), top_k, A_ROW, W_CHANNEL,
                          ref_cfg, None, silu_mul=silu_mul)
    live = (ids.flatten() >= 0)
    assert torch.isnan(out[~live].float()).all(), "a dropped slot's row was written"
    assert not torch.isnan(out[live].float()).any(), "a live row was left unwritten"
    assert rel_error(out[live], expect[live]) <= 5e-3
    slots = torch.nonzero(live).flatten()[:: max(1, int(live.sum()) // 40)]
    fp32 = _dequant_rows(a_q, a_s, w, ws, ids.flatten(), slots, top_k, silu_mul, n)
    if routed is not None:
        fp32 = fp32 * tw.flatten()[slots].float()[:, None]
    assert rel_error(out[slots], fp32) <= 5e-3
