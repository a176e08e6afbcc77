"""The sweep's logic on a CPU with fake backends: ok / out-of-tolerance / error / OOM / n/a cells, weight and
input generation, static-scale calibration, and the end-to-end run with its exports."""

import json
import math

import pytest
import torch
from rich.console import Console

from moejit.bench import sweep as sweep_mod
from moejit.bench.backends import Backend, LayerInputs, QuantOpts
from moejit.bench.cli import run_bench
from moejit.bench.models import ModelShape
from moejit.bench.roofline import Ceilings
from moejit.bench.sweep import Sweep, SweepOptions, make_configs
from moejit.bench.timing import summarize
from moejit.reference import FP8_DTYPE, FP8_MAX, moe_fp8_ref

TINY = ModelShape("tiny-moe", num_experts=4, topk=2, hidden=32, intermediate=16)
CEIL = Ceilings("fake GPU", copy_gbps=1000.0, rates_tflops={"fp8": 500.0})


def ref_call(x: LayerInputs, quant: QuantOpts):
    return moe_fp8_ref(x.a, x.w1_q, x.w2_q, x.topk_weights, x.topk_ids, x.w1_scale, x.w2_scale, a1_scale=x.a1_scale,
                       a2_scale=x.a2_scale, per_act_token=quant.per_act_token).to(x.a.dtype)


class FakeBackend(Backend):
    def __init__(self, name, behaviour=None, reason=""):
        self.name, self.label, self.reason = name, name.capitalize(), reason
        self.behaviour = behaviour or name
        self.seen: list[tuple[LayerInputs, QuantOpts]] = []

    def available(self):
        return (False, self.reason) if self.behaviour == "missing" else (True, "")

    def prepare(self, inputs, quant):
        self.seen.append((inputs, quant))
        if self.behaviour == "good":
            return lambda: ref_call(inputs, quant)
        if self.behaviour == "wrong":
            return lambda: ref_call(inputs, quant) * 1.5
        if self.behaviour == "nan":
            return lambda: torch.full_like(inputs.a, float("nan"))
        if self.behaviour == "broken":
            def boom():
                raise RuntimeError("kernel exploded")
            return boom
        if self.behaviour == "oom":
            def oom():
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
            return oom
        if self.behaviour == "big-m-fails":
            if inputs.a.shape[0] > 8:
                raise ValueError("M too large for this fake")
            return lambda: ref_call(inputs, quant)
        raise AssertionError(self.behaviour)


def fake_timer(fns, ops_per_graph, warmup, iters, profile, label):
    for f in fns:
        f()
    base = 10.0 if "good" in label else 20.0
    return summarize([base * 0.9, base, base * 1.1])


def run(backends, shapes=(TINY,), batch_sizes=(4, 16), pat=(False, True), poc=(False, True), **kw):
    configs = make_configs(shapes, (1,), pat, poc)
    opts = SweepOptions(batch_sizes=batch_sizes, **kw)
    events = []
    s = Sweep(configs, backends, opts, device="cpu", ceilings=CEIL, timer=fake_timer,
              progress=lambda phase, what, adv: events.append((phase, what, adv)))
    return s, s.run(), events


def test_every_cell_gets_exactly_one_result_with_the_right_state():
    backends = [FakeBackend("good"), FakeBackend("wrong"), FakeBackend("broken"), FakeBackend("oom"),
                FakeBackend("missing", "missing", reason="not in this checkout: moejit.ops.missing")]
    s, results, events = run(backends, batch_sizes=(4,))
    assert len(results) == s.total_cells == 4 * 1 * 5
    assert sum(adv for _, _, adv in events) == s.total_cells
    by = {}
    for r in results:
        by.setdefault(r.backend, []).append(r)
    for r in by["good"]:
        assert r.status == "ok" and r.error_ok is True and r.error < 1e-2 and r.usable
        assert r.median_us == pytest.approx(10.0) and r.p10_us == pytest.approx(9.0) and r.p90_us == 11.0
        assert r.floor_us > 0 and r.roofline_pct == pytest.approx(100 * r.floor_us / 10.0)
        assert r.bound == "memory" and r.tflops > 0 and r.gbps > 0
        assert 1 <= r.experts_hit <= 4 and r.flops == TINY.flops(r.batch_size)
    for r in by["wrong"]:
        assert r.status == "ok" and r.error_ok is False and not r.usable
        assert r.error == pytest.approx(0.5, rel=0.05) and "above tolerance" in r.message
    for r in by["broken"]:
        assert r.status == "error" and "kernel exploded" in r.message and r.median_us is None
    for r in by["oom"]:
        assert r.status == "OOM" and "out of memory" in r.message
    for r in by["missing"]:
        assert r.status == "n/a" and "not in this checkout" in r.message
    assert {(r.per_act_token, r.per_out_ch) for r in results} == {(a, b) for a in (0, 1) for b in (0, 1)}


def test_nan_output_is_flagged_not_fast():
    _, results, _ = run([FakeBackend("nan")], batch_sizes=(4,), pat=(False,), poc=(False,))
    (r,) = results
    assert r.status == "ok" and r.error == math.inf and r.error_ok is False and not r.usable


def test_a_failure_on_one_shape_does_not_stop_the_sweep():
    _, results, _ = run([FakeBackend("big-m-fails")], batch_sizes=(4, 8, 16, 24), pat=(False,), poc=(False,))
    assert [r.status for r in results] == ["ok", "ok", "error", "error"]
    assert "M too large" in results[2].message


def test_weights_that_do_not_fit_mark_their_cells_oom_and_the_sweep_goes_on(monkeypatch):
    real = sweep_mod.make_fp8_weights
    calls = {"n": 0}

    def flaky(num_experts, n_out, k_in, per_out_ch, device, generator, std=None):
        if num_experts == 8:  # the "big" model
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 90.00 GiB")
        calls["n"] += 1
        return real(num_experts, n_out, k_in, per_out_ch, device, generator, std)

    monkeypatch.setattr(sweep_mod, "make_fp8_weights", flaky)
    big = ModelShape("big-moe", 8, 2, 32, 16)
    _, results, _ = run([FakeBackend("good")], shapes=(big, TINY), batch_sizes=(4,), pat=(False,), poc=(False,))
    assert [(r.model, r.status) for r in results] == [("big-moe", "OOM"), ("tiny-moe", "ok")]
    assert "do not fit" in results[0].message and calls["n"] == 2


def test_no_check_skips_the_reference():
    _, results, _ = run([FakeBackend("wrong")], batch_sizes=(4,), pat=(False,), poc=(False,), check=False)
    (r,) = results
    assert r.error is None and r.error_ok is None and r.usable


def test_static_scales_are_calibrated_and_per_token_is_dynamic():
    b = FakeBackend("good")
    run([b], batch_sizes=(16,), pat=(False, True), poc=(False,))
    per_tensor = [x for x, q in b.seen if not q.per_act_token]
    per_token = [x for x, q in b.seen if q.per_act_token]
    assert per_tensor and per_token
    for x in per_tensor:
        assert x.a1_scale.numel() == 1 and x.a2_scale.numel() == 1
        assert x.a1_scale.item() == pytest.approx(x.a.float().abs().max().item() / FP8_MAX, rel=1e-6)
        assert x.a2_scale.item() > 0
    for x in per_token:
        assert x.a1_scale is None and x.a2_scale is None
    b2 = FakeBackend("good")
    run([b2], batch_sizes=(16,), pat=(False,), poc=(False,), act_scales="dynamic")
    assert all(x.a1_scale is None and x.a2_scale is None for x, _ in b2.seen)


def test_calibrated_a2_covers_the_intermediate(seeded):
    from moejit.reference import dequant_weight_ref, fp8_dequant_ref, fp8_quant_ref

    e, n, k, m = 4, 16, 32, 12
    w1_q, w1_s = sweep_mod.make_fp8_weights(e, 2 * n, k, False, "cpu", seeded)
    a = torch.randn(m, k, generator=seeded).to(torch.bfloat16)
    _, ids = sweep_mod.make_routing(m, e, 2, "cpu", seeded)
    a1, a2 = sweep_mod.calibrate_static_scales(a, w1_q, w1_s, ids)
    a_dq = fp8_dequant_ref(*fp8_quant_ref(a, scale=a1))
    amax = 0.0
    for t in range(m):
        for j in range(2):
            ex = int(ids[t, j])
            h = a_dq[t] @ dequant_weight_ref(w1_q[ex], w1_s[ex]).t()
            inter = (torch.nn.functional.silu(h[:n]) * h[n:]).to(torch.bfloat16).float()
            amax = max(amax, inter.abs().max().item())
    assert a2.item() == pytest.approx(amax / FP8_MAX, rel=1e-5)


@pytest.mark.parametrize("per_out_ch", [False, True])
def test_fp8_weights_are_real_per_expert_or_per_channel_quantization(seeded, per_out_ch):
    q, s = sweep_mod.make_fp8_weights(3, 24, 40, per_out_ch, "cpu", seeded)
    assert q.dtype == FP8_DTYPE and q.shape == (3, 24, 40)
    assert s.dtype == torch.float32 and s.shape == ((3, 24) if per_out_ch else (3,))
    qf = q.float()
    amax = qf.abs().amax(dim=-1) if per_out_ch else qf.abs().flatten(1).amax(dim=-1)
    assert torch.all(amax == FP8_MAX)  # each scale group uses the full e4m3 range: the scales are real
    # distinct per expert / channel, not one faked scale (a per-tensor scale expanded would give 1, or 3 for
    # per-channel); two of 72 random amaxes may coincide in float32 (seen once in CI's seed 232112782)
    assert len(torch.unique(s)) > s.numel() // 2
    # The dequantized weights have the requested spread (std 1/sqrt(K)) within sampling error.
    w = qf * (s[..., None] if per_out_ch else s[:, None, None])
    assert w.std().item() == pytest.approx(1 / math.sqrt(40), rel=0.1)


def test_routing_is_distinct_topk_with_softmax_weights(seeded):
    w, ids = sweep_mod.make_routing(64, 16, 4, "cpu", seeded)
    assert ids.dtype == torch.int32 and ids.shape == (64, 4) and w.shape == (64, 4)
    assert all(len(set(row.tolist())) == 4 for row in ids)
    assert torch.allclose(w.sum(-1), torch.ones(64))


def test_input_sets_rotate_only_small_weights():
    small = ModelShape("s", 4, 2, 256, 128)
    big = ModelShape("b", 64, 2, 4096, 4096)
    l2 = 50 * 2**20
    assert sweep_mod.input_sets(big, False, 10, l2) == 1
    n = sweep_mod.input_sets(small, False, 10, l2)
    assert n == 10  # capped at ops_per_graph
    assert sweep_mod.input_sets(small, False, 10, l2, rotate=False) == 1
    mid = ModelShape("m", 16, 2, 2048, 512)  # 48 MiB of weights -> 4 copies span 3x L2
    assert sweep_mod.input_sets(mid, False, 10, l2) == math.ceil(3 * l2 / sweep_mod.weight_bytes(mid, False))


def test_run_bench_end_to_end_on_cpu(tmp_path):
    console = Console(record=True, width=220, file=open(tmp_path / "console.txt", "w"))
    configs = make_configs([TINY], (1,), (False,), (False, True))
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    results = run_bench(console, configs, [FakeBackend("good"), FakeBackend("broken")],
                        SweepOptions(batch_sizes=(4, 32)), json_path=str(out_json), csv_path=str(out_csv),
                        ceilings=CEIL, device="cpu", timer=fake_timer)
    assert len(results) == 2 * 2 * 2
    text = console.export_text()
    assert "tiny-moe · TP=1 · act per-tensor, w per-tensor" in text and "summary" in text
    assert "kernel exploded" in text
    data = json.loads(out_json.read_text())
    assert len(data["records"]) == 8 and data["ceilings"]["copy_gbps"] == 1000.0
    assert out_csv.read_text().count("\n") == 9


def test_interrupt_keeps_the_finished_cells():
    class Interrupting(FakeBackend):
        def prepare(self, inputs, quant):
            if inputs.a.shape[0] == 16:
                raise KeyboardInterrupt
            return super().prepare(inputs, quant)

    s, results, _ = run([Interrupting("good")], batch_sizes=(4, 8, 16, 32), pat=(False,), poc=(False,))
    assert s.interrupted and [r.batch_size for r in results] == [4, 8]


def test_an_error_outside_the_cells_stops_the_sweep_and_keeps_what_was_measured(monkeypatch):
    """E.g. a kernel fault loses the CUDA context and every later CUDA call raises: the measured cells are kept,
    every other cell is recorded as an error with the reason (n/a for an unavailable backend), once each."""
    calls = []
    real = Sweep._run_batch

    def faulting(self, cfg, m, weights):
        calls.append(m)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, cfg, m, weights)

    monkeypatch.setattr(Sweep, "_run_batch", faulting)
    backends = [FakeBackend("good"), FakeBackend("missing", "missing", reason="not built")]
    s, results, _ = run(backends, batch_sizes=(4, 8, 16), pat=(False, True), poc=(False,))
    assert not s.interrupted and "illegal memory access" in s.stopped
    assert len(results) == s.total_cells == 2 * 3 * 2
    cells = {(r.per_act_token, r.batch_size, r.backend): r for r in results}
    assert len(cells) == len(results)  # one record per cell
    assert cells[(False, 4, "good")].status == "ok"
    for key, r in cells.items():
        if r.backend == "missing":
            assert r.status == "n/a"
        elif key != (False, 4, "good"):
            assert r.status == "error" and "illegal memory access" in r.message
    assert "sweep stopped" in s.end_note() and f"of {s.total_cells} cells" in s.end_note()
