"""GPU tests of the Triton FP8 MoE layer (moejit.ops.triton_moe_fp8) and its kernels.

Tolerances (relative Frobenius error, moejit.reference.rel_error):
- vs moe_fp8_ref (float32, simulating the exact quantization): ≤ 1e-2. The layer quantizes exactly like the
  reference; what differs is float32 summation order in the GEMMs and the bf16 rounding of the intermediate and of
  the per-slot GEMM2 outputs (2^-9 relative), plus the e4m3 rounding flips (1/16 relative on one element) that
  those tiny differences cause in the intermediate's quantization.
- vs moe_ref (float32, unquantized weights and activations): ≤ 0.08 — e4m3 has 3 mantissa bits (≤ 6% relative
  rounding per element, ~2-3% rms through two quantized GEMMs).
"""

import pytest
import torch
import triton_layer_cases as cases

from moejit.errors import MoejitInputError
from moejit.moe.weights import quantize_weights_fp8
from moejit.reference import fp8_quant_ref, moe_fp8_ref, rel_error

pytestmark = pytest.mark.gpu

FP8 = torch.float8_e4m3fn
SHAPES, MODES = cases.SHAPES, cases.MODES
routing = cases.routing
weights = cases.WeightCache(quantize_weights_fp8)


@pytest.fixture
def gen():
    """A fresh generator per test (its seed is printed), so a failing test replays on its own."""
    return cases.cuda_generator()


def run_layer(name, mode, m, gen, **kw):
    from moejit.ops import triton_moe_fp8

    return cases.run_layer(triton_moe_fp8, moe_fp8_ref, weights, 448, name, mode, m, gen, **kw)


CASES = [(name, mode, m) for name in SHAPES for mode in MODES for m in (1, 37, 512)]
CASES += [("qwen3.6-35b-a3b", "token_channel", 4096), ("mixtral-8x7b", "token_channel", 2048),
          ("deepseek-v3-tp8", "block128", 4096), ("qwen3.6-35b-a3b", "tensor_tensor", 4096)]


@pytest.mark.parametrize("name,mode,m", CASES)
def test_layer_vs_references(gen, name, mode, m):
    out, ref, inputs = run_layer(name, mode, m, gen)
    cases.check_vs_references(out, ref, inputs, f"fp8 {name} {mode} M={m}", mode)


def test_hot_empty_dropped_topk1_fp16(gen):
    """A hot expert, empty experts, dropped slots, fp16 in / bf16 out, topk=1, every slot dropped
    (tests/triton_layer_cases.py: check_hot_empty_dropped_topk1_fp16)."""
    cases.check_hot_empty_dropped_topk1_fp16(run_layer, gen, all_dropped_mode="token_channel")


def test_m0_and_int64_ids(gen):
    from moejit.ops import triton_moe_fp8

    e, topk, k, n = SHAPES["qwen3.6-35b-a3b"]
    _, ((w1, s1), (w2, s2)) = weights("qwen3.6-35b-a3b", gen, True, None)
    a = torch.randn(0, k, device="cuda", dtype=torch.bfloat16)
    out = triton_moe_fp8(a, w1, w2, torch.ones(0, topk, device="cuda"), torch.zeros(0, topk, device="cuda",
                         dtype=torch.int32), s1, s2, per_act_token=True, per_out_ch=True)
    assert out.shape == (0, k)
    a = torch.randn(33, k, device="cuda", generator=gen).to(torch.bfloat16)
    tw, ids = routing(33, e, topk, gen, dtype=torch.int64)
    out = triton_moe_fp8(a, w1, w2, tw, ids, s1, s2, per_act_token=True, per_out_ch=True)
    ref = moe_fp8_ref(a, w1, w2, tw, ids, s1, s2, per_act_token=True)
    assert rel_error(out, ref) <= 1e-2


@pytest.mark.parametrize("mode", ["token_channel", "tensor_tensor", "block128"])
def test_cuda_graph(gen, mode):
    """Captured once, replayed on new inputs and new routing written into the captured buffers, the output
    poisoned with NaN before each replay (tests/triton_layer_cases.py: check_cuda_graph)."""
    from moejit.ops import triton_moe_fp8

    cases.check_cuda_graph(triton_moe_fp8, moe_fp8_ref, weights, mode, gen)


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_alignment_large(gen, impl):
    """Both alignments (Triton, and the CUDA kernels of moejit.ops.moe_align_block_size) against the reference:
    hot experts, dropped slots, int64 ids, one expert, more experts than one scan chunk (1024) and than the shared
    histogram holds (8192)."""
    from moejit.triton.align import align_block_size, align_block_size_ref

    cases = ((8192, 8, 384, 64, torch.int32), (8192, 8, 8, 128, torch.int32), (1, 8, 256, 16, torch.int32),
             (3000, 8, 256, 16, torch.int64), (700, 2, 1, 32, torch.int32), (500, 4, 2000, 16, torch.int64),
             (300, 8, 9000, 16, torch.int32))
    for m, topk, e, bm, id_dtype in cases:
        if impl == "triton" and e > 4096:
            continue  # the Triton kernel's per-chunk comparison matrix grows with E (a 55 s compile at E = 9000)
        ids = torch.randint(0, e, (m, topk), device="cuda", generator=gen, dtype=torch.int32)
        ids[: m // 3, 0] = e // 2  # hot expert
        ids[::5, -1] = -1
        ids = ids.to(id_dtype)
        s, ex, tot = align_block_size(ids, e, bm, impl=impl)
        rs, rex, rtot = align_block_size_ref(ids, e, bm)
        assert s.shape == rs.shape and ex.shape == rex.shape
        assert tot.item() == rtot.item() and torch.equal(ex.cpu(), rex)
        t = tot.item()
        s = s.cpu()
        # the order inside one expert's run is unspecified (chunks claim ranges with atomics): compare each run
        # as a multiset, real slots first, then the sentinel padding
        starts = torch.nonzero(torch.diff(rex[: t // bm], prepend=torch.tensor([-1]))).flatten().tolist()
        for i, b0 in enumerate(starts):
            b1 = starts[i + 1] if i + 1 < len(starts) else t // bm
            run, ref_run = s[b0 * bm:b1 * bm], rs[b0 * bm:b1 * bm]
            assert torch.equal(run.sort().values, ref_run.sort().values)
            real = int((run < m * topk).sum())
            assert (run[:real] < m * topk).all()  # padding only at the end of the run
        assert (s[t:] == m * topk).all()


def test_cuda_alignment_in_the_layer_and_in_a_graph(gen, monkeypatch):
    """MOEJIT_ALIGN=cuda: the layer gives bit-identical results (each row of the fused GEMM is computed on its own,
    so the order inside an expert's run does not matter), also replayed from a CUDA graph with new routing."""
    from moejit.ops import triton_moe_fp8

    e, topk, k, n = SHAPES["qwen3.6-35b-a3b"]
    _, ((w1, s1), (w2, s2)) = weights("qwen3.6-35b-a3b", gen, True, None)
    m = 333
    a = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    tw, ids = routing(m, e, topk, gen)
    kw = dict(per_act_token=True, per_out_ch=True)
    want = triton_moe_fp8(a, w1, w2, tw, ids, s1, s2, **kw)
    monkeypatch.setenv("MOEJIT_ALIGN", "cuda")
    assert torch.equal(triton_moe_fp8(a, w1, w2, tw, ids, s1, s2, **kw), want)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_moe_fp8(a, w1, w2, tw, ids, s1, s2, **kw)
    new_tw, new_ids = routing(m, e, topk, gen)
    new_ids[:100, 0] = 3
    tw.copy_(new_tw)
    ids.copy_(new_ids)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    monkeypatch.setenv("MOEJIT_ALIGN", "triton")
    assert torch.equal(out, triton_moe_fp8(a, w1, w2, tw, ids, s1, s2, **kw))


@pytest.mark.parametrize("mode", ["static", "tensor", "token", "group"])
def test_quant_exact(gen, mode):
    """On hardware conversions the Triton quantization equals fp8_quant_ref bit for bit."""
    from moejit.triton.quant import quantize_activations

    x = (torch.randn(257, 2048, device="cuda", generator=gen) * 4).to(torch.bfloat16)
    x[3] = 0
    kw = dict(static=dict(scale=torch.tensor([0.03], device="cuda")), tensor={}, token=dict(per_token=True),
              group=dict(group_size=128))[mode]
    q, s = quantize_activations(x, **kw)
    rq, rs = fp8_quant_ref(x, **kw)
    assert torch.equal(s.reshape(rs.shape), rs)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


@pytest.mark.parametrize("q_dtype", [FP8, torch.int8])
@pytest.mark.parametrize("rows, cols", [(4099, 512), (301, 2048), (64, 4096), (700, 14336), (70, 20480)])
def test_per_token_quant_exact(gen, q_dtype, rows, cols):
    """Per-token scales through both kernels (tiles of one or several rows read once; rows wider than 16384 in
    two passes, ``token_tile``), with dropped rows, an all-zero row, a row at the minimum scale and one whose scale
    is past the reciprocal division's range (2^100, its ``div_rn`` fallback): bit for bit as the reference."""
    from moejit.reference import int8_quant_w8a8_ref
    from moejit.triton.quant import quantize_activations, token_tile

    x = (torch.randn(rows, cols, device="cuda", generator=gen) * 4).to(torch.bfloat16)
    x[1], x[2], x[3] = 0, x[2] * 1e-30, x[3] * 1e33
    ids = torch.randint(-1, 4, (rows, 1), device="cuda", generator=gen, dtype=torch.int32)
    ids[:4] = 0
    q, s = quantize_activations(x, q_dtype, per_token=True, topk_ids=ids, num_experts=4)
    live = ids.flatten() >= 0
    ref = fp8_quant_ref if q_dtype == FP8 else int8_quant_w8a8_ref
    rq, rs = ref(x[live], per_token=True)
    assert torch.equal(s[live].view(torch.int32), rs.view(torch.int32))
    assert torch.equal(q[live].view(torch.uint8), rq.view(torch.uint8))
    assert (token_tile(cols) is None) == (cols > 16384), "the cases must cover both kernels"


@pytest.mark.parametrize("mode", ["static", "tensor", "token", "group"])
@pytest.mark.parametrize("q_dtype", [FP8, torch.int8])
def test_quant_keeps_nan(mode, q_dtype):
    """Compiled max/min drop NaN (the interpreter keeps it): a NaN must still reach its scale, as in the reference."""
    from nan_cases import check_quantizer_keeps_nan

    check_quantizer_keeps_nan("cuda", torch.Generator().manual_seed(7), q_dtype, mode)


def test_silu_quant_kernel(gen):
    """The standalone SiLU·mul + quantization kernel (the layer fuses SiLU·mul into GEMM1 instead)."""
    from moejit.triton.quant import quantize_activations

    x = torch.randn(100, 2 * 768, device="cuda", generator=gen).to(torch.bfloat16)
    ids = torch.randint(-1, 4, (100, 1), device="cuda", generator=gen, dtype=torch.int32)
    for kw in (dict(per_token=True), dict(group_size=128), {}):
        q, s = quantize_activations(x, silu_and_mul=True, topk_ids=ids, num_experts=4, **kw)
        live = ids.flatten() >= 0
        xr = torch.nn.functional.silu(x[:, :768].float()) * x[:, 768:].float()
        rq, rs = fp8_quant_ref(xr.to(torch.bfloat16)[live], **kw)
        if kw:
            s = s[live]
        torch.testing.assert_close(s.reshape(rs.shape), rs, rtol=2 ** -7, atol=0)
        from moejit.reference import fp8_dequant_ref

        g = kw.get("group_size")
        assert rel_error(fp8_dequant_ref(q[live], s, g), fp8_dequant_ref(rq, rs, g)) < 1e-2


def test_validation_errors(gen):
    from moejit.ops import triton_moe_fp8

    e, topk, k, n = SHAPES["qwen3.6-35b-a3b"]
    _, ((w1, s1), (w2, s2)) = weights("qwen3.6-35b-a3b", gen, True, None)
    _, ((b1, bs1), (b2, bs2)) = weights("qwen3.6-35b-a3b", gen, False, (128, 128))
    a = torch.randn(8, k, device="cuda", dtype=torch.bfloat16)
    tw, ids = routing(8, e, topk, gen)
    ok = dict(per_act_token=True, per_out_ch=True)

    def bad(match, *args, **kw):
        base = [a, w1, w2, tw, ids, s1, s2]
        for i, v in args:
            base[i] = v
        with pytest.raises(MoejitInputError, match=match):
            triton_moe_fp8(*base, **{**ok, **kw})

    bad("dtype", (0, a.float()))
    bad("w1", (1, w1.to(torch.bfloat16)))
    bad("w2", (2, w2[:, :, :-16].contiguous()))
    bad("rows", (4, ids[:4]))
    bad("same shape", (3, tw[:, :2]))
    bad("topk_ids holds", (4, torch.full_like(ids, e)))
    bad("per_out_ch", per_out_ch=False)
    bad("w1_scale", (5, s1[:, :7]))
    bad("activation", activation="gelu")
    bad("out_dtype", out_dtype=torch.float32)
    bad("static per-tensor", a1_scale=torch.ones(1, device="cuda"))
    bad("block_shape", (1, b1), (2, b2), (5, bs1), (6, bs2), block_shape=(128, 128))  # with per_act_token
    bad("a1_scale", (1, b1), (2, b2), (5, bs1), (6, bs2), block_shape=(128, 128), per_act_token=False,
        per_out_ch=False, a1_scale=torch.ones(1, device="cuda"))
    bad("w1_scale", (1, b1), (2, b2), block_shape=(128, 128), per_act_token=False, per_out_ch=False)
    bad("block_k", (1, b1), (2, b2), (5, bs1), (6, bs2), block_shape=(128, 96), per_act_token=False,
        per_out_ch=False)
