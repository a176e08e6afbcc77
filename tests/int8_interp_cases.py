"""INT8 hybrid Q/F Triton kernels under TRITON_INTERPRET=1 on CPU tensors, and the layer's pipeline on the CPU.
Not collected directly (no ``test_`` prefix): tests/test_int8_quant.py runs this file in a subprocess with the
interpreter switched on, because Triton picks the interpreter when a function is decorated — for its own
standard library (``tl.max``…) too, i.e. when triton is first imported.
"""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by tests/test_int8_quant.py with TRITON_INTERPRET=1", allow_module_level=True)

from moejit import ops  # noqa: E402
from moejit.errors import MoejitInputError  # noqa: E402
from moejit.int8 import format as fmt  # noqa: E402
from moejit.moe import int8_hybrid  # noqa: E402
from moejit.reference import (int8_hybrid_dequant_ref, int8_hybrid_grouped_mm_ref, int8_hybrid_quant_ref,  # noqa: E402
                              moe_int8_hybrid_ref, moe_permute_ref, moe_ref, moe_unpermute_ref, rel_error,
                              silu_and_mul_ref)


@pytest.fixture
def interpret():
    """The interpreter is on for this whole file (kept so the tests say what they need)."""


def _rand(t, k, gen, dtype=torch.bfloat16, scale=3.0):
    """Random rows whose block maxima vary a lot (so Q takes many values), never all zero."""
    x = torch.randn(t, k, generator=gen) * scale
    x *= torch.rand(t, k // 16, 1, generator=gen).pow(3).repeat_interleave(16, 1).reshape(t, k) + 0.01
    return x.to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels in the interpreter
# ---------------------------------------------------------------------------------------------------------------

CASES = [  # (T, K, B, S, q_max): odd T, K not a multiple of S·B, several super groups, the safe-length split
    (1, 128, 128, 256, 16),
    (7, 2048, 128, 256, 16),
    (5, 128 * 70, 128, 256, 16),   # 70 blocks > 65: split 65 + 5
    (3, 1024, 128, 3, 16),         # 8 blocks in groups of 3 + 3 + 2
    (4, 512, 64, 5, 4),
    (2, 256, 32, 2, 1),
]


@pytest.mark.parametrize("t, k, b, s, q_max", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quant_kernel_bit_exact(interpret, t, k, b, s, q_max, dtype, seeded):
    x = _rand(t, k, seeded, dtype)
    if t > 2:
        x[1] = 0                   # all-zero row
        x[2, : 2 * b] = 0          # zero blocks
    got = ops.int8_hybrid_quant(x, b, s, q_max)
    ref = int8_hybrid_quant_ref(x, b, s, q_max)
    for name, g, r in zip(("xq", "Q", "F"), got, ref):
        assert g.dtype == r.dtype and g.shape == r.shape, name
        assert torch.equal(g, r), f"{name} differs from the reference"


@pytest.mark.parametrize("m, topk, e, k, b, s", [(5, 2, 4, 256, 128, 256), (9, 3, 5, 1024, 128, 3),
                                                 (1, 8, 16, 512, 64, 256)])
def test_permute_quant_kernel_bit_exact(interpret, m, topk, e, k, b, s, seeded):
    hidden = _rand(m, k, seeded)
    hidden[m // 2] = 0
    ids = torch.randint(-1, e, (m, topk), generator=seeded).int()
    ids[0, 0] = -1  # at least one dropped slot
    rows, offsets, sort_idx, inv_idx = moe_permute_ref(hidden, ids, e)
    got = ops.int8_hybrid_permute_quant(hidden, sort_idx, topk, b, s, 16)
    ref = int8_hybrid_quant_ref(rows, b, s, 16)
    for name, g, r in zip(("xq", "Q", "F"), got, ref):
        assert torch.equal(g, r), f"{name} differs from quantizing the permuted rows"
    # with the layer's inverse map: the dropped slots' rows (past the last expert) are skipped, the rest equal
    live = int(offsets[-1])
    assert live < m * topk, "the case must drop slots"
    got = ops.int8_hybrid_permute_quant(hidden, sort_idx, topk, b, s, 16, inv_idx=inv_idx)
    for name, g, r in zip(("xq", "Q", "F"), got, ref):
        assert torch.equal(g[:live], r[:live]), f"{name} (inv_idx) differs from quantizing the permuted rows"


def assert_silu_quant_close(got, ref, x_f32, b, s, q_max):
    """The kernel's exp and torch's differ in the last bits, so a value right at a rounding boundary may land one
    step of xq (or Q) apart. Allow exactly that, rarely, and check the dequantized values against float32."""
    xq, q, f = got
    rxq, rq, rf = ref
    torch.testing.assert_close(f, rf, rtol=1e-5, atol=0)
    dq = (q - rq).abs()
    assert dq.max() <= 1 and (dq > 0).float().mean() <= 0.01
    same_q = (q == rq).repeat_interleave(b, 1)
    dx = (xq.int() - rxq.int()).abs()
    assert dx[same_q].max() <= 1 and (dx[same_q] > 0).float().mean() <= 0.01
    back = int8_hybrid_dequant_ref(xq, q, f, b, s, q_max)
    nb = q.shape[1]
    s_eff = fmt.effective_super_group(b, s, q_max)
    step = (q.float() * f.repeat_interleave(s_eff, 1)[:, :nb]).repeat_interleave(b, 1)
    assert ((back - x_f32).abs() <= 0.5 * step * (1 + 1e-4) + 1e-6 * x_f32.abs()).all()


@pytest.mark.parametrize("m, topk, k, b, s", [(5, 3, 512, 128, 2), (9, 8, 7168, 128, 65), (4, 1, 256, 64, 256)])
def test_permute_scales_kernel_exact(interpret, m, topk, k, b, s, seeded):
    """Q and F of the permuted rows equal the token rows' (the unfused runner's front end), for a random
    permutation; and that front end (quantize, then copy by ``sort_idx``) gives the fused kernel's bytes."""
    x = _rand(m, k, seeded)
    xq, q, f = ops.int8_hybrid_quant(x, b, s, 16)
    sort_idx = torch.randperm(m * topk, generator=seeded).int()
    q_rows, f_rows = ops.int8_hybrid_permute_scales(q, f, sort_idx, topk)
    token = sort_idx.long() // topk
    assert torch.equal(q_rows, q[token]) and torch.equal(f_rows, f[token])
    fused = ops.int8_hybrid_permute_quant(x, sort_idx, topk, b, s, 16)
    assert torch.equal(fused[0], xq[token]) and torch.equal(fused[1], q_rows) and torch.equal(fused[2], f_rows)
    with pytest.raises(MoejitInputError, match="M\\*topk"):
        ops.int8_hybrid_permute_scales(q, f, sort_idx[1:], topk)
    with pytest.raises(MoejitInputError, match="q must have dtype"):
        ops.int8_hybrid_permute_scales(q.float(), f, sort_idx, topk)
    with pytest.raises(MoejitInputError, match="same rows"):
        ops.int8_hybrid_permute_scales(q, f[1:], sort_idx, topk)


@pytest.mark.parametrize("t, n, b, s, q_max", [(1, 128, 128, 256, 16), (7, 512, 128, 256, 16),
                                               (3, 1024, 128, 3, 16), (5, 256, 64, 5, 4)])
def test_silu_quant_kernel(interpret, t, n, b, s, q_max, seeded):
    x = _rand(t, 2 * n, seeded)
    if t > 2:
        x[1] = 0
        x[2, n:] = 0   # up all zero → the activation row is all zero
    got = ops.int8_hybrid_silu_quant(x, b, s, q_max)
    act = silu_and_mul_ref(x.float())
    ref = int8_hybrid_quant_ref(act, b, s, q_max)
    assert [g.shape for g in got] == [(t, n), (t, n // b), (t, fmt.num_super_groups(n, b, s, q_max))]
    assert_silu_quant_close(got, ref, act, b, s, q_max)
    if t > 2:
        for row in (1, 2):
            assert (got[2][row] == 0).all() and (got[1][row] == 1).all() and (got[0][row] == 0).all()


def test_quant_wrappers_reject_bad_input(interpret):
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    with pytest.raises(MoejitInputError, match="multiple of block_size"):
        ops.int8_hybrid_quant(x[:, :200].contiguous())
    with pytest.raises(MoejitInputError, match="contiguous"):
        ops.int8_hybrid_quant(torch.randn(256, 4, dtype=torch.bfloat16).t())
    with pytest.raises(MoejitInputError, match="dtype"):
        ops.int8_hybrid_quant(x.to(torch.int8))
    with pytest.raises(MoejitInputError, match="q_max"):
        ops.int8_hybrid_quant(x, 128, 256, 0)
    with pytest.raises(MoejitInputError, match="even"):
        ops.int8_hybrid_silu_quant(torch.randn(4, 255, dtype=torch.bfloat16))
    with pytest.raises(MoejitInputError, match="M\\*topk"):
        ops.int8_hybrid_permute_quant(x, torch.zeros(5, dtype=torch.int32), 2)
    with pytest.raises(MoejitInputError, match="sort_idx must have dtype"):
        ops.int8_hybrid_permute_quant(x, torch.zeros(8, dtype=torch.int64), 2)
    with pytest.raises(MoejitInputError, match="inv_idx has 5 entries"):
        ops.int8_hybrid_permute_quant(x, torch.zeros(8, dtype=torch.int32), 2, inv_idx=torch.zeros(5, dtype=torch.int32))


# ---------------------------------------------------------------------------------------------------------------
# the layer's pipeline on the CPU
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def cpu_pipeline(interpret, monkeypatch):
    """Run cutlass_moe_int8_hybrid on CPU tensors: the CUDA ops become their references (the hybrid GEMM its
    exact-integer reference) and the device check is relaxed; the Triton quantizers run in the interpreter.
    Tests the pipeline's wiring: which rows, scales, offsets and super group reach which stage."""
    from moejit.moe import checks
    from moejit.ops import _validate, common

    real_check = _validate.check_tensor
    relaxed = lambda *a, **kw: real_check(*a, **{**kw, "cuda": False})  # noqa: E731
    monkeypatch.setattr(checks, "check_tensor", relaxed)
    monkeypatch.setattr(_validate, "check_tensor", relaxed)
    calls = []

    def permute(hidden, topk_ids, num_experts):
        calls.append(("permute", tuple(hidden.shape)))
        return moe_permute_ref(hidden, topk_ids, num_experts)

    def mm(*args, **kw):
        calls.append(("mm", args[7], tuple(kw)))
        return int8_hybrid_grouped_mm_ref(*args, **kw)

    monkeypatch.setattr(common, "moe_permute", permute)
    monkeypatch.setattr(common, "moe_unpermute", moe_unpermute_ref)
    monkeypatch.setattr(common, "silu_and_mul", silu_and_mul_ref)
    monkeypatch.setattr(int8_hybrid, "_hybrid_grouped_mm", mm)
    return calls


@pytest.mark.parametrize("fused_silu", [True, False])
@pytest.mark.parametrize("fused_perm,gather", [(True, False), (False, False), (False, True)])
def test_layer_pipeline_on_cpu(cpu_pipeline, fused_silu, fused_perm, gather, seeded, monkeypatch):
    m, k, n, e, topk, b, s = 6, 256, 256, 4, 2, 64, 3   # K/B = N/B = 4 blocks: groups of 3 + 1
    hidden = _rand(m, k, seeded)
    w13 = torch.randn(e, 2 * n, k, generator=seeded) / k ** 0.5
    w2 = torch.randn(e, k, n, generator=seeded) / n ** 0.5
    w13_q, w13_s = ops.quantize_weights_int8(w13)
    w2_q, w2_s = ops.quantize_weights_int8(w2)
    ids = torch.stack([torch.randperm(e, generator=seeded)[:topk] for _ in range(m)]).int()
    ids[1, 0] = -1   # a dropped slot
    tw = torch.rand(m, topk, generator=seeded)
    monkeypatch.setenv("MOEJIT_INT8_HYBRID_GATHER", "1" if gather else "0")
    out = ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, block_size=b,
                                      super_group_size=s, q_max=16, fused_silu_quant=fused_silu,
                                      fused_permute_quant=fused_perm)
    assert out.shape == (m, k) and out.dtype == hidden.dtype
    # the fused path and the gathering one sort only: no permuted copy of the activations
    assert cpu_pipeline[0] == ("permute", (m, 0) if fused_perm or gather else (m, k))
    # gathering, GEMM1 reads the token rows through sort_idx
    gemm1_kw = ("a_rows", "a_rows_div") if gather else ()
    assert [c for c in cpu_pipeline if c[0] == "mm"] == [("mm", 3, gemm1_kw), ("mm", 3, ())]
    # quantize-then-permute (unfused) and the fused kernel hand GEMM1 the same bytes: the same output, bit for bit
    other = ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, block_size=b,
                                        super_group_size=s, q_max=16, fused_silu_quant=fused_silu,
                                        fused_permute_quant=not fused_perm)
    assert torch.equal(out, other)
    ref = moe_int8_hybrid_ref(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, b, s, 16, fused_silu_quant=fused_silu)
    # The same arithmetic up to float32 summation order and one bf16 rounding of the output; a rare ±1 step of
    # xq at a rounding boundary (SiLU's exp) adds ~1e-3 at most.
    assert rel_error(out.float(), ref) < 5e-3
    # and it is an approximation of the unquantized layer
    assert rel_error(out.float(), moe_ref(hidden, w13, w2, tw, ids)) < 0.05


def test_layer_rejects_bad_input(cpu_pipeline):
    m, k, n, e = 2, 256, 128, 2
    h = torch.randn(m, k, dtype=torch.bfloat16)
    w13 = torch.zeros(e, 2 * n, k, dtype=torch.int8)
    w2 = torch.zeros(e, k, n, dtype=torch.int8)
    s13, s2 = torch.ones(e, 2 * n), torch.ones(e, k)
    ids = torch.zeros(m, 1, dtype=torch.int32)
    tw = torch.ones(m, 1)
    with pytest.raises(MoejitInputError, match="w1 must have dtype int8"):
        ops.cutlass_moe_int8_hybrid(h, w13.float(), w2, s13, s2, tw, ids)
    with pytest.raises(MoejitInputError, match="multiples of block_size"):
        ops.cutlass_moe_int8_hybrid(h, w13, w2, s13, s2, tw, ids, block_size=256)
    with pytest.raises(MoejitInputError, match="w13_scale"):
        ops.cutlass_moe_int8_hybrid(h, w13, w2, torch.ones(e, n), s2, tw, ids)
    with pytest.raises(MoejitInputError, match="w2_scale must have dtype float32"):
        ops.cutlass_moe_int8_hybrid(h, w13, w2, s13, s2.half(), tw, ids)
    with pytest.raises(MoejitInputError, match="q_max"):
        ops.cutlass_moe_int8_hybrid(h, w13, w2, s13, s2, tw, ids, q_max=5000)


def test_hybrid_quant_keeps_nan(interpret, seeded):
    from nan_cases import check_hybrid_quantizer_keeps_nan

    check_hybrid_quantizer_keeps_nan("cpu", seeded)
