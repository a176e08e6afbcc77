"""Tables, summary, JSON/CSV schema and the plot, from hand-made cell results (no GPU, no sweep)."""

import csv
import json

import pytest
from rich.console import Console

from moejit.bench import report
from moejit.bench.sweep import CellResult

ENV = {"gpu": "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)", "gpu_count": 1, "driver": "570.1", "cuda": "13.0",
       "torch": "2.11.0", "triton": "3.6.0", "python": "3.12.0", "moejit_version": "0.1.0", "git_rev": "abc+dirty",
       "timestamp": "2026-11-23T10:00:00+00:00", "copy_gbps": 3000.0, "matmul_tflops": 1200.0}


def cell(backend, m, status="ok", us=None, spread=0.05, error=1e-3, error_ok=True, message="", pat=False,
         poc=False):
    r = CellResult(model="mixtral-8x7b", tp=1, num_experts=8, topk=2, hidden=4096, intermediate=14336,
                   per_act_token=pat, per_out_ch=poc, batch_size=m, backend=backend, status=status, message=message,
                   dtype="float16", act_scales="static per-tensor")
    if status == "ok":
        r.median_us, r.p10_us, r.p90_us = us, us * (1 - spread), us * (1 + spread)
        r.floor_us, r.bound = us / 2, "memory"
        r.roofline_pct, r.tflops, r.gbps = 50.0, 123.0, 2500.0
        r.error, r.tolerance, r.error_ok = error, 3e-2, error_ok
    return r


RESULTS = [
    cell("triton", 4, us=100.0), cell("cutlass", 4, us=80.0),                # CUTLASS clearly faster
    cell("triton", 8, us=100.0, spread=0.3), cell("cutlass", 8, us=95.0, spread=0.3),  # within the spread
    cell("triton", 16, us=100.0), cell("cutlass", 16, us=50.0, error=0.4, error_ok=False),  # fast but wrong
    cell("triton", 32, us=120.0), cell("cutlass", 32, status="error", message="RuntimeError: boom"),
    cell("triton", 64, status="OOM", message="CUDA out of memory"), cell("cutlass", 64, us=150.0),
    cell("triton", 128, us=130.0, pat=True), cell("cutlass", 128, status="n/a", message="needs SM90", pat=True),
]


def render(obj, width=250):
    console = Console(record=True, width=width, file=open("/dev/null", "w"))
    console.print(obj)
    return console.export_text()


def test_table_per_configuration_with_the_issue_columns():
    groups = report.group_results(RESULTS)
    assert list(groups) == [("mixtral-8x7b", 1, False, False), ("mixtral-8x7b", 1, True, False)]
    text = render(report.render_table(*next(iter(groups.items()))))
    for col in ("M", "Triton µs", "CUTLASS µs", "CUTLASS vs Triton", "best % roof", "TFLOP/s", "GB/s",
                "err Triton", "err CUTLASS"):
        assert col in text
    assert "mixtral-8x7b · TP=1 · act per-tensor, w per-tensor" in text
    assert "E=8 topk=2 K=4096 N=14336" in text
    lines = {ln.split("│")[1].strip(): ln for ln in text.splitlines() if ln.count("│") > 5}
    assert "1.25×" in lines["4"] and "≈" not in lines["4"]       # 100/80, separated
    assert "1.05× ≈" in lines["8"]                                # overlapping spreads: not a win
    assert "50.0 ✗" in lines["16"] and "4.0e-01" in lines["16"]  # flagged, and no speedup claimed
    assert "–" in lines["16"].split("│")[4]
    assert "error" in lines["32"] and "OOM" in lines["64"]


def test_na_cells_and_summary():
    text = render(report.render_table(("mixtral-8x7b", 1, True, False), [RESULTS[-2], RESULTS[-1]]))
    assert "n/a" in text
    summary = render(report.render_summary(RESULTS))
    assert "summary" in summary and "wins Triton / CUTLASS / ≈" in summary
    row = next(ln for ln in summary.splitlines() if "act per-tensor" in ln)
    # M=4: CUTLASS wins; M=8: tie; M=16: CUTLASS is wrong -> Triton wins; M=32/64: one side did not run -> no win.
    assert "1 / 1 / 1" in row
    assert "1 ✗ out of tolerance (CUTLASS)" in row and "1 error (CUTLASS)" in row and "1 OOM (Triton)" in row
    assert "7/10" in row
    lines = report.error_messages(RESULTS)
    assert any("boom" in ln and "M=32" in ln for ln in lines) and any("needs SM90" in ln for ln in lines)


def test_speedup_semantics():
    a, b = cell("triton", 4, us=100.0), cell("cutlass", 4, us=50.0)
    assert report.speedup(a, b) == (2.0, True)
    assert report.speedup(a, cell("cutlass", 4, us=50.0, error_ok=False)) == (None, False)
    assert report.baseline_backend(["cutlass", "triton"]) == "triton"
    assert report.baseline_backend(["cutlass_int8"]) == "cutlass_int8"


def test_json_schema_one_record_per_cell_with_environment(tmp_path):
    path = tmp_path / "out" / "r.json"
    report.write_json(path, RESULTS, ENV, argv=["moejit", "bench"], extra={"ceilings": {"copy_gbps": 3000.0}})
    data = json.loads(path.read_text())
    assert data["schema"] == "moejit.bench/1" and data["command"] == ["moejit", "bench"]
    assert data["fields"] == list(report.RECORD_FIELDS)
    assert len(data["records"]) == len(RESULTS)
    for rec in data["records"]:
        assert list(rec) == list(report.RECORD_FIELDS)
        for k in ("gpu", "driver", "torch", "triton", "cuda", "moejit_version", "git_rev"):
            assert rec[k] == ENV[k]
    bad = next(r for r in data["records"] if r["status"] == "error")
    assert bad["message"] == "RuntimeError: boom" and bad["median_us"] is None
    flagged = next(r for r in data["records"] if r["error_ok"] is False)
    assert flagged["error"] == 0.4 and flagged["tolerance"] == 3e-2


def test_json_has_no_nan(tmp_path):
    r = cell("triton", 4, us=10.0)
    r.error = float("inf")
    r.roofline_pct = float("nan")
    report.write_json(tmp_path / "r.json", [r], ENV)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rec = json.loads(text)["records"][0]
    assert rec["error"] == "inf" and rec["roofline_pct"] is None


def test_csv_schema(tmp_path):
    path = tmp_path / "r.csv"
    report.write_csv(path, RESULTS, ENV)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(RESULTS)
    assert list(rows[0]) == list(report.RECORD_FIELDS)
    assert rows[0]["backend"] == "triton" and float(rows[0]["median_us"]) == 100.0
    assert rows[0]["gpu"] == ENV["gpu"] and rows[0]["git_rev"] == "abc+dirty"
    assert next(r for r in rows if r["status"] == "n/a")["median_us"] == ""


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "p.png"
    report.write_plot(path, RESULTS, ENV)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_environment_on_this_machine():
    env = report.environment()
    assert set(report.ENV_FIELDS) <= set(env)
    assert env["moejit_version"] and env["torch"] and env["git_rev"]


def test_git_revision_outside_git_comes_from_the_environment(monkeypatch):
    """A copy of the tree without .git (the GPU machine's) reports $MOEJIT_GIT_REV, else 'unknown'."""
    monkeypatch.setattr(report, "_run", lambda *a, **k: "")
    monkeypatch.delenv("MOEJIT_GIT_REV", raising=False)
    assert report.git_revision() == "unknown"
    monkeypatch.setenv("MOEJIT_GIT_REV", "0123456789ab")
    assert report.git_revision() == "0123456789ab"


def test_git_revision_prefers_the_environment_over_a_stale_git(monkeypatch):
    """The GPU machine's copy may carry an older .git snapshot than its files: $MOEJIT_GIT_REV wins when set (seen:
    an H200 run labelled with the session's starting commit)."""
    monkeypatch.setattr(report, "_run", lambda *a, **k: "85e757504dc1")
    monkeypatch.setenv("MOEJIT_GIT_REV", "f8b6be3")
    assert report.git_revision() == "f8b6be3"
    monkeypatch.delenv("MOEJIT_GIT_REV")
    assert report.git_revision().startswith("85e757504dc1")
