"""`moejit bench` on a GPU: CUDA-graph timing, the measured ceilings, and a small real sweep whose cells must be
either correct or honestly n/a (never a timed cell with a wrong result)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_time_cuda_graph_rotates_inputs_and_reports_spread():
    from moejit.bench.timing import time_cuda_graph

    xs = [torch.randn(1 << 20, device="cuda") for _ in range(3)]
    calls = []

    def make(i):
        def f():
            calls.append(i)
            return xs[i] * 2
        return f

    t = time_cuda_graph([make(0), make(1), make(2)], ops_per_graph=4, warmup=2, iters=10)
    # each callable runs once eagerly, then the 4 captured calls cycle 0, 1, 2, 0 (Python runs only at capture)
    assert calls == [0, 1, 2, 0, 1, 2, 0]
    assert 0 < t.p10_us <= t.median_us <= t.p90_us and len(t.samples_us) == 10


def test_profile_mode_runs(monkeypatch):
    from moejit.bench.timing import time_cuda_graph

    x = torch.randn(4096, device="cuda")
    t = time_cuda_graph(lambda: x + 1, ops_per_graph=2, warmup=1, iters=3, profile=True, label="test")
    assert t.median_us > 0


def test_ceilings_are_measured_once_and_cached(tmp_path, monkeypatch):
    from moejit.bench import roofline

    monkeypatch.setenv("MOEJIT_CACHE_DIR", str(tmp_path))
    c = roofline.get_ceilings(("fp8",))
    assert not c.cached and c.copy_gbps > 100 and c.rate("fp8") > 50
    again = roofline.get_ceilings(("fp8",))
    assert again.cached and again.copy_gbps == c.copy_gbps
    assert (tmp_path / "bench" / "ceilings.json").is_file()


def test_small_real_sweep_cells_are_correct_or_not_available():
    from moejit.bench.backends import default_backends
    from moejit.bench.models import get_model
    from moejit.bench.roofline import Ceilings
    from moejit.bench.sweep import Sweep, SweepOptions, make_configs

    configs = make_configs([get_model("custom-small")], (8,), (False, True), (False, True))
    opts = SweepOptions(batch_sizes=(4, 96), ops_per_graph=2, warmup=1, iters=3)
    results = Sweep(configs, list(default_backends().values()), opts,
                    ceilings=Ceilings("test", 2000.0, {"fp8": 800.0})).run()
    assert len(results) == 4 * 2 * 2
    for r in results:
        assert r.status in ("ok", "n/a"), (r.backend, r.status, r.message)
        if r.status == "ok":
            assert r.error_ok, (r.backend, r.batch_size, r.per_act_token, r.per_out_ch, r.error)
            assert r.median_us > 0 and r.roofline_pct > 0
