"""CPU tests of the Triton INT8 MoE layer (moejit.ops.triton_moe_int8): validation, the weight helper, the
exact-quantization reference, and — in a subprocess with TRITON_INTERPRET=1 — the int8 quantizers and the whole
layer through the shared Triton kernels.

The interpreter cases are the tests named ``test_interp_*``: skipped in a normal run, executed by
``test_kernels_under_interpreter`` (triton chooses the interpreter when a kernel is decorated, i.e. at import time,
so they need a fresh process).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moejit.errors import MoejitInputError
from moejit.moe.triton_int8 import triton_moe_int8
from moejit.moe.weights import quantize_weights_int8_w8a8
from moejit.reference import int8_quant_w8a8_ref, moe_int8_ref, moe_int8_w8a8_ref, moe_ref, rel_error

ROOT = Path(__file__).resolve().parents[1]
INTERP = os.environ.get("TRITON_INTERPRET") == "1"
interp_only = pytest.mark.skipif(not INTERP, reason="run by test_kernels_under_interpreter (TRITON_INTERPRET=1)")

if INTERP:  # numpy >= 2 and triton 3.6's interpreter: see tests/triton_interp_cases.py
    import numpy as np
    import triton.runtime.interpreter as _interp

    _orig_patch = _interp._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        _orig_patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    _interp._patch_lang_tensor = _patch_lang_tensor

    # The interpreter has no libdevice (extern_elementwise); the int8 quantizer rounds with libdevice.rint. Give it
    # numpy's rint (round half to even, what the PTX cvt.rni the GPU uses does) for these CPU runs only.
    import triton.language as _tl
    import triton.language.extra.cuda.libdevice as _libdevice

    def _rint(x, _semantic=None):
        return _tl.core.tensor(_interp.TensorHandle(np.rint(x.handle.data), x.handle.dtype.scalar), x.type)

    _libdevice.rint = _rint


def _layer_inputs(gen, m=5, k=256, n=128, e=4, topk=2, dtype=torch.float16, mode="token_channel"):
    a = torch.randn(m, k, generator=gen).to(dtype)
    w1 = torch.randn(e, 2 * n, k, generator=gen) / k ** 0.5
    w2 = torch.randn(e, k, n, generator=gen) / n ** 0.5
    block = (128, 128) if mode == "block" else None
    per_ch = mode in ("token_channel", "tensor_channel")
    (q1, s1), (q2, s2) = (quantize_weights_int8_w8a8(w1, per_ch, block), quantize_weights_int8_w8a8(w2, per_ch, block))
    ids = torch.stack([torch.randperm(e, generator=gen)[:topk] for _ in range(m)]).int()
    tw = torch.softmax(torch.randn(m, topk, generator=gen), dim=-1)
    return a, (w1, w2), (q1, q2, s1, s2), tw, ids, block


# ---------------------------------------------------------------------------------------------------------------
# Without the interpreter
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(INTERP, reason="plain CPU test")
def test_validation_on_cpu():
    a = torch.randn(4, 64, dtype=torch.bfloat16)
    w1, w2 = torch.zeros(2, 64, 64, dtype=torch.int8), torch.zeros(2, 64, 32, dtype=torch.int8)
    ids = torch.zeros(4, 1, dtype=torch.int32)
    with pytest.raises(MoejitInputError, match="CUDA"):
        triton_moe_int8(a, w1, w2, torch.ones(4, 1), ids, torch.ones(2), torch.ones(2))


@pytest.mark.skipif(INTERP, reason="plain CPU test")
def test_exported_from_ops():
    import moejit.ops

    assert moejit.ops.triton_moe_int8 is triton_moe_int8 and "triton_moe_int8" in moejit.ops.__all__
    assert triton_moe_int8.__doc__ and quantize_weights_int8_w8a8.__doc__ and moe_int8_w8a8_ref.__doc__


@pytest.mark.skipif(INTERP, reason="plain CPU test")
@pytest.mark.parametrize("per_out_ch, block, scale_shape", [(True, None, (3, 40)), (False, None, (3,)),
                                                             ((False, (16, 32), (3, 3, 3)))])
def test_weight_quantization_layouts(seeded, per_out_ch, block, scale_shape):
    w = torch.randn(3, 40, 96, generator=seeded) * 3  # 40 rows: the last 16-row block is partial
    w[1, :16, :32] = 0  # an all-zero block / channel part
    q, s = quantize_weights_int8_w8a8(w, per_out_ch, block)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and tuple(s.shape) == scale_shape
    assert q.abs().max() <= 127 and torch.isfinite(s).all() and (s > 0).all()
    if block is not None:
        full = s.repeat_interleave(16, 1).repeat_interleave(32, 2)[:, :40, :96]
    else:
        full = s[..., None] if per_out_ch else s[:, None, None]
    # within half a step everywhere; slack for the float32 rounding of q·s (|q| ≤ 127: up to 127·s·2^-24 ≈ 8e-6·s)
    # and of the subtraction (seen: a 1e-6 relative slack failed once)
    assert ((q.float() * full - w).abs() <= full * (0.5 + 1e-4)).all()
    assert (q[1, :16, :32] == 0).all() if block is not None else True
    # the scale is amax / 127, bit for bit
    amax = w.abs().amax(dim=-1) if per_out_ch and block is None else None
    if amax is not None:
        assert torch.equal(s, (amax / torch.full_like(amax, 127.0)).clamp(min=1e-12))  # IEEE division
    with pytest.raises(MoejitInputError):
        quantize_weights_int8_w8a8(w[0])
    with pytest.raises(MoejitInputError):
        quantize_weights_int8_w8a8(w, block_shape=(0, 128))


@pytest.mark.skipif(INTERP, reason="plain CPU test")
def test_activation_reference_rounds_half_to_even_and_scales_like_the_kernels():
    x = torch.tensor([[127.0, 2.5, -2.5, 0.5, 1.5, -100.0]])
    q, s = int8_quant_w8a8_ref(x, per_token=True)
    assert s.item() == torch.tensor(127.0) * (1.0 / 127)
    assert q.tolist() == [[127, 2, -2, 0, 2, -100]]  # ties to even (rint), as the Triton kernel
    q, s = int8_quant_w8a8_ref(torch.zeros(2, 256), group_size=128)
    assert (q == 0).all() and (s == 1e-12).all() and s.shape == (2, 2)
    q, s = int8_quant_w8a8_ref(x, scale=torch.tensor([0.5]))
    assert q.tolist() == [[127, 5, -5, 1, 3, -127]]


@pytest.mark.skipif(INTERP, reason="plain CPU test")
@pytest.mark.parametrize("mode", ["token_channel", "block", "tensor_tensor"])
def test_reference_agrees_with_the_other_int8_references(seeded, mode):
    """moe_int8_w8a8_ref against the unquantized layer (≤ 0.08) and, per token, against moe_int8_ref (which
    rounds half away from zero and stores GEMM1 in bf16 before SiLU: tiny differences only)."""
    a, (w1, w2), (q1, q2, s1, s2), tw, ids, block = _layer_inputs(seeded, m=33, dtype=torch.bfloat16, mode=mode)
    ref = moe_int8_w8a8_ref(a, q1, q2, tw, ids, s1, s2, per_act_token=mode == "token_channel", block_shape=block)
    assert rel_error(ref, moe_ref(a, w1, w2, tw, ids)) <= 0.08
    if mode == "token_channel":
        other = moe_int8_ref(a, q1, q2, s1, s2, tw, ids, scheme="per_token")
        assert rel_error(ref, other) <= 1e-2
    # a dropped slot (-1) contributes nothing: with row-local scales it equals the slot with router weight 0
    if mode != "tensor_tensor":  # (a per-tensor intermediate scale would see the extra live rows)
        ids2 = ids.clone()
        ids2[:, 1] = -1
        tw0 = tw.clone()
        tw0[:, 1] = 0
        kw = dict(per_act_token=mode == "token_channel", block_shape=block)
        dropped = moe_int8_w8a8_ref(a, q1, q2, tw, ids2, s1, s2, **kw)
        # equal but for float32 summation order (the CPU matmuls block by row count, and the two calls route
        # different row counts to each expert), which can flip one int8 rounding of the intermediate: one step,
        # 1/127 of a group's amax (seen: 4.1e-4 once in ~100 runs); a dropped slot that counted would be O(0.3)
        assert rel_error(dropped, moe_int8_w8a8_ref(a, q1, q2, tw0, ids, s1, s2, **kw)) < 2e-3


@pytest.mark.skipif(INTERP or os.environ.get("MOEJIT_SKIP_INTERPRETER") == "1",
                    reason="MOEJIT_SKIP_INTERPRETER=1 (or already inside the interpreter run)")
def test_kernels_under_interpreter():
    """The int8 quantizers and the whole INT8 layer through the shared Triton kernels, on the CPU."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-k", "interp_",
                           str(Path(__file__).resolve())], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert " passed" in last and "skipped" not in last.replace("deselected", ""), last


# ---------------------------------------------------------------------------------------------------------------
# Under TRITON_INTERPRET=1 (run by test_kernels_under_interpreter)
# ---------------------------------------------------------------------------------------------------------------

@interp_only
@pytest.mark.parametrize("mode", ["tensor", "token", "group", "static"])
@pytest.mark.parametrize("silu", [False, True])
def test_interp_int8_quantizer_is_bit_exact(seeded, mode, silu):
    from moejit.triton.quant import quantize_activations

    rows, cols = 7, 256
    x = (torch.randn(rows, 2 * cols if silu else cols, generator=seeded) * 3).to(torch.float16)
    x[2] = 0
    kw = dict(static=dict(scale=torch.tensor([0.04])), tensor={}, token=dict(per_token=True),
              group=dict(group_size=128))[mode]
    q, s = quantize_activations(x, torch.int8, silu_and_mul=silu, **kw)
    xr = x.float()
    if silu:
        xr = (torch.nn.functional.silu(xr[:, :cols]) * xr[:, cols:]).to(torch.float16).float()
    ref_q, ref_s = int8_quant_w8a8_ref(xr, per_token=kw.get("per_token", False), group_size=kw.get("group_size"),
                                       scale=kw.get("scale"))
    assert q.dtype == torch.int8
    if silu:  # the kernel's exp may differ from torch's by an ulp before the fp16 rounding: one step at most
        torch.testing.assert_close(s.reshape(ref_s.shape), ref_s, rtol=2 ** -9, atol=0)
        assert (q.int() - ref_q.int()).abs().max() <= 1
    else:
        assert torch.equal(s.reshape(ref_s.shape), ref_s)
        assert torch.equal(q, ref_q)


@interp_only
@pytest.mark.parametrize("mode", ["tensor", "token", "group", "static"])
def test_interp_int8_quantizer_keeps_nan(seeded, mode):
    from nan_cases import check_quantizer_keeps_nan

    check_quantizer_keeps_nan("cpu", seeded, torch.int8, mode)


@interp_only
@pytest.mark.parametrize("mode", ["token_channel", "block", "tensor_tensor"])
def test_interp_int8_layer_matches_the_exact_reference(seeded, mode):
    """The whole layer with int8 operands: int32 accumulation of exact products, so only the fp16 roundings of the
    intermediate / per-slot outputs differ from the float32 reference (and the rare int8 step they flip)."""
    from moejit.moe.triton_fp8 import _fused_moe_quantized

    a, _, (q1, q2, s1, s2), tw, ids, block = _layer_inputs(seeded, mode=mode)
    ids[1, 0] = -1  # a dropped slot
    per_token, per_ch = mode == "token_channel", mode == "token_channel"
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=2)
    out = _fused_moe_quantized(a, q1, q2, tw, ids, s1, s2, None, None, per_token, per_ch, block, torch.float16,
                               config=cfg)
    ref = moe_int8_w8a8_ref(a, q1, q2, tw, ids, s1, s2, per_act_token=per_token, block_shape=block)
    assert out.dtype == torch.float16 and out.shape == a.shape
    assert rel_error(out, ref) < 5e-3


# ---------------------------------------------------------------------------------------------------------------
# The INT8 hybrid (Q/F) layer on the same kernels (moejit.ops.triton_moe_int8_hybrid)
# ---------------------------------------------------------------------------------------------------------------

def _hybrid_inputs(gen, m=5, k=256, n=128, e=4, topk=2):
    from moejit.moe.weights import quantize_weights_int8

    a = torch.randn(m, k, generator=gen).to(torch.float16)
    w1 = torch.randn(e, 2 * n, k, generator=gen) / k ** 0.5
    w2 = torch.randn(e, k, n, generator=gen) / n ** 0.5
    (q1, s1), (q2, s2) = quantize_weights_int8(w1), quantize_weights_int8(w2)
    ids = torch.stack([torch.randperm(e, generator=gen)[:topk] for _ in range(m)]).int()
    tw = torch.softmax(torch.randn(m, topk, generator=gen), dim=-1)
    return a, (w1, w2), (q1, s1, q2, s2), tw, ids


@pytest.mark.skipif(INTERP, reason="plain CPU test")
def test_hybrid_layer_validation_and_export(seeded):
    import moejit.ops
    from moejit.moe.triton_int8 import triton_moe_int8_hybrid

    assert moejit.ops.triton_moe_int8_hybrid is triton_moe_int8_hybrid and triton_moe_int8_hybrid.__doc__
    a, _, (q1, s1, q2, s2), tw, ids = _hybrid_inputs(seeded)
    with pytest.raises(MoejitInputError, match="block_size >= 32"):
        triton_moe_int8_hybrid(a, q1, q2, s1, s2, tw, ids, block_size=16)
    with pytest.raises(MoejitInputError, match="CUDA"):
        triton_moe_int8_hybrid(a, q1, q2, s1, s2, tw, ids)


@interp_only
@pytest.mark.parametrize("block, super_group, block_k", [(128, 256, 128), (64, 2, 32), (64, 1, 64)])
def test_interp_int8_hybrid_layer_matches_the_exact_reference(seeded, block, super_group, block_k):
    """Q per K-block in int32 and F per super group: one super group (128, 256), several with K steps inside a Q
    block (64, 2, steps of 32) and one block per group (64, 1). Against the float32 reference of the exact Q/F
    quantization; only the fp16 roundings of the intermediate and of the per-slot outputs differ (a kernel that
    skipped Q, or kept a super group's sum after folding it, is off by O(1))."""
    from moejit.int8.format import HybridFormat
    from moejit.moe.triton_int8 import _fused_moe_hybrid
    from moejit.reference import moe_int8_hybrid_fused_ref

    a, (w1, w2), (q1, s1, q2, s2), tw, ids = _hybrid_inputs(seeded)
    ids[1, 0] = -1  # a dropped slot
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=block_k, GROUP_SIZE_M=1, num_warps=4, num_stages=2)
    out = _fused_moe_hybrid(a, q1, q2, s1, s2, tw, ids, HybridFormat(block, super_group, 16), config=cfg)
    ref = moe_int8_hybrid_fused_ref(a, q1, q2, s1, s2, tw, ids, block, super_group, 16)
    assert out.dtype == torch.float16 and out.shape == a.shape
    assert rel_error(out, ref) < 5e-3
    assert rel_error(ref, moe_ref(a, w1, w2, tw, ids)) < 0.08
