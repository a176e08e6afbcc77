"""GPU tests of the INT8 hybrid (Q/F) Triton quantizers and of the whole layer ``cutlass_moe_int8_hybrid``
against the float32 references that simulate the exact quantization (skipped without a GPU)."""

import pytest
import torch

from moejit import ops
from moejit.int8 import format as fmt
from moejit.moe import int8_hybrid
from moejit.reference import (int8_hybrid_dequant_ref, int8_hybrid_grouped_mm_ref, int8_hybrid_quant_ref,
                              moe_int8_hybrid_fused_ref, moe_int8_hybrid_ref, moe_permute_ref, moe_ref, rel_error,
                              silu_and_mul_ref)

pytestmark = pytest.mark.gpu

QWEN = dict(e=256, topk=8, k=2048, n=512)      # Qwen3.6-35B-A3B MoE layer
MIXTRAL = dict(e=8, topk=2, k=4096, n=14336)   # Mixtral-8x7B MoE layer (N/B = 112 blocks: two super groups)


def _rand(t, k, gen, dtype=torch.bfloat16, scale=3.0):
    x = torch.randn(t, k, generator=gen) * scale
    x *= torch.rand(t, k // 16, 1, generator=gen).pow(3).repeat_interleave(16, 1).reshape(t, k) + 0.01
    return x.to(dtype)


def _ids(m, topk, e, gen):
    """Distinct experts per token, as a router gives."""
    return torch.rand(m, e, generator=gen).topk(topk, dim=1).indices.int()


# ---------------------------------------------------------------------------------------------------------------
# Triton quantizers on the device: bit-exact against the CPU reference
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t, k, s", [(1, 2048, 256), (333, 2048, 256), (17, 14336, 256), (9, 1024, 3),
                                     (4096, 512, 256)])
def test_quant_bit_exact(dtype, t, k, s, seeded):
    x = _rand(t, k, seeded, dtype)
    x[0, :256] = 0
    if t > 2:
        x[1] = 0
        x[2] *= 1e-30  # steps below 2^-90: the kernel's division falls back from reciprocals to div_rn
    got = ops.int8_hybrid_quant(x.cuda(), 128, s, 16)
    ref = int8_hybrid_quant_ref(x, 128, s, 16)
    for name, g, r in zip(("xq", "Q", "F"), got, ref):
        assert torch.equal(g.cpu(), r), name


def test_quant_keeps_nan(seeded):
    """Compiled max drops NaN (the interpreter keeps it): a NaN must still make its super group's F NaN."""
    from nan_cases import check_hybrid_quantizer_keeps_nan

    check_hybrid_quantizer_keeps_nan("cuda", seeded)


@pytest.mark.parametrize("m, topk, e, k", [(1, 8, 256, 2048), (37, 8, 256, 2048), (300, 2, 8, 4096)])
def test_permute_quant_and_zero_width_permute(m, topk, e, k, seeded):
    hidden = _rand(m, k, seeded).cuda()
    ids = _ids(m, topk, e, seeded)
    ids[0, 0] = -1
    ids = ids.cuda()
    rows, offsets, sort_idx, inv_idx = ops.moe_permute(hidden, ids, e)
    # The fused path sorts with a zero-width hidden tensor: same permutation, no row copy.
    empty, offsets0, sort_idx0, inv_idx0 = ops.moe_permute(hidden.new_empty((m, 0)), ids, e)
    assert empty.shape == (m * topk, 0)
    assert torch.equal(offsets0, offsets) and torch.equal(sort_idx0, sort_idx) and torch.equal(inv_idx0, inv_idx)
    got = ops.int8_hybrid_permute_quant(hidden, sort_idx0, topk)
    ref = ops.int8_hybrid_quant(rows)
    for name, g, r in zip(("xq", "Q", "F"), got, ref):
        assert torch.equal(g, r), name
    # the runner's call: with moe_permute's inverse map, the dropped slot's row (past the last expert) is skipped
    live = int(offsets[-1])
    assert live == m * topk - 1
    got = ops.int8_hybrid_permute_quant(hidden, sort_idx0, topk, inv_idx=inv_idx0)
    for name, g, r in zip(("xq", "Q", "F"), got, ref):
        assert torch.equal(g[:live], r[:live]), name
    _, _, ref_sort, _ = moe_permute_ref(hidden.cpu(), ids.cpu(), e)
    assert torch.equal(sort_idx.cpu(), ref_sort)


@pytest.mark.parametrize("t, n", [(1, 512), (1000, 512), (33, 14336), (5, 128)])
def test_silu_quant(t, n, seeded):
    x = _rand(t, 2 * n, seeded)
    x[0] = 0
    xq, q, f = ops.int8_hybrid_silu_quant(x.cuda())
    act = silu_and_mul_ref(x.float())
    rxq, rq, rf = int8_hybrid_quant_ref(act)
    xq, q, f = xq.cpu(), q.cpu(), f.cpu()
    # GPU exp differs from torch's CPU exp in the last bits: F to 1e-5, and at most a rare ±1 step of Q or xq
    # where a value sits on a rounding boundary; dequantized values within half a step of the float32 activation.
    torch.testing.assert_close(f, rf, rtol=1e-5, atol=0)
    assert (q - rq).abs().max() <= 1 and ((q != rq).float().mean() <= 0.01)
    same = (q == rq).repeat_interleave(128, 1)
    dx = (xq.int() - rxq.int()).abs()[same]
    assert dx.max() <= 1 and (dx > 0).float().mean() <= 0.01
    s_eff = fmt.effective_super_group(128, 256, 16)
    step = (q.float() * f.repeat_interleave(s_eff, 1)[:, : q.shape[1]]).repeat_interleave(128, 1)
    back = int8_hybrid_dequant_ref(xq, q, f)
    assert ((back - act).abs() <= 0.5 * step * (1 + 1e-4) + 1e-6 * act.abs()).all()
    assert (f[0] == 0).all() and (q[0] == 1).all() and (xq[0] == 0).all()


# ---------------------------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------------------------

_WEIGHTS = {}


def _weights(shape):
    key = tuple(sorted(shape.items()))
    if key not in _WEIGHTS:
        _WEIGHTS.clear()  # one model's weights at a time (Mixtral's are 1.4 GB in int8)
        gen = torch.Generator(device="cuda").manual_seed(1234)
        e, k, n = shape["e"], shape["k"], shape["n"]
        w13 = (torch.randn(e, 2 * n, k, device="cuda", generator=gen) / k ** 0.5).bfloat16()
        w2 = (torch.randn(e, k, n, device="cuda", generator=gen) / n ** 0.5).bfloat16()
        _WEIGHTS[key] = (*ops.quantize_weights_int8(w13), *ops.quantize_weights_int8(w2))
        del w13, w2
    return _WEIGHTS[key]


def _inputs(shape, m, gen):
    hidden = torch.randn(m, shape["k"], generator=gen).bfloat16().cuda()
    ids = _ids(m, shape["topk"], shape["e"], gen).cuda()
    tw = torch.softmax(torch.randn(m, shape["topk"], generator=gen), dim=1).cuda()
    return hidden, ids, tw


LAYER_CASES = [(QWEN, m) for m in (1, 7, 64, 512, 2048, 8192)] + [(MIXTRAL, m) for m in (1, 96, 2048, 8192)]


@pytest.mark.parametrize("shape, m", LAYER_CASES, ids=lambda v: str(v["e"]) if isinstance(v, dict) else str(v))
@pytest.mark.parametrize("fused_silu", [True, False])
@pytest.mark.parametrize("fused_perm", [False, True])
def test_layer_matches_reference(shape, m, fused_silu, fused_perm, seeded):
    w13_q, w13_s, w2_q, w2_s = _weights(shape)
    hidden, ids, tw = _inputs(shape, m, seeded)
    out = ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, fused_silu_quant=fused_silu,
                                      fused_permute_quant=fused_perm)
    assert out.shape == hidden.shape and out.dtype == hidden.dtype
    ref = moe_int8_hybrid_ref(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, fused_silu_quant=fused_silu)
    # Same quantized operands up to float32 summation order and bf16 roundings of the GEMM outputs (~1e-3
    # relative), plus rare ±1 steps of xq at rounding boundaries after SiLU: the bound is 1e-2.
    err = rel_error(out.float(), ref)
    print(f"rel_error={err:.2e}")
    assert err <= 1e-2


@pytest.mark.parametrize("shape, m", [(QWEN, 1), (QWEN, 333), (QWEN, 4096), (MIXTRAL, 96)],
                         ids=lambda v: str(v["e"]) if isinstance(v, dict) else str(v))
def test_unfused_front_end_is_bit_identical(shape, m, seeded, monkeypatch):
    """The unfused front end quantizes the token rows and then permutes their int8 copies with Q and F (or, with
    MOEJIT_INT8_HYBRID_GATHER=1, lets GEMM1 read the token rows through sort_idx: the SM90 kernels' gathering
    producer from 32 rows per expert on, here at Qwen3.6 M=4096, the SM80 path's row copy below); the fused kernel
    quantizes while it scatters. All three hand GEMM1 the same bytes, so the layers agree bit for bit (dropped
    slots included)."""
    w13_q, w13_s, w2_q, w2_s = _weights(shape)
    hidden, ids, tw = _inputs(shape, m, seeded)
    ids[::5, 0] = -1
    outs = []
    for perm, gather in ((False, "0"), (True, "0"), (False, "1")):
        monkeypatch.setenv("MOEJIT_INT8_HYBRID_GATHER", gather)
        outs.append(ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, fused_permute_quant=perm))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], outs[2])
    ref = moe_int8_hybrid_ref(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids)
    assert rel_error(outs[0].float(), ref) <= 1e-2


def test_layer_dropped_slots_and_env_switches(monkeypatch, seeded):
    """Dropped slots, and the environment switches (the seed's VLLM_ names too) select the same path as the explicit
    arguments: bit-identical output (a switch that were ignored would show), each vs its own reference."""
    w13_q, w13_s, w2_q, w2_s = _weights(QWEN)
    hidden, ids, tw = _inputs(QWEN, 50, seeded)
    ids[::3, 1] = -1   # slots routed to no local expert
    cases = [({}, True, False), ({"VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT": "1"}, True, True),
             ({"MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT": "0"}, False, False)]
    for env, silu, perm in cases:
        for name in int8_hybrid.ENV_FUSED_SILU_QUANT + int8_hybrid.ENV_FUSED_PERMUTE_QUANT:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        out = ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids)
        explicit = ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, fused_silu_quant=silu,
                                               fused_permute_quant=perm)
        assert torch.equal(out, explicit), env
        ref = moe_int8_hybrid_ref(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, fused_silu_quant=silu)
        assert rel_error(out.float(), ref) <= 1e-2, env


def test_layer_with_torch_gemm_double(monkeypatch, seeded):
    """The runner's wiring with a torch implementation of the pinned GEMM contract (exact integer reference)."""
    monkeypatch.setattr(int8_hybrid, "_hybrid_grouped_mm", int8_hybrid_grouped_mm_ref)
    shape = dict(e=8, topk=2, k=1024, n=384)
    gen = torch.Generator().manual_seed(7)
    w13 = torch.randn(8, 768, 1024, generator=gen) / 32
    w2 = torch.randn(8, 1024, 384, generator=gen) / 20
    w13_q, w13_s = ops.quantize_weights_int8(w13.cuda())
    w2_q, w2_s = ops.quantize_weights_int8(w2.cuda())
    hidden, ids, tw = _inputs(shape, 40, seeded)
    for silu in (True, False):
        for perm in (True, False):
            out = ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, fused_silu_quant=silu,
                                              fused_permute_quant=perm)
            ref = moe_int8_hybrid_ref(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, fused_silu_quant=silu)
            assert rel_error(out.float(), ref) <= 1e-2
    assert rel_error(out.float(), moe_ref(hidden, w13.cuda(), w2.cuda(), tw, ids)) < 0.05


def _check_graph_replay(run, reference, seeded):
    """Capture ``run()`` (Qwen3.6 shape, M = 64) in a CUDA graph, give it new inputs in place, poison its output and
    replay: the replay must equal an eager call (same kernels) and match ``reference``."""
    hidden, ids, tw = _inputs(QWEN, 64, seeded)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run(hidden, ids, tw)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(hidden, ids, tw)
    new_hidden, new_ids, new_tw = _inputs(QWEN, 64, seeded)
    hidden.copy_(new_hidden)
    ids.copy_(new_ids)
    tw.copy_(new_tw)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    eager = run(hidden, ids, tw)
    assert rel_error(out.float(), eager.float()) <= 1e-6  # same kernels, same inputs
    assert rel_error(out.float(), reference(hidden, ids, tw)) <= 1e-2


@pytest.mark.parametrize("fused_silu, fused_perm, gather", [(True, False, "0"), (False, True, "0"), (True, False, "1")])
def test_layer_cuda_graph(fused_silu, fused_perm, gather, seeded, monkeypatch):
    monkeypatch.setenv("MOEJIT_INT8_HYBRID_GATHER", gather)
    w13_q, w13_s, w2_q, w2_s = _weights(QWEN)
    _check_graph_replay(
        lambda h, i, t: ops.cutlass_moe_int8_hybrid(h, w13_q, w2_q, w13_s, w2_s, t, i, fused_silu_quant=fused_silu,
                                                    fused_permute_quant=fused_perm),
        lambda h, i, t: moe_int8_hybrid_ref(h, w13_q, w2_q, w13_s, w2_s, t, i, fused_silu_quant=fused_silu), seeded)


# ---------------------------------------------------------------------------------------------------------------
# the same format on the Triton fused kernels (moejit.ops.triton_moe_int8_hybrid)
# ---------------------------------------------------------------------------------------------------------------

TRITON_LAYER_CASES = [(QWEN, m) for m in (1, 7, 64, 512, 2048, 8192)] + [(MIXTRAL, m) for m in (1, 96, 2048)]


@pytest.mark.parametrize("shape, m", TRITON_LAYER_CASES, ids=lambda v: str(v["e"]) if isinstance(v, dict) else str(v))
def test_triton_hybrid_layer_matches_reference(shape, m, seeded):
    """Against its exact-quantization reference (≤ 1e-2, as the CUTLASS runner: int32 sums of exact products, so
    only the bf16 roundings of the intermediate and per-slot outputs, and the rare xq step they flip, differ), with
    dropped slots; Mixtral's GEMM2 (K = 14336 = 112 blocks) runs two super groups. And against the CUTLASS runner,
    which computes the same format but rounds GEMM1's output before SiLU: ≤ 2e-2."""
    w13_q, w13_s, w2_q, w2_s = _weights(shape)
    hidden, ids, tw = _inputs(shape, m, seeded)
    ids[::5, 0] = -1
    poison = [torch.full((1 << 22,), float("nan"), device="cuda", dtype=torch.bfloat16) for _ in range(8)]
    del poison  # NaN-filled blocks back in the allocator's cache: an unwritten output row would show
    out = ops.triton_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids)
    assert out.shape == hidden.shape and out.dtype == hidden.dtype and torch.isfinite(out).all()
    err = rel_error(out.float(), moe_int8_hybrid_fused_ref(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids))
    print(f"rel_error={err:.2e}")
    assert err <= 1e-2
    cutlass = ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids)
    assert rel_error(out.float(), cutlass.float()) <= 2e-2


def test_triton_hybrid_layer_cuda_graph(seeded):
    w13_q, w13_s, w2_q, w2_s = _weights(QWEN)
    _check_graph_replay(lambda h, i, t: ops.triton_moe_int8_hybrid(h, w13_q, w2_q, w13_s, w2_s, t, i),
                        lambda h, i, t: moe_int8_hybrid_fused_ref(h, w13_q, w2_q, w13_s, w2_s, t, i), seeded)
