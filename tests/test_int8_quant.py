"""INT8 hybrid blockwise (Q/F) format, references, the weight helper and the layer's switches on the CPU; the
Triton quantizers and the layer's pipeline run under TRITON_INTERPRET=1 in a subprocess (tests/int8_interp_cases.py:
Triton picks the interpreter when triton is imported, so it cannot be switched on inside this process).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moejit import ops
from moejit.errors import MoejitInputError
from moejit.int8 import format as fmt
from moejit.moe import int8_hybrid
from moejit.reference import (int8_hybrid_dequant_ref, int8_hybrid_mm_ref, int8_hybrid_quant_ref, moe_int8_ref,
                              moe_ref, quantize_weights_int8_ref, rel_error)
from moejit.reference.int8 import round_half_away_ref


def _rand(t, k, gen, dtype=torch.bfloat16, scale=3.0):
    """Random rows whose block maxima vary a lot (so Q takes many values), never all zero."""
    x = torch.randn(t, k, generator=gen) * scale
    x *= torch.rand(t, k // 16, 1, generator=gen).pow(3).repeat_interleave(16, 1).reshape(t, k) + 0.01
    return x.to(dtype)


def test_triton_kernels_and_pipeline_in_interpreter():
    """Runs tests/int8_interp_cases.py (kernels bit-exact vs the references, the pipeline vs moe_int8_hybrid_ref)
    in a fresh interpreter process and fails with its output if any case fails."""
    cases = Path(__file__).with_name("int8_interp_cases.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]


def test_quant_wrappers_need_cuda_outside_the_interpreter():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("the interpreter accepts CPU tensors")
    with pytest.raises(MoejitInputError, match="CUDA"):
        ops.int8_hybrid_quant(torch.randn(2, 128, dtype=torch.bfloat16))


# ---------------------------------------------------------------------------------------------------------------
# format
# ---------------------------------------------------------------------------------------------------------------

def test_safe_super_group():
    assert fmt.safe_super_group(128, 16) == 65  # design.md: B=128, q_max=16 → S ≤ 65
    for b, q in ((128, 16), (128, 1), (64, 7), (16, 65), (256, 32)):
        s = fmt.safe_super_group(b, q)
        assert s * b * 127 * 127 * q <= 2**31 - 1 < (s + 1) * b * 127 * 127 * q
    assert fmt.effective_super_group(128, 256, 16) == 65
    assert fmt.effective_super_group(128, 8, 16) == 8
    assert fmt.max_q_max(128) == 1040


def test_shapes():
    assert fmt.scale_shapes(5, 2048, 128, 256, 16) == ((5, 16), (5, 1))
    assert fmt.scale_shapes(5, 14336, 128, 256, 16) == ((5, 112), (5, 2))  # 65 + 47 blocks
    assert fmt.scale_shapes(3, 1024, 128, 3, 16) == ((3, 8), (3, 3))       # K not a multiple of S·B
    f = fmt.HybridFormat()
    assert (f.block_size, f.super_group_size, f.q_max, f.s_eff) == (128, 256, 16, 65)


@pytest.mark.parametrize("call, match", [
    (lambda: fmt.num_blocks(1000, 128), "multiple of block_size"),
    (lambda: fmt.num_blocks(0, 128), "multiple of block_size"),
    (lambda: fmt.HybridFormat(100), "power of two"),
    (lambda: fmt.HybridFormat(8), "power of two"),
    (lambda: fmt.HybridFormat(128, 0), "super_group_size"),
    (lambda: fmt.HybridFormat(128, 256, 0), "q_max"),
    (lambda: fmt.HybridFormat(128, 256, 1041), "q_max"),
    (lambda: fmt.HybridFormat(128, 256, 2.0), "q_max"),
    (lambda: fmt.HybridFormat(128, True, 16), "super_group_size"),
])
def test_format_errors(call, match):
    with pytest.raises(MoejitInputError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------------

def test_round_half_away():
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997, 2.4999998, 126.5, 0.0, -0.0])
    assert round_half_away_ref(v).tolist() == [1, 2, 3, -1, -2, -3, 0, 0, 2, 127, 0, 0]


@pytest.mark.parametrize("b, s, q_max", [(128, 256, 16), (128, 2, 16), (64, 3, 4), (32, 1, 1)])
def test_hybrid_ref_properties(b, s, q_max, seeded):
    t, k = 9, b * 7
    x = _rand(t, k, seeded).float()
    x[2] = 0                  # all-zero row
    x[4, : 3 * b] = 0         # zero blocks (and a zero super group when s ≤ 3)
    xq, q, f = int8_hybrid_quant_ref(x, b, s, q_max)
    s_eff = fmt.effective_super_group(b, s, q_max)
    nb, g = k // b, -(-(k // b) // s_eff)
    assert xq.dtype == torch.int8 and q.dtype == torch.int32 and f.dtype == torch.float32
    assert xq.shape == (t, k) and q.shape == (t, nb) and f.shape == (t, g)
    assert torch.isfinite(f).all() and (f >= 0).all()
    assert ((q >= 1) & (q <= q_max)).all() and (xq.abs() <= 127).all()
    assert (f[2] == 0).all() and (q[2] == 1).all() and (xq[2] == 0).all()
    amax = x.abs().reshape(t, nb, b).amax(-1)
    for gi in range(g):
        blocks = slice(gi * s_eff, (gi + 1) * s_eff)
        torch.testing.assert_close(f[:, gi], amax[:, blocks].amax(-1) / (127 * q_max), rtol=1e-6, atol=0)
        assert (q[:, blocks].amax(-1)[f[:, gi] > 0] == q_max).all()  # the group's largest block uses q_max
    # x ≈ xq·Q·F with an error of at most half a step per element
    back = int8_hybrid_dequant_ref(xq, q, f, b, s, q_max)
    step = (q.float() * f.repeat_interleave(s_eff, 1)[:, :nb]).repeat_interleave(b, 1)
    assert ((back - x).abs() <= 0.5 * step * (1 + 1e-5) + 1e-30).all()


def test_hybrid_mm_ref_matches_dequantized_product(seeded):
    b, s, q_max, m, n, k = 64, 3, 16, 7, 24, 64 * 8
    a = _rand(m, k, seeded)
    xq, q, f = int8_hybrid_quant_ref(a, b, s, q_max)
    w = torch.randn(n, k, generator=seeded)
    wq, ws = quantize_weights_int8_ref(w[None])
    y = int8_hybrid_mm_ref(xq, q, f, wq[0], ws[0], b, s)
    expect = int8_hybrid_dequant_ref(xq, q, f, b, s, q_max).double() @ (wq[0].double() * ws[0].double()[:, None]).t()
    torch.testing.assert_close(y.double(), expect, rtol=1e-5, atol=1e-5 * expect.abs().max().item())


def test_worst_case_does_not_overflow_with_the_effective_super_group():
    """All ±127 activations and weights with Q = q_max everywhere: the largest |I| the GEMM can meet. With
    S_eff = safe_super_group it fits in int32; one block more would overflow (so the split is necessary)."""
    b, q_max = 128, 16
    s_eff = fmt.effective_super_group(b, 256, q_max)
    k = b * (s_eff + 1)
    a = torch.full((2, k), 127, dtype=torch.int8)
    a[1] = -127
    w = torch.full((3, k), 127, dtype=torch.int8)
    a_q = torch.full((2, k // b), q_max, dtype=torch.int32)
    groups = -(-(k // b) // s_eff)
    a_f = torch.full((2, groups), 1e-6)
    y = int8_hybrid_mm_ref(a, a_q, a_f, w, torch.ones(3), b, s_eff)
    expect = (s_eff + 1) * b * 127 * 127 * q_max * 1e-6
    torch.testing.assert_close(y[0], torch.full((3,), expect), rtol=1e-5, atol=0)
    torch.testing.assert_close(y[1], torch.full((3,), -expect), rtol=1e-5, atol=0)
    with pytest.raises(OverflowError):
        int8_hybrid_mm_ref(a, a_q, a_f[:, :1], w, torch.ones(3), b, s_eff + 1)


def test_weight_quant_helper_matches_ref(seeded):
    w = torch.randn(3, 40, 96, generator=seeded).bfloat16()
    w[1, 5] = 0
    wq, s = ops.quantize_weights_int8(w)
    rq, rs = quantize_weights_int8_ref(w)
    assert wq.dtype == torch.int8 and s.shape == (3, 40) and s.dtype == torch.float32
    assert torch.equal(wq, rq) and torch.equal(s, rs)
    assert (wq[1, 5] == 0).all() and torch.isfinite(s).all()
    assert rel_error(wq.float() * s[..., None], w.float()) < 0.01
    with pytest.raises(MoejitInputError, match="3-D"):
        ops.quantize_weights_int8(w[0])


# ---------------------------------------------------------------------------------------------------------------
# the layer: switches, and its pipeline on the CPU with references in place of the CUDA ops
# ---------------------------------------------------------------------------------------------------------------

_ENV = int8_hybrid.ENV_FUSED_SILU_QUANT + int8_hybrid.ENV_FUSED_PERMUTE_QUANT


@pytest.fixture
def clean_env(monkeypatch):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_switch_defaults(clean_env):
    assert int8_hybrid.resolve_switches() == (True, False)
    assert int8_hybrid.resolve_switches(False, True) == (False, True)


@pytest.mark.parametrize("env, expect", [
    ({"MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT": "0"}, (False, False)),
    ({"VLLM_INT8_HYBRID_FUSED_SILU_QUANT": "false"}, (False, False)),
    ({"VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT": "1"}, (True, True)),
    ({"MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT": "On", "VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT": "0"}, (True, True)),
    ({"MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT": "no", "VLLM_INT8_HYBRID_FUSED_SILU_QUANT": "1"}, (False, False)),
    ({"MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT": "", "VLLM_INT8_HYBRID_FUSED_SILU_QUANT": "0"}, (False, False)),
    ({"MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT": " YES "}, (True, True)),
])
def test_switches_from_environment(clean_env, env, expect):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert int8_hybrid.resolve_switches() == expect
    assert int8_hybrid.resolve_switches(True, False) == (True, False)  # explicit arguments win


def test_switch_rejects_garbage(clean_env):
    clean_env.setenv("VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT", "maybe")
    with pytest.raises(MoejitInputError, match="VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT"):
        int8_hybrid.resolve_switches()


def test_accuracy_ordering_small(seeded):
    """The issue's accuracy claims on a small CPU shape (docs/int8.md has the full table): hybrid beats per-tensor
    and per-token INT8 on plain and outlier inputs, and is within 5% of float per-block scales on plain inputs.
    M = 128 keeps the seed-to-seed spread of the per-block ratio well inside 5% (measured over 60 seeds: mean 1.013,
    max 1.030; at M = 32 the max over 120 seeds was 1.049)."""
    m, k, n, e, topk = 128, 1024, 256, 4, 2
    a = torch.randn(m, k, generator=seeded).bfloat16()
    w13 = (torch.randn(e, 2 * n, k, generator=seeded) / k ** 0.5).bfloat16()
    w2 = (torch.randn(e, k, n, generator=seeded) / n ** 0.5).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=seeded)[:topk] for _ in range(m)]).int()
    tw = torch.rand(m, topk, generator=seeded)
    w13_q, w13_s = quantize_weights_int8_ref(w13)
    w2_q, w2_s = quantize_weights_int8_ref(w2)
    outliers = a.float().clone()
    outliers[:, torch.randperm(k, generator=seeded)[: k // 100]] *= 50
    for name, x in (("plain", a), ("outliers", outliers.bfloat16())):
        ref = moe_ref(x, w13.float(), w2.float(), tw, ids)
        err = {sch: rel_error(moe_int8_ref(x, w13_q, w2_q, w13_s, w2_s, tw, ids, sch), ref)
               for sch in ("hybrid", "per_tensor", "per_token", "per_block")}
        assert err["hybrid"] < err["per_tensor"], (name, err)
        assert err["hybrid"] <= err["per_token"], (name, err)
        if name == "plain":
            assert err["hybrid"] <= 1.05 * err["per_block"], err
