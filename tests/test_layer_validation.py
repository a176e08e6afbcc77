"""The quantized MoE layers' shared argument checks (moejit.moe.checks.check_quantized_moe), on the CPU.

The layers reject CPU tensors first; here the CUDA requirement is switched off so every other rule can be exercised
without a GPU: each bad argument must raise MoejitInputError naming it (the GPU tests repeat a subset through the
layers themselves).
"""

import functools

import pytest
import torch

from moejit.errors import MoejitInputError
from moejit.moe import checks
from moejit.ops import _validate

FP8 = torch.float8_e4m3fn
E, K, N, M, TOPK = 4, 64, 32, 5, 2


@pytest.fixture(autouse=True)
def cpu_allowed(monkeypatch):
    monkeypatch.setattr(checks, "check_tensor", functools.partial(_validate.check_tensor, cuda=False))


def _args(**over):
    args = dict(
        a=torch.randn(M, K, dtype=torch.bfloat16),
        w1_q=torch.zeros(E, 2 * N, K).to(FP8),
        w2_q=torch.zeros(E, K, N).to(FP8),
        topk_weights=torch.rand(M, TOPK),
        topk_ids=torch.randint(0, E, (M, TOPK), dtype=torch.int32),
        w1_scale=torch.ones(E),
        w2_scale=torch.ones(E),
        a1_scale=None,
        a2_scale=None,
    )
    kw = dict(per_act_token=False, per_out_ch=False, activation="silu", out_dtype=None, weight_dtype=FP8,
              block_shape=None)
    for key, value in over.items():
        (args if key in args else kw)[key] = value
    return args, kw


def check(**over):
    args, kw = _args(**over)
    return checks.check_quantized_moe(*args.values(), **kw)


def test_valid_arguments_give_the_shape():
    shape, out_dtype = check()
    assert (shape.m, shape.k, shape.n, shape.num_experts, shape.topk) == (M, K, N, E, TOPK)
    assert out_dtype == torch.bfloat16
    shape, out_dtype = check(per_out_ch=True, w1_scale=torch.ones(E, 2 * N), w2_scale=torch.ones(E, K, 1),
                             out_dtype=torch.float16)
    assert out_dtype == torch.float16
    check(block_shape=(32, 32), w1_scale=torch.ones(E, 2, 2), w2_scale=torch.ones(E, 2, 1))
    check(a1_scale=torch.ones(1), a2_scale=torch.ones(1, 1))
    check(topk_ids=torch.full((M, TOPK), -1, dtype=torch.int64))  # -1: dropped slots are allowed


@pytest.mark.parametrize("over, match", [
    (dict(a=torch.randn(M, K)), "a must have dtype"),
    (dict(a=torch.randn(M, K, 2, dtype=torch.bfloat16)), "a must be 2-D"),
    (dict(a=torch.randn(K, M, dtype=torch.bfloat16).t()), "a must be contiguous"),
    (dict(w1_q=torch.zeros(E, 2 * N, K, dtype=torch.int8)), "w1 must have dtype"),
    (dict(w1_q=torch.zeros(E, 2 * N, K + 16).to(FP8)), "w1 is"),
    (dict(w1_q=torch.zeros(E, 2 * N + 1, K).to(FP8)), "must be even"),
    (dict(w2_q=torch.zeros(E, K, N + 16).to(FP8)), "w2 must be"),
    (dict(a=torch.randn(M, 40, dtype=torch.bfloat16), w1_q=torch.zeros(E, 2 * N, 40).to(FP8),
          w2_q=torch.zeros(E, 40, N).to(FP8)), "K = 40 must be a positive multiple of 16"),
    (dict(w1_q=torch.zeros(E, 2 * 24, K).to(FP8), w2_q=torch.zeros(E, K, 24).to(FP8)),
     "N = 24 must be a positive multiple of 16"),
    # empty GEMM dimensions: CUTLASS would store unwritten accumulators for K = 0 (GEMM2 of N = 0)
    (dict(w1_q=torch.zeros(E, 0, K).to(FP8), w2_q=torch.zeros(E, K, 0).to(FP8)),
     "N = 0 must be a positive multiple of 16"),
    (dict(a=torch.randn(M, 0, dtype=torch.bfloat16), w1_q=torch.zeros(E, 2 * N, 0).to(FP8),
          w2_q=torch.zeros(E, 0, N).to(FP8)), "K = 0 must be a positive multiple of 16"),
    (dict(w1_q=torch.zeros(0, 2 * N, K).to(FP8), w2_q=torch.zeros(0, K, N).to(FP8)), "no experts"),
    (dict(topk_ids=torch.zeros(M, TOPK)), "topk_ids must have dtype"),
    (dict(topk_ids=torch.zeros(M + 1, TOPK, dtype=torch.int32)), "topk_ids has"),
    (dict(topk_weights=torch.rand(M, TOPK + 1)), "same shape"),
    (dict(topk_ids=torch.full((M, TOPK), E, dtype=torch.int32)), f"outside \\[0, {E}\\)"),
    (dict(topk_ids=torch.full((M, TOPK), -2, dtype=torch.int32)), "outside"),
    (dict(w1_scale=torch.ones(E, 2 * N)), "pass per_out_ch=True"),
    (dict(per_out_ch=True), "per_out_ch=True needs w1_scale"),
    (dict(w2_scale=torch.ones(E + 1)), "w2_scale of shape"),
    (dict(w1_scale=torch.ones(E, dtype=torch.float64)), "w1_scale must have dtype"),
    (dict(a1_scale=torch.ones(2)), "a1_scale must hold one element"),
    (dict(a2_scale=torch.ones(1), per_act_token=True), "a2_scale is a static per-tensor scale"),
    (dict(activation="gelu"), "activation must be 'silu'"),
    (dict(out_dtype=torch.float32), "out_dtype must be"),
    (dict(block_shape=(32, 32), w1_scale=torch.ones(E, 2, 2), w2_scale=torch.ones(E, 2, 1), per_out_ch=True),
     "per_act_token/per_out_ch must be False"),
    (dict(block_shape=(32, 32), w1_scale=torch.ones(E, 2, 2), w2_scale=torch.ones(E, 2, 1),
          a1_scale=torch.ones(1)), "a1_scale/a2_scale must be None"),
    (dict(block_shape=(32, 64), w1_scale=torch.ones(E, 2, 1), w2_scale=torch.ones(E, 2, 1)),
     "must be multiples of block_k"),
    (dict(block_shape=(32, 32), w1_scale=torch.ones(E, 2, 3), w2_scale=torch.ones(E, 2, 1)),
     "w1_scale must be \\[E, N_out/32, K/32\\]"),
])
def test_each_bad_argument_is_named(over, match):
    with pytest.raises(MoejitInputError, match=match):
        check(**over)


def test_id_check_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("MOEJIT_CHECK_IDS", "0")
    check(topk_ids=torch.full((M, TOPK), E, dtype=torch.int32))  # not read: no error (kernels drop such slots)
