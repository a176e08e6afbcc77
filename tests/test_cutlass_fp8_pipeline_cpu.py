"""The CUTLASS FP8 layer's pipeline on the CPU: `cutlass_moe_fp8` with each CUDA op replaced by a torch
implementation of the op's contract, against `moe_fp8_ref`.

What this checks is the layer's own code between the kernels — which scale goes with which row after the
permutation (per-token scales are gathered by ``sort_idx // topk``), the valid-row count handed to the fused
SiLU·mul quantizer (a dynamic per-tensor scale must see only routed rows), the float32 GEMM1 output and the
rounding to the activation dtype, scale reshapes, dropped slots — on data where a mistake shows: token magnitudes
spread over two decades (so a wrong per-token scale is a large error), rows the layer must not read poisoned with
NaN. The kernels themselves are checked against the same contracts by the GPU tests.

Bound: the replacement ops quantize exactly like the reference, so what remains is float32 summation order and the
rare e4m3 rounding flip it causes in the intermediate; 1e-2 is the issue's bound for the exact-quantization
reference (measured: at most 2.6e-3 over 40 random 64-token cases).
"""

import functools

import pytest
import torch
import torch.nn.functional as F

import moejit.moe.checks
import moejit.ops.common
import moejit.ops.fp8
from moejit import ops, registry
from moejit.ops import _validate
from moejit.reference import (fp8_quant_ref, moe_fp8_ref, moe_permute_ref, moe_unpermute_ref,
                              quantize_weights_fp8_ref, rel_error)

FP8 = torch.float8_e4m3fn


def _limit(x, num_rows):
    return x.shape[0] if num_rows is None else max(0, min(x.shape[0], int(num_rows.reshape(-1)[0])))


def _quant_contract(v, scale, per_token, n, rows):
    """fp8_quant's contract on the first n rows of v (float32); later rows of q / per-token scales unwritten."""
    q = torch.full((rows, v.shape[1]), float("nan")).to(FP8)  # poison: e4m3 NaN
    q_valid, s = fp8_quant_ref(v[:n], scale=scale, per_token=per_token)
    q[:n] = q_valid
    if per_token:
        s_full = torch.full((rows, 1), float("nan"))
        s_full[:n] = s
        return q, s_full
    return q, s.reshape(1)


def _fp8_quant(x, scale, per_token, num_rows):
    return _quant_contract(x.float(), scale, per_token, _limit(x, num_rows), x.shape[0])


def _silu_mul_fp8_quant(x, scale, per_token, num_rows, round_dtype=None):
    n_cols = x.shape[1] // 2
    xf = x.float()
    v = (F.silu(xf[:, :n_cols]) * xf[:, n_cols:]).to(round_dtype or x.dtype).float()
    return _quant_contract(v, scale, per_token, _limit(x, num_rows), x.shape[0])


def _grouped_mm(a, b, expert_offsets, a_scale, b_scale, out_dtype, config, k_splits=1):
    """With k_splits = S: S planes [S, rows, N], plane s the scaled product over the K slice s."""
    rows, n = a.shape[0], b.shape[1]
    e = b.shape[0]
    ks = a.shape[1] // k_splits
    out = torch.full((k_splits, rows, n), float("nan"), dtype=out_dtype)  # rows outside every expert: unwritten
    a_s = a_scale.reshape(-1, 1) if a_scale.numel() == rows else a_scale.reshape(())
    b_s = b_scale.reshape(e, -1)
    for i in range(e):
        lo, hi = int(expert_offsets[i]), int(expert_offsets[i + 1])
        if hi > lo:
            a_e = a[lo:hi].float() * (a_s[lo:hi] if a_s.dim() else a_s)
            b_e = b[i].float() * b_s[i].reshape(-1, 1)
            for s in range(k_splits):
                out[s, lo:hi] = (a_e[:, s * ks:(s + 1) * ks] @ b_e[:, s * ks:(s + 1) * ks].t()).to(out_dtype)
    return out[0] if k_splits == 1 else out


def _unpermute(rows, topk_weights, inv_idx, out_dtype=None):
    """moe_unpermute's contract: [S, R, K] planes summed (float32) before the weighted reduce."""
    summed = rows.float().sum(0) if rows.dim() == 3 else rows.float()
    return moe_unpermute_ref(summed, topk_weights, inv_idx).to(out_dtype or rows.dtype)


def _permute_quant(hidden, topk_ids, num_experts, scale, per_token):
    """fp8_permute_quant's contract: moe_permute of fp8_quant's rows, per-token scales per permuted row."""
    q, s = fp8_quant_ref(hidden.float(), scale=scale, per_token=per_token)
    rows, offsets, sort_idx, inv_idx = moe_permute_ref(q, topk_ids, num_experts)
    tokens = sort_idx.long() // topk_ids.shape[1]
    return rows, (s[tokens] if per_token else s.reshape(1)), offsets, sort_idx, inv_idx


TORCH_OPS = {
    "fp8_quant": _fp8_quant,
    "fp8_permute_quant": _permute_quant,
    "silu_mul_fp8_quant": _silu_mul_fp8_quant,
    "cutlass_fp8_grouped_mm": _grouped_mm,
    "moe_permute": moe_permute_ref,
    "moe_unpermute": _unpermute,
}


@pytest.fixture(autouse=True, params=["fused", "unfused"])
def torch_kernels(monkeypatch, request):
    """Every test runs with the decode front end fused (fp8_permute_quant, the default up to 1024 slots) and
    unfused (fp8_quant then moe_permute), and records which ops the layer called."""
    monkeypatch.setenv("MOEJIT_FP8_FUSED_PERMUTE_QUANT", "1" if request.param == "fused" else "0")
    called = []

    def op(name):
        called.append(name)
        return TORCH_OPS[name]

    monkeypatch.setattr(registry, "op", op)
    cpu_ok = functools.partial(_validate.check_tensor, cuda=False)
    for module in (moejit.ops.common, moejit.ops.fp8, moejit.moe.checks):
        monkeypatch.setattr(module, "check_tensor", cpu_ok)
    return request.param, called


def _layer_inputs(gen, m, e, topk, k, n, per_out_ch, dtype=torch.bfloat16):
    spread = 10 ** (2 * torch.rand(m, 1, generator=gen) - 1)  # token magnitudes from 0.1 to 10
    a = (torch.randn(m, k, generator=gen) * spread).to(dtype)
    w1_q, w1_s = quantize_weights_fp8_ref(torch.randn(e, 2 * n, k, generator=gen) / k ** 0.5, per_out_ch)
    w2_q, w2_s = quantize_weights_fp8_ref(torch.randn(e, k, n, generator=gen) / n ** 0.5, per_out_ch)
    logits = torch.randn(m, e, generator=gen)
    topk_weights, topk_ids = torch.topk(torch.softmax(logits, dim=-1), topk, dim=-1)
    return a, w1_q, w2_q, topk_weights, topk_ids.to(torch.int32), w1_s, w2_s


def _act_kwargs(a, a_mode):
    """The layer's activation-scale arguments: static per-tensor scales (the input's calibrated, 0.5 for the
    intermediate), dynamic per-tensor or dynamic per-token."""
    static = a_mode == "static"
    return dict(a1_scale=(a.float().abs().amax() / 448).reshape(1) if static else None,
                a2_scale=torch.tensor([0.5]) if static else None, per_act_token=a_mode == "token")


@pytest.mark.parametrize("per_out_ch", [False, True])
@pytest.mark.parametrize("a_mode", ["static", "dynamic", "token"])
@pytest.mark.parametrize("m, e, topk", [(1, 8, 2), (37, 8, 2), (64, 16, 4), (20, 6, 1)])
def test_pipeline_matches_reference(seeded, torch_kernels, a_mode, per_out_ch, m, e, topk):
    k, n = 128, 64
    a, w1_q, w2_q, tw, ids, w1_s, w2_s = _layer_inputs(seeded, m, e, topk, k, n, per_out_ch)
    kw = _act_kwargs(a, a_mode)
    out = ops.cutlass_moe_fp8(a, w1_q, w2_q, tw, ids, w1_s, w2_s, per_out_ch=per_out_ch, **kw)
    fused, called = torch_kernels
    # dynamic per-tensor input scales need the whole input's maximum first: never the fused front end
    assert ("fp8_permute_quant" in called) == (fused == "fused" and a_mode != "dynamic")
    assert ("moe_permute" in called) == ("fp8_permute_quant" not in called)
    ref = moe_fp8_ref(a, w1_q, w2_q, tw, ids, w1_s, w2_s, **kw)
    assert out.dtype == a.dtype and out.shape == a.shape
    assert torch.isfinite(out).all()
    assert rel_error(out, ref) <= 1e-2


@pytest.mark.parametrize("a_mode", ["dynamic", "token"])
def test_dropped_slots_and_empty_experts(seeded, a_mode):
    """-1 ids (slots routed to no local expert) are skipped everywhere, and the dynamic per-tensor scale of the
    intermediate sees only routed rows; experts with no rows are skipped."""
    m, e, topk, k, n = 24, 8, 2, 128, 64
    a, w1_q, w2_q, tw, ids, w1_s, w2_s = _layer_inputs(seeded, m, e, topk, k, n, True, torch.float16)
    ids = torch.where(ids >= 6, torch.full_like(ids, -1), ids)  # experts 6, 7 empty; their slots dropped
    ids[0] = -1  # a token routed nowhere: its output is zero
    kw = dict(per_act_token=a_mode == "token")
    out = ops.cutlass_moe_fp8(a, w1_q, w2_q, tw, ids, w1_s, w2_s, per_out_ch=True, **kw)
    ref = moe_fp8_ref(a, w1_q, w2_q, tw, ids, w1_s, w2_s, **kw)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert rel_error(out, ref) <= 1e-2


def test_wrong_scale_gather_would_be_caught(seeded, monkeypatch):
    """The check above can fail: permuting the per-token scales wrongly (by slot instead of by token) is far out
    of bounds on these inputs, in either front end."""
    m, e, topk, k, n = 32, 8, 2, 128, 64
    a, w1_q, w2_q, tw, ids, w1_s, w2_s = _layer_inputs(seeded, m, e, topk, k, n, True)

    def broken_permute(hidden, topk_ids, num_experts):
        rows, offsets, sort_idx, inv_idx = moe_permute_ref(hidden, topk_ids, num_experts)
        return rows, offsets, sort_idx.flip(0).contiguous(), inv_idx  # wrong rows' scales

    def broken_permute_quant(*args):
        rows, s, offsets, sort_idx, inv_idx = _permute_quant(*args)
        return rows, s.flip(0).contiguous(), offsets, sort_idx, inv_idx

    monkeypatch.setitem(TORCH_OPS, "moe_permute", broken_permute)
    monkeypatch.setitem(TORCH_OPS, "fp8_permute_quant", broken_permute_quant)
    out = ops.cutlass_moe_fp8(a, w1_q, w2_q, tw, ids, w1_s, w2_s, per_act_token=True, per_out_ch=True)
    ref = moe_fp8_ref(a, w1_q, w2_q, tw, ids, w1_s, w2_s, per_act_token=True)
    assert rel_error(out, ref) > 0.1


@pytest.mark.parametrize("a_mode", ["static", "token"])
def test_split_k_gemm2_path(seeded, monkeypatch, a_mode):
    """With the SM count of an H200 the layer splits a decode GEMM2 over K (grouped_mm_k_splits: ~2.7 experts × 8
    tiles of 128 output columns on 264 slots, so 4 slices of the 4096-wide intermediate) and the unpermute sums the
    float32 planes: same result as the reference."""
    import moejit.moe.cutlass_fp8 as layer

    m, e, topk, k, n = 2, 4, 2, 1024, 4096
    assert ops.grouped_mm_k_splits(m * topk, e, k, n, "swap16", 132) == 4
    calls = []

    def recording_mm(*args, **kwargs):
        calls.append(args[7] if len(args) > 7 else kwargs.get("k_splits", 1))
        return _grouped_mm(*args, **kwargs)

    monkeypatch.setitem(TORCH_OPS, "cutlass_fp8_grouped_mm", recording_mm)
    monkeypatch.setattr(layer, "_sm_count", lambda device: 132)
    a, w1_q, w2_q, tw, ids, w1_s, w2_s = _layer_inputs(seeded, m, e, topk, k, n, True)
    kw = _act_kwargs(a, a_mode)
    out = ops.cutlass_moe_fp8(a, w1_q, w2_q, tw, ids, w1_s, w2_s, per_out_ch=True, **kw)
    assert calls == [1, 4]  # GEMM1 whole, GEMM2 in 4 K slices
    ref = moe_fp8_ref(a, w1_q, w2_q, tw, ids, w1_s, w2_s, **kw)
    assert out.dtype == a.dtype and out.shape == a.shape
    assert rel_error(out, ref) <= 1e-2


def test_more_slots_than_one_block_sorts_take_the_unfused_front_end(seeded, torch_kernels):
    """Past PERMUTE_QUANT_MAX_SLOTS slots (one block's sort in fp8_permute_quant) the layer quantizes and
    permutes in separate ops, whatever the switch says; at the limit it still fuses (when switched on)."""
    fused, called = torch_kernels
    k, n, e, topk = 32, 16, 4, 2
    limit = moejit.ops.fp8.PERMUTE_QUANT_MAX_SLOTS
    for m, expect_fused in ((limit // topk, fused == "fused"), (limit // topk + 1, False)):
        called.clear()
        a, w1_q, w2_q, tw, ids, w1_s, w2_s = _layer_inputs(seeded, m, e, topk, k, n, True)
        out = ops.cutlass_moe_fp8(a, w1_q, w2_q, tw, ids, w1_s, w2_s, per_act_token=True, per_out_ch=True)
        assert ("fp8_permute_quant" in called) == expect_fused
        ref = moe_fp8_ref(a, w1_q, w2_q, tw, ids, w1_s, w2_s, per_act_token=True)
        assert rel_error(out, ref) <= 1e-2
