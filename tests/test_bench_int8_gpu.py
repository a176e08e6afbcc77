"""GPU tests of `moejit bench-int8`'s own GPU code: the hybrid runner split into stages computes exactly what the
runner computes, per-stage timing inside one captured forward works and adds up, the CUTLASS per-tensor INT8 layer
matches its exact-quantization reference (and captures into a graph), the profiled forward runs, and a small real
sweep ends with every available cell timed and within tolerance. (Timings are never asserted.)"""

import json
import math

import pytest
import torch
from rich.console import Console

from moejit.bench.models import ModelShape
from moejit.reference import moe_int8_ref, moe_ref, quantize_weights_int8_ref, rel_error

pytestmark = pytest.mark.gpu

E, TOPK, K, N = 64, 8, 2048, 512


@pytest.fixture(scope="module")
def gen():
    seed = torch.randint(0, 2**31 - 1, ()).item()
    print(f"seed={seed}")
    return torch.Generator(device="cuda").manual_seed(seed)


@pytest.fixture(scope="module")
def layer(gen):
    w13 = torch.randn(E, 2 * N, K, device="cuda", generator=gen) / K ** 0.5
    w2 = torch.randn(E, K, N, device="cuda", generator=gen) / N ** 0.5
    (q13, s13), (q2, s2) = quantize_weights_int8_ref(w13), quantize_weights_int8_ref(w2)
    return (w13, w2), (q13, q2, s13, s2)


def inputs(gen, m, dtype=torch.bfloat16):
    a = torch.randn(m, K, device="cuda", generator=gen).to(dtype)
    logits = torch.randn(m, E, device="cuda", generator=gen)
    vals, ids = torch.topk(logits, TOPK, dim=-1)
    return a, torch.softmax(vals, dim=-1), ids.to(torch.int32)


@pytest.mark.parametrize("fused_permute", [False, True])
@pytest.mark.parametrize("fused_silu", [True, False])
def test_staged_forward_is_the_runner(gen, layer, fused_permute, fused_silu):
    from moejit.bench.int8.layers import hybrid_staged, stage_names
    from moejit.ops import cutlass_moe_int8_hybrid

    _, (q13, q2, s13, s2) = layer
    a, tw, ids = inputs(gen, 300)
    want = cutlass_moe_int8_hybrid(a, q13, q2, s13, s2, tw, ids, fused_silu_quant=fused_silu,
                                   fused_permute_quant=fused_permute)
    staged = hybrid_staged(a, q13, q2, s13, s2, tw, ids, fused_silu_quant=fused_silu,
                           fused_permute_quant=fused_permute)
    assert staged.names == stage_names(fused_permute, fused_silu)
    marks = []
    got = staged(mark=marks.append)
    assert marks == list(range(len(staged.names) + 1))
    assert torch.equal(got, want)  # same ops, same order: bit for bit


def test_stage_timing_inside_one_graph_adds_up(gen, layer):
    from moejit.bench.int8.layers import hybrid_staged, time_stages

    _, (q13, q2, s13, s2) = layer
    a, tw, ids = inputs(gen, 1024)
    staged = hybrid_staged(a, q13, q2, s13, s2, tw, ids)
    eager = staged().clone()
    times = time_stages(staged, warmup=2, iters=7)
    assert times.method == "events inside one captured forward", times.method
    assert len(times.samples) == 7 and all(len(s) == len(staged.names) for s in times.samples)
    for row, total in zip(times.samples, times.totals):
        assert all(t > 0 for t in row)
        assert math.isclose(sum(row), total, rel_tol=1e-3, abs_tol=0.05)  # event-to-event times tile the forward
    assert math.isclose(sum(times.mean(i) for i in range(len(staged.names))), times.total_mean, rel_tol=1e-3)
    assert torch.equal(staged.state["out"], eager)  # the replays computed the same forward


def test_stage_timing_fallback_also_adds_up(gen, layer, monkeypatch):
    from moejit.bench.int8 import layers

    _, (q13, q2, s13, s2) = layer
    a, tw, ids = inputs(gen, 64)
    staged = layers.hybrid_staged(a, q13, q2, s13, s2, tw, ids, fused_permute_quant=True)

    def no_events(*args, **kwargs):
        raise TypeError("Event() got an unexpected keyword argument 'external'")

    monkeypatch.setattr(layers, "_timing_event", no_events)
    times = layers.time_stages(staged, warmup=1, iters=3)
    assert times.method.startswith("separate graphs per stage")
    assert all(math.isclose(sum(r), t) for r, t in zip(times.samples, times.totals))


def test_profiled_forward_runs(gen, layer):
    from moejit.bench.int8.layers import hybrid_staged, profile_forward

    _, (q13, q2, s13, s2) = layer
    a, tw, ids = inputs(gen, 16)
    staged = hybrid_staged(a, q13, q2, s13, s2, tw, ids)
    want = staged().clone()
    profile_forward(staged, "test")  # no profiler attached: start/stop are no-ops
    assert torch.equal(staged.state["out"], want)


@pytest.mark.parametrize("m", [1, 77, 2048])
def test_per_tensor_layer_vs_references(gen, layer, m):
    from moejit.bench.int8.layers import cutlass_moe_int8_per_tensor

    (w13, w2), (q13, q2, s13, s2) = layer
    a, tw, ids = inputs(gen, m)
    out = cutlass_moe_int8_per_tensor(a, q13, q2, s13, s2, tw, ids)
    assert out.dtype == a.dtype and out.shape == a.shape
    # the layer: GEMM1 stored in bf16, SiLU·mul rounded to bf16 then quantized per tensor (fused_silu_quant=False)
    ref = moe_int8_ref(a, q13, q2, s13, s2, tw, ids, scheme="per_tensor", fused_silu_quant=False)
    assert rel_error(out, ref) <= 1e-2
    assert rel_error(out, moe_ref(a, w13, w2, tw, ids)) <= 0.15  # per-tensor INT8 of the SwiGLU output is coarse


def test_per_tensor_layer_cuda_graph(gen, layer):
    from moejit.bench.int8.layers import cutlass_moe_int8_per_tensor

    _, (q13, q2, s13, s2) = layer
    a, tw, ids = inputs(gen, 128)
    cutlass_moe_int8_per_tensor(a, q13, q2, s13, s2, tw, ids)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cutlass_moe_int8_per_tensor(a, q13, q2, s13, s2, tw, ids)
    a2, tw2, ids2 = inputs(gen, 128)
    a.copy_(a2)
    tw.copy_(tw2)
    ids.copy_(ids2)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref = moe_int8_ref(a, q13, q2, s13, s2, tw, ids, scheme="per_tensor", fused_silu_quant=False)
    assert rel_error(out, ref) <= 1e-2


def test_small_real_sweep(tmp_path):
    """run_int8 end to end on the GPU (small shape, few replays): every available backend is timed and within
    tolerance of the float32 layer, the stages are timed, the JSON is written."""
    from moejit.bench.int8.cli import make_plan, run_int8
    from moejit.bench.int8.sweep import QUANT
    from moejit.bench.sweep import Config, SweepOptions

    plan = make_plan(64, K, N, 16, 4, 128, 256, 16, None, None, (), (16, 256), ("hybrid", "cutlass-pt", "triton",
                                                                                  "triton-block", "cutlass-fp8",
                                                                                  "triton-fp8"))
    shape = ModelShape("small", 16, 4, 1024, 256)
    plan["shapes"], plan["configs"] = [shape], [Config(shape, QUANT)]
    opts = SweepOptions(batch_sizes=(16, 256), ops_per_graph=2, warmup=1, iters=3, tolerance=0.15, dtype="bfloat16")
    console = Console(record=True, width=200)
    results, stages = run_int8(console, plan, opts, json_path=tmp_path / "o.json", csv_path=tmp_path / "o.csv")
    print(console.export_text())
    cc = torch.cuda.get_device_capability()
    for r in results:
        if r.backend == "cutlass-fp8" and not (9, 0) <= cc < (10, 0) or r.backend == "triton-fp8" and cc < (8, 9):
            assert r.status == "n/a"
            continue
        assert r.status == "ok", (r.backend, r.message)
        assert r.median_us > 0 and r.error is not None and r.error_ok, (r.backend, r.error)
        assert r.roofline_pct is not None
    assert stages and all(s.status == "ok" and s.median_us > 0 for s in stages), [s.message for s in stages]
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["bench"] == "int8" and len(data["records"]) == len(results) and len(data["stages"]) == len(stages)
    assert (tmp_path / "o_stages.csv").is_file()
