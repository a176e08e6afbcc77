"""GPU tests of the Triton INT8 W8A8 MoE layer (moejit.ops.triton_moe_int8).

Tolerances (relative Frobenius error, moejit.reference.rel_error), as for the FP8 layer (tests/test_triton_fp8_gpu.py):
- vs moe_int8_w8a8_ref (float32, simulating the exact quantization: same scales, same rint rounding): ≤ 1e-2.
  The int8 products are exact and summed in int32 (per K step for block scales, then float32), so what differs is
  the bf16 rounding of the intermediate and of the per-slot GEMM2 outputs (2^-9 relative) and the int8 rounding
  flips (one step of 1/127 of a row's amax) those cause in the intermediate's quantization.
- vs moe_ref (float32, unquantized weights and activations): ≤ 0.08.
"""

import pytest
import torch
import triton_layer_cases as cases

from moejit.errors import MoejitInputError
from moejit.moe.weights import quantize_weights_int8_w8a8
from moejit.reference import moe_int8_w8a8_ref, rel_error

pytestmark = pytest.mark.gpu

SHAPES, MODES = cases.SHAPES, cases.MODES
routing = cases.routing
weights = cases.WeightCache(quantize_weights_int8_w8a8)


@pytest.fixture
def gen():
    """A fresh generator per test (its seed is printed), so a failing test replays on its own."""
    return cases.cuda_generator()


def run_layer(name, mode, m, gen, **kw):
    from moejit.ops import triton_moe_int8

    return cases.run_layer(triton_moe_int8, moe_int8_w8a8_ref, weights, 127, name, mode, m, gen, **kw)


CASES = [(name, mode, m) for name in SHAPES for mode in ("token_channel", "block128") for m in (1, 37, 512)]
CASES += [("qwen3.6-35b-a3b", mode, 200) for mode in ("tensor_channel", "tensor_tensor", "static_tensor")]
CASES += [("qwen3.6-35b-a3b", "token_channel", 4096), ("qwen3.6-35b-a3b", "block128", 8192),
          ("mixtral-8x7b", "token_channel", 2048), ("mixtral-8x7b", "block128", 2048)]


@pytest.mark.parametrize("name,mode,m", CASES)
def test_layer_vs_references(gen, name, mode, m):
    out, ref, inputs = run_layer(name, mode, m, gen)
    cases.check_vs_references(out, ref, inputs, f"int8 {name} {mode} M={m}", mode)


def test_hot_empty_dropped_topk1_fp16(gen):
    """A hot expert, empty experts, dropped slots, fp16 in / bf16 out, topk=1, every slot dropped
    (tests/triton_layer_cases.py: check_hot_empty_dropped_topk1_fp16)."""
    cases.check_hot_empty_dropped_topk1_fp16(run_layer, gen, all_dropped_mode="block128")


def test_outputs_are_fully_written(gen):
    """The output buffer is allocated by the layer; poison the caching allocator's next blocks with NaN first so a
    row left unwritten would show."""
    weights("qwen3.6-35b-a3b", gen, True, None)  # the weights first: they must not land on the poisoned blocks
    poison = [torch.full((1 << 22,), float("nan"), device="cuda", dtype=torch.bfloat16) for _ in range(16)]
    del poison  # 16 distinct NaN-filled 8 MiB blocks back in the allocator's cache, reused by the layer's buffers
    out, ref, _ = run_layer("qwen3.6-35b-a3b", "token_channel", 333, gen)
    assert torch.isfinite(out).all() and rel_error(out, ref) <= 1e-2


def test_m0_int64_ids_and_validation(gen):
    from moejit.ops import triton_moe_int8

    e, topk, k, n = SHAPES["qwen3.6-35b-a3b"]
    _, ((w1, s1), (w2, s2)) = weights("qwen3.6-35b-a3b", gen, True, None)
    a = torch.randn(0, k, device="cuda", dtype=torch.bfloat16)
    out = triton_moe_int8(a, w1, w2, torch.ones(0, topk, device="cuda"),
                          torch.zeros(0, topk, device="cuda", dtype=torch.int32), s1, s2, per_act_token=True,
                          per_out_ch=True)
    assert out.shape == (0, k)
    a = torch.randn(33, k, device="cuda", generator=gen).to(torch.bfloat16)
    tw, ids = routing(33, e, topk, gen, dtype=torch.int64)
    out = triton_moe_int8(a, w1, w2, tw, ids, s1, s2, per_act_token=True, per_out_ch=True)
    ref = moe_int8_w8a8_ref(a, w1, w2, tw, ids, s1, s2, per_act_token=True)
    assert rel_error(out, ref) <= 1e-2
    with pytest.raises(MoejitInputError, match="int8"):
        triton_moe_int8(a, w1.to(torch.float8_e4m3fn), w2.to(torch.float8_e4m3fn), tw, ids, s1, s2,
                        per_act_token=True, per_out_ch=True)
    with pytest.raises(MoejitInputError, match="per_out_ch"):
        triton_moe_int8(a, w1, w2, tw, ids, s1, s2, per_act_token=True, per_out_ch=False)
    with pytest.raises(MoejitInputError, match="block_shape"):
        triton_moe_int8(a, w1, w2, tw, ids, s1, s2, per_act_token=True, block_shape=(128, 128))
    with pytest.raises(MoejitInputError, match="outside"):
        triton_moe_int8(a, w1, w2, tw, torch.full_like(ids, e), s1, s2, per_act_token=True, per_out_ch=True)


@pytest.mark.parametrize("mode", ["token_channel", "block128", "tensor_tensor"])
def test_cuda_graph(gen, mode):
    """Captured once, replayed on new inputs and new routing written into the captured buffers, the output
    poisoned with NaN before each replay (tests/triton_layer_cases.py: check_cuda_graph)."""
    from moejit.ops import triton_moe_int8

    cases.check_cuda_graph(triton_moe_int8, moe_int8_w8a8_ref, weights, mode, gen)


def test_tuned_table_is_used(gen, tmp_path, monkeypatch):
    """An int8_w8a8 table (what `moejit tune --dtype int8` writes) is found and the layer still matches."""
    import json

    from moejit.triton import configs

    e, topk, k, n = SHAPES["qwen3.6-35b-a3b"]
    cfg = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    name = configs.config_file_name(e, n, k, topk, configs.device_name(), "int8_w8a8", "token_channel")
    (tmp_path / name).write_text(json.dumps({"64": cfg}))
    monkeypatch.setenv("MOEJIT_TRITON_CONFIG_DIR", str(tmp_path))
    configs.load_table.cache_clear()
    try:
        assert configs.get_config(64, e, n, k, topk, "int8_w8a8", "token_channel") == cfg
        out, ref, _ = run_layer("qwen3.6-35b-a3b", "token_channel", 64, gen)
        assert rel_error(out, ref) <= 1e-2
    finally:
        configs.load_table.cache_clear()


def test_tuner_times_an_int8_config(gen):
    from moejit.triton import tune

    inputs = tune._make_inputs(8, 2, 256, 128, 64, True, None, torch.int8, gen)
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    us = tune.time_config(inputs, tune.ModeArgs(True, True, None), cfg, iters=3)
    assert us is not None and us > 0
