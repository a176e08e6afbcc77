"""GPU tests of the CUTLASS FP8 grouped GEMM and the cutlass_moe_fp8 layer (Hopper only).

References: moejit.reference.moe_fp8_ref simulates the layer's exact quantization in float32; moe_ref is the
unquantized layer. Tolerances (relative Frobenius): ≤ 1e-2 against the simulation — what remains is the GEMM1
output being stored in bf16/fp16 before SiLU (the reference keeps float32), float32 accumulation order, 16-bit
output rounding, and the occasional one-step e4m3 flip of an intermediate value those cause (with a dynamic
per-tensor scale, also against the simulation whose intermediate amax is one bf16 value away: the scale is
discontinuous there, moving ~9% of the e4m3 roundings at once); ≤ 0.08 against the unquantized layer — e4m3
has a 3-bit mantissa (relative step 2^-4, ~2-3% RMS error per quantized operand).
"""

import math

import pytest
import torch

from cuda_graphs import capture
from triton_layer_cases import neighbouring_amax_error
from moejit import ops
from moejit.errors import MoejitInputError
from moejit.ops.fp8 import GEMM_CONFIGS
from moejit.reference import moe_fp8_ref, moe_ref, quantize_weights_fp8_ref, rel_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="the sm90_fp8 module is built for Hopper (sm_90a) only")]

FP8 = torch.float8_e4m3fn
SHAPES = {  # name: (E, topk, K, N)
    "mixtral-8x7b": (8, 2, 4096, 14336),
    "qwen3.6-35b-a3b": (256, 8, 2048, 512),
    "deepseek-v3-tp8": (256, 8, 7168, 256),
}
A_MODES = ["static", "dynamic", "token"]  # per-tensor static scale, per-tensor dynamic, per-token dynamic
B_MODES = ["tensor", "channel"]
_WEIGHTS: dict = {}


def _cuda_gen(seeded):
    return torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=seeded)))


def _weights(e, k, n, gen, per_out_ch):
    """bf16 weights (scaled so activations stay O(1)) and their e4m3 quantization; cached per shape for the run."""
    key = (e, k, n)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()  # keep one model's weights in memory at a time
        w1 = (torch.randn(e, 2 * n, k, device="cuda", generator=gen) / math.sqrt(k)).bfloat16()
        w2 = (torch.randn(e, k, n, device="cuda", generator=gen) / math.sqrt(n)).bfloat16()
        _WEIGHTS[key] = {"w": (w1, w2)}
    entry = _WEIGHTS[key]
    if per_out_ch not in entry:
        w1, w2 = entry["w"]
        q1, s1 = zip(*(quantize_weights_fp8_ref(w1[i:i + 1], per_out_ch) for i in range(e)))
        q2, s2 = zip(*(quantize_weights_fp8_ref(w2[i:i + 1], per_out_ch) for i in range(e)))
        entry[per_out_ch] = (torch.cat(q1), torch.cat(q2), torch.cat(s1), torch.cat(s2))
    return entry["w"], entry[per_out_ch]


def _inputs(m, e, topk, k, gen, dtype=torch.bfloat16):
    a = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
    logits = torch.randn(m, e, device="cuda", generator=gen)
    topk_weights, topk_ids = ops.fused_topk(a, logits, topk, renormalize=True)
    return a, topk_weights, topk_ids


def _run(a, topk_weights, topk_ids, e, k, n, a_mode, b_mode, gen, check_unquantized=True):
    per_out_ch = b_mode == "channel"
    (w1, w2), (w1_q, w2_q, w1_s, w2_s) = _weights(e, k, n, gen, per_out_ch)
    a1 = a2 = None
    if a_mode == "static":
        a1 = (a.float().abs().amax() / 448).reshape(1)
        a2 = torch.tensor([0.05], device="cuda")  # |SiLU(g)·u| of O(1) g, u stays below 0.05 · 448 = 22.4
    kw = dict(a1_scale=a1, a2_scale=a2, per_act_token=a_mode == "token")
    out = ops.cutlass_moe_fp8(a, w1_q, w2_q, topk_weights, topk_ids, w1_s, w2_s, per_out_ch=per_out_ch, **kw)
    assert out.shape == a.shape and out.dtype == a.dtype
    ref = moe_fp8_ref(a, w1_q, w2_q, topk_weights, topk_ids, w1_s, w2_s, **kw)
    err = rel_error(out, ref)
    if err > 1e-2 and a_mode == "dynamic":
        # the intermediate's one dynamic scale may sit one bf16 amax value away from the reference's with both
        # right (tests/triton_layer_cases.py, check_vs_references): compare with the reference at that amax
        err, _ = neighbouring_amax_error(
            out, lambda s: moe_fp8_ref(a, w1_q, w2_q, topk_weights, topk_ids, w1_s, w2_s, **kw, inter_amax_steps=s),
            f"{err:.4g} vs the FP8 simulation at its own amax")
    if err > 1e-2:
        # Say whether the layer is as close to the unquantized layer as the simulation is (a dynamic scale that
        # moved by one rounding step: both equally accurate) or farther (a wrong value).
        exact = moe_ref(a, w1, w2, topk_weights, topk_ids)
        pytest.fail(f"vs FP8 simulation: {err:.4f}; vs unquantized: layer {rel_error(out, exact):.4f}, simulation "
                    f"{rel_error(ref, exact):.4f}")
    if check_unquantized:
        err_u = rel_error(out, moe_ref(a, w1, w2, topk_weights, topk_ids))
        assert err_u <= 0.08, f"vs unquantized: {err_u:.4f}"
    return out


LAYER_CASES = [
    ("mixtral-8x7b", 1), ("mixtral-8x7b", 4), ("mixtral-8x7b", 64), ("mixtral-8x7b", 2048),
    ("qwen3.6-35b-a3b", 1), ("qwen3.6-35b-a3b", 200), ("qwen3.6-35b-a3b", 4096),
    ("deepseek-v3-tp8", 4), ("deepseek-v3-tp8", 1024), ("deepseek-v3-tp8", 4096),
]


@pytest.mark.parametrize("model, m", LAYER_CASES)
@pytest.mark.parametrize("b_mode", B_MODES)
@pytest.mark.parametrize("a_mode", A_MODES)
def test_layer_matches_references(model, m, a_mode, b_mode, seeded):
    e, topk, k, n = SHAPES[model]
    gen = _cuda_gen(seeded)
    a, w, ids = _inputs(m, e, topk, k, gen)
    _run(a, w, ids, e, k, n, a_mode, b_mode, gen)


@pytest.mark.parametrize("a_mode", A_MODES)
def test_hot_expert_empty_experts_and_dropped_slots(a_mode, seeded):
    e, topk, k, n = SHAPES["qwen3.6-35b-a3b"]
    gen = _cuda_gen(seeded)
    m = 300
    a, w, _ = _inputs(m, e, topk, k, gen)
    ids = torch.randint(0, 5, (m, topk), device="cuda", generator=gen).int()  # experts 5..255 stay empty
    ids[:, 0] = 7  # one hot expert gets every token
    ids[::4, 1] = -1  # dropped slots (routed to another rank)
    _run(a, w, ids, e, k, n, a_mode, "channel", gen)


@pytest.mark.parametrize("b_mode", B_MODES)
def test_topk1_and_fp16(b_mode, seeded):
    e, _, k, n = SHAPES["deepseek-v3-tp8"]
    gen = _cuda_gen(seeded)
    a, w, ids = _inputs(37, e, 1, k, gen, dtype=torch.float16)
    _run(a, w, ids, e, k, n, "token", b_mode, gen)


@pytest.mark.parametrize("config", GEMM_CONFIGS)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("a_per_row, b_per_col", [(False, False), (False, True), (True, False), (True, True)])
def test_grouped_mm_every_config_and_scale_mode(config, out_dtype, a_per_row, b_per_col, seeded):
    gen = _cuda_gen(seeded)
    e, n, k = 6, 272, 528
    counts = torch.tensor([0, 3, 150, 0, 17, 1], dtype=torch.int32)  # empty experts, one row, several tiles
    offsets = torch.zeros(e + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(counts, 0)
    rows = int(offsets[-1])
    a = (torch.randn(rows + 5, k, device="cuda", generator=gen) * 4).to(FP8)  # 5 trailing rows belong to no expert
    b = (torch.randn(e, n, k, device="cuda", generator=gen) * 4).to(FP8)
    a_s = torch.rand(rows + 5 if a_per_row else 1, device="cuda", generator=gen) + 0.5
    b_s = torch.rand((e, n) if b_per_col else (e,), device="cuda", generator=gen) + 0.5
    out = ops.cutlass_fp8_grouped_mm(a, b, offsets.cuda(), a_s, b_s, out_dtype=out_dtype, config=config)
    assert out.shape == (rows + 5, n) and out.dtype == out_dtype
    for i in range(e):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if lo == hi:
            continue
        ref = a[lo:hi].float() @ b[i].float().t()
        ref = ref * (a_s[lo:hi, None] if a_per_row else a_s) * (b_s[i][None, :] if b_per_col else b_s[i])
        # Exact products of e4m3 values accumulated in float32 (the tensor cores' partial sums are promoted every
        # 128 products), scaled, one rounding to the output type: well inside 1% (bf16 is 0.4%).
        torch.testing.assert_close(out[lo:hi].float(), ref, rtol=1e-2, atol=1e-3 * ref.abs().max().item())


@pytest.mark.parametrize("config", ["swap16", "swap32", "coop128"])
@pytest.mark.parametrize("k_splits", [2, 3, 8])
@pytest.mark.parametrize("a_per_row, b_per_col", [(False, False), (True, True)])
def test_grouped_mm_split_k_planes_sum_to_the_product(config, k_splits, a_per_row, b_per_col, seeded):
    """k_splits = S: out [S, rows, N], plane s the product over the K slice s (scaled); the planes sum to the full
    product. K = 1536: S = 3 and 8 give slices of 512 and 192 (not a multiple of the 128-deep MMA tile)."""
    gen = _cuda_gen(seeded)
    e, n, k = 5, 272, 1536
    counts = torch.tensor([2, 0, 70, 9, 1], dtype=torch.int32)
    offsets = torch.zeros(e + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(counts, 0)
    rows = int(offsets[-1])
    a = (torch.randn(rows + 3, k, device="cuda", generator=gen) * 4).to(FP8)
    b = (torch.randn(e, n, k, device="cuda", generator=gen) * 4).to(FP8)
    a_s = torch.rand(rows + 3 if a_per_row else 1, device="cuda", generator=gen) + 0.5
    b_s = torch.rand((e, n) if b_per_col else (e,), device="cuda", generator=gen) + 0.5
    torch.full((k_splits, rows + 3, n), float("nan"), device="cuda")  # freed: the output may reuse this block
    out = ops.cutlass_fp8_grouped_mm(a, b, offsets.cuda(), a_s, b_s, out_dtype=torch.float32, config=config,
                                     k_splits=k_splits)
    assert out.shape == (k_splits, rows + 3, n) and out.dtype == torch.float32
    ks = k // k_splits
    for i in range(e):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if lo == hi:
            continue
        scale = (a_s[lo:hi, None] if a_per_row else a_s).double() * \
            (b_s[i][None, :] if b_per_col else b_s[i]).double()
        for s in range(k_splits):
            part = a[lo:hi, s * ks:(s + 1) * ks].double() @ b[i, :, s * ks:(s + 1) * ks].double().t() * scale
            # float32 promotion of the tensor cores' partial sums (~14 significant bits within 128 products):
            # well inside 1e-3, while a wrong slice, plane or scale is off by O(1)
            assert rel_error(out[s, lo:hi].double(), part) <= 1e-3, (i, s)
        full = a[lo:hi].double() @ b[i].double().t() * scale
        assert rel_error(out[:, lo:hi].double().sum(0), full) <= 1e-3


def test_grouped_mm_split_k_rejects_a_k_it_cannot_cut(seeded):
    a = torch.zeros(4, 48, device="cuda").to(FP8)
    b = torch.zeros(2, 32, 48, device="cuda").to(FP8)
    offsets = torch.tensor([0, 2, 4], dtype=torch.int32, device="cuda")
    one = torch.ones(1, device="cuda")
    with pytest.raises(MoejitInputError, match="multiple of 16·k_splits"):
        ops.cutlass_fp8_grouped_mm(a, b, offsets, one, torch.ones(2, device="cuda"), k_splits=2)


@pytest.mark.parametrize("config", GEMM_CONFIGS)
def test_grouped_mm_keeps_float32_accuracy_over_a_long_k(config, seeded):
    """K = 7168 with all-positive operands (sums grow with K, so an accumulator that drops low bits loses them
    steadily): the promoted accumulation stays within 1e-3 of float64, where Hopper's unpromoted FP8 accumulation
    (~14 significant bits, truncating) would be ~0.7% low — the reason the kernels promote every 128 products."""
    gen = _cuda_gen(seeded)
    e, n, k = 3, 256, 7168
    counts = torch.tensor([40, 0, 200], dtype=torch.int32)
    offsets = torch.zeros(e + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(counts, 0)
    rows = int(offsets[-1])
    a = torch.randn(rows, k, device="cuda", generator=gen).abs().clamp(max=448).to(FP8)
    b = torch.randn(e, n, k, device="cuda", generator=gen).abs().clamp(max=448).to(FP8)
    one = torch.ones(1, device="cuda")
    out = ops.cutlass_fp8_grouped_mm(a, b, offsets.cuda(), one, torch.ones(e, device="cuda"),
                                     out_dtype=torch.float32, config=config)
    for i in (0, 2):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        ref = a[lo:hi].double() @ b[i].double().t()
        assert rel_error(out[lo:hi].double(), ref) <= 1e-3


def test_layer_in_cuda_graph_equals_eager(seeded):
    e, topk, k, n = SHAPES["qwen3.6-35b-a3b"]
    gen = _cuda_gen(seeded)
    a, w, ids = _inputs(96, e, topk, k, gen)
    _, (w1_q, w2_q, w1_s, w2_s) = _weights(e, k, n, gen, True)
    for per_act_token in (False, True):
        def layer():
            return ops.cutlass_moe_fp8(a, w1_q, w2_q, w, ids, w1_s, w2_s, per_act_token=per_act_token,
                                       per_out_ch=True)

        layer()
        graph, captured = capture(lambda: [layer() for _ in range(10)])
        for out in captured:
            out.fill_(float("nan"))  # poison: the replay must rewrite every output
        a.copy_(torch.randn(a.shape, device="cuda", generator=gen).to(a.dtype))  # new inputs, same buffers
        ids.copy_(torch.randperm(e, device="cuda", generator=gen)[:topk].repeat(a.shape[0], 1).int())
        graph.replay()
        torch.cuda.synchronize()
        eager = layer()
        for out in captured:
            assert torch.equal(out, eager)


def test_layer_rejects_bad_input(seeded):
    e, topk, k, n = 8, 2, 256, 128
    gen = _cuda_gen(seeded)
    a, w, ids = _inputs(16, e, topk, k, gen)
    w1 = torch.randn(e, 2 * n, k, device="cuda").to(FP8)
    w2 = torch.randn(e, k, n, device="cuda").to(FP8)
    s1, s2 = torch.ones(e, device="cuda"), torch.ones(e, device="cuda")
    layer = ops.cutlass_moe_fp8

    def expect(match, *args, **kw):
        with pytest.raises(MoejitInputError, match=match):
            layer(*args, **kw)

    expect("a must have dtype", a.float(), w1, w2, w, ids, s1, s2)
    expect("w1 must have dtype", a, w1.bfloat16(), w2, w, ids, s1, s2)
    expect("CUDA", a.cpu(), w1, w2, w, ids, s1, s2)
    expect("contiguous", a.t().contiguous().t(), w1, w2, w, ids, s1, s2)
    expect("w2 must be", a, w1, w2[:, :, :64].contiguous(), w, ids, s1, s2)
    expect("multiple of 16", a[:, :200].contiguous(), w1[:, :, :200].contiguous(), w2[:, :200].contiguous(), w,
           ids, s1, s2)
    expect("topk_ids holds", a, w1, w2, w, torch.full_like(ids, e), s1, s2)
    expect("w1_scale", a, w1, w2, w, ids, torch.ones(e, 3, device="cuda"), s2)
    expect("per_out_ch", a, w1, w2, w, ids, torch.ones(e, 2 * n, device="cuda"), torch.ones(e, k, device="cuda"))
    expect("a1_scale must hold one element", a, w1, w2, w, ids, s1, s2, a1_scale=torch.ones(2, device="cuda"))
    expect("per_act_token", a, w1, w2, w, ids, s1, s2, a1_scale=torch.ones(1, device="cuda"), per_act_token=True)
    expect("activation", a, w1, w2, w, ids, s1, s2, activation="gelu")
    expect("out_dtype", a, w1, w2, w, ids, s1, s2, out_dtype=torch.float32)
    expect("same shape", a, w1, w2, w[:, :1].contiguous(), ids, s1, s2)
    # The grouped GEMM's own checks.
    offsets = torch.zeros(e + 1, dtype=torch.int32, device="cuda")
    rows = torch.zeros(4, k, device="cuda").to(FP8)
    with pytest.raises(MoejitInputError, match="expert_offsets"):
        ops.cutlass_fp8_grouped_mm(rows, w1, offsets[:-1], torch.ones(1, device="cuda"), s1)
    with pytest.raises(MoejitInputError, match="a_scale"):
        ops.cutlass_fp8_grouped_mm(rows, w1, offsets, torch.ones(3, device="cuda"), s1)
    with pytest.raises(MoejitInputError, match="b_scale"):
        ops.cutlass_fp8_grouped_mm(rows, w1, offsets, torch.ones(1, device="cuda"), torch.ones(e, 5, device="cuda"))
    with pytest.raises(MoejitInputError, match="config"):
        ops.cutlass_fp8_grouped_mm(rows, w1, offsets, torch.ones(1, device="cuda"), s1, config="huge")


def test_empty_batch():
    e, k, n = 8, 256, 128
    out = ops.cutlass_moe_fp8(torch.empty(0, k, device="cuda", dtype=torch.bfloat16),
                              torch.zeros(e, 2 * n, k, device="cuda").to(FP8), torch.zeros(e, k, n, device="cuda").to(FP8),
                              torch.empty(0, 2, device="cuda"), torch.empty(0, 2, device="cuda", dtype=torch.int32),
                              torch.ones(e, device="cuda"), torch.ones(e, device="cuda"))
    assert out.shape == (0, k)
