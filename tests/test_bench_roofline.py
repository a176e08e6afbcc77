"""Roofline arithmetic and the per-device ceilings cache (pure Python, no GPU)."""

import math

import pytest

from moejit.bench import roofline
from moejit.bench.models import ModelShape, get_model


def test_expected_distinct_experts():
    assert roofline.expected_distinct_experts(8, 2, 0) == 0.0
    assert roofline.expected_distinct_experts(8, 2, 1) == pytest.approx(2.0)  # one token hits exactly topk
    assert roofline.expected_distinct_experts(8, 8, 5) == pytest.approx(8.0)  # topk == E hits all
    # two tokens, top-1 of 4: 4 * (1 - (3/4)^2) = 1.75
    assert roofline.expected_distinct_experts(4, 1, 2) == pytest.approx(1.75)
    big = roofline.expected_distinct_experts(256, 8, 2048)
    assert 255.99 < big <= 256
    assert roofline.expected_distinct_experts(256, 8, 4) < 32  # collisions make it fewer than M*topk
    with pytest.raises(ValueError):
        roofline.expected_distinct_experts(4, 5, 1)


def test_expected_distinct_experts_matches_simulation():
    import torch

    g = torch.Generator().manual_seed(0)
    e, topk, m = 64, 4, 16
    hits = []
    for _ in range(400):
        ids = torch.topk(torch.randn(m, e, generator=g), topk).indices
        hits.append(ids.unique().numel())
    assert sum(hits) / len(hits) == pytest.approx(roofline.expected_distinct_experts(e, topk, m), rel=0.02)


def test_moe_traffic_bytes_and_flops():
    s = ModelShape("t", num_experts=8, topk=2, hidden=64, intermediate=32)
    t = roofline.moe_traffic(s, m=4, experts_hit=3)
    assert t.weight_bytes == 3 * 3 * 32 * 64  # fp8: 1 byte per element of the 3 hit experts' W1 + W2
    assert t.scale_bytes == 3 * 2 * 4  # one float32 per expert and GEMM
    assert t.activation_bytes == 2 * 4 * 64 * 2  # in + out, 16-bit
    assert t.routing_bytes == 4 * 2 * 8
    assert t.flops == 2 * 4 * 2 * 3 * 32 * 64
    assert t.total_bytes == t.weight_bytes + t.scale_bytes + t.activation_bytes + t.routing_bytes
    pc = roofline.moe_traffic(s, m=4, experts_hit=3, per_out_ch=True)
    assert pc.scale_bytes == 3 * 4 * (2 * 32 + 64)
    default = roofline.moe_traffic(s, m=4)
    assert default.experts_hit == pytest.approx(roofline.expected_distinct_experts(8, 2, 4))


def test_floor_is_max_of_memory_and_compute():
    # 2e9 bytes at 2000 GB/s = 1000 us; 1e12 flops at 1000 TFLOP/s = 1000 us
    assert roofline.floor_us(2e9, 1e12, 2000, 1000) == pytest.approx(1000)
    assert roofline.floor_us(4e9, 1e12, 2000, 1000) == pytest.approx(2000)
    assert roofline.bound_kind(4e9, 1e12, 2000, 1000) == "memory"
    assert roofline.floor_us(1e9, 3e12, 2000, 1000) == pytest.approx(3000)
    assert roofline.bound_kind(1e9, 3e12, 2000, 1000) == "compute"
    with pytest.raises(ValueError):
        roofline.floor_us(1, 1, 0, 1)


def test_achieved_and_pct():
    tflops, gbps = roofline.achieved(total_bytes=3e9, flops=2e12, time_us=1000)
    assert tflops == pytest.approx(2000) and gbps == pytest.approx(3000)
    assert roofline.roofline_pct(500, 1000) == pytest.approx(50)
    assert math.isnan(roofline.roofline_pct(500, 0))
    assert all(math.isnan(x) for x in roofline.achieved(1, 1, float("nan")))


def test_small_batch_is_memory_bound_large_is_compute_bound():
    s = get_model("deepseek-v3")
    bw, rate = 3000.0, 1200.0
    small = roofline.moe_traffic(s, 4)
    large = roofline.moe_traffic(s, 65536)
    assert roofline.bound_kind(small.total_bytes, small.flops, bw, rate) == "memory"
    assert roofline.bound_kind(large.total_bytes, large.flops, bw, rate) == "compute"


def test_ceilings_cache_roundtrip(tmp_path):
    path = tmp_path / "bench" / "ceilings.json"
    c = roofline.Ceilings("H100", 3000.0, {"fp8": 1200.0}, 1.0)
    roofline.store_cached("dev-a", c, path)
    got = roofline.load_cached("dev-a", ("fp8",), path)
    assert got is not None and got.cached and got.copy_gbps == 3000.0 and got.rate("fp8") == 1200.0
    assert roofline.load_cached("dev-b", ("fp8",), path) is None  # per device
    assert roofline.load_cached("dev-a", ("int8",), path) is None  # a kind not measured yet
    roofline.store_cached("dev-a", roofline.Ceilings("H100", 3100.0, {"int8": 1500.0}, 2.0), path)
    both = roofline.load_cached("dev-a", ("fp8", "int8"), path)
    assert both.rates_tflops == {"fp8": 1200.0, "int8": 1500.0} and both.copy_gbps == 3100.0
    with pytest.raises(KeyError):
        c.rate("int8")
    path.write_text("{broken")
    assert roofline.load_cached("dev-a", ("fp8",), path) is None
