"""`moejit bench-int8` on a CPU: option parsing, environment defaults of the switches, --dry-run, the no-GPU exit,
the sweep end to end with fake backends and fake stage timings, the tables, and the JSON/CSV schema."""

import csv
import json
import math

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from moejit.bench.backends import Backend
from moejit.bench.int8 import report
from moejit.bench.int8.backends import (BACKEND_NAMES, SPECS, Int8Params, cli_shape, get_int8_backends,
                                        resolve_params, weight_bytes_int8)
from moejit.bench.int8.cli import bench_int8, make_plan, run_int8
from moejit.bench.int8.layers import StageTimes, stage_names
from moejit.bench.int8.sweep import TOTAL_STAGE, Int8Sweep, StageResult, stage_rows
from moejit.bench.models import ModelShape
from moejit.bench.report import RECORD_FIELDS, SCHEMA
from moejit.bench.roofline import Ceilings
from moejit.bench.sweep import SweepOptions
from moejit.bench.timing import summarize
from moejit.cli import main
from moejit.errors import MoejitInputError
from moejit.reference import moe_ref

ENV_NAMES = ("MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT", "VLLM_INT8_HYBRID_FUSED_SILU_QUANT",
             "MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT", "VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT")
TINY = ModelShape("tiny-moe", num_experts=4, topk=2, hidden=256, intermediate=128)
CEIL = Ceilings("fake GPU", copy_gbps=1000.0, rates_tflops={"int8": 500.0})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def params(args):
    return bench_int8.make_context("bench-int8", list(args)).params


# ---------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------

def test_defaults_are_the_seeds():
    p = params([])
    assert (p["num_tokens"], p["hidden"], p["intermediate"], p["num_experts"], p["top_k"]) == (8192, 2048, 512, 256,
                                                                                                8)
    assert p["dtype"] == "bfloat16"
    assert (p["quant_block_size"], p["super_group_size"], p["q_max"]) == (128, 256, 16)
    assert (p["warmup"], p["iters"]) == (10, 50)
    assert p["fused_permute_quant"] is None and p["fused_silu_quant"] is None  # the environment decides
    assert p["models"] == () and p["batch_sizes"] == () and p["backends"] == BACKEND_NAMES
    assert not p["profile"] and not p["dry_run"] and p["json_path"] is None and p["csv_path"] is None


def test_seed_options_and_multi_values():
    p = params(["--num-tokens", "64", "--hidden", "4096", "--intermediate", "1024", "--num-experts", "8",
                "--top-k", "2", "--dtype", "float16", "--quant-block-size", "128", "--super-group-size", "32",
                "--q-max", "8", "--warmup", "3", "--iters", "7", "--fused-permute-quant", "--no-fused-silu-quant",
                "--models", "qwen3.6-35b-a3b", "mixtral-8x7b", "--batch-sizes", "64", "512", "2048", "8192",
                "--backends", "hybrid", "triton", "--profile", "--json", "o.json", "--csv", "o.csv"])
    assert (p["num_tokens"], p["hidden"], p["intermediate"], p["num_experts"], p["top_k"]) == (64, 4096, 1024, 8, 2)
    assert p["dtype"] == "float16" and (p["super_group_size"], p["q_max"]) == (32, 8)
    assert (p["warmup"], p["iters"]) == (3, 7)
    assert p["fused_permute_quant"] is True and p["fused_silu_quant"] is False
    assert p["models"] == ("qwen3.6-35b-a3b", "mixtral-8x7b") and p["batch_sizes"] == (64, 512, 2048, 8192)
    assert p["backends"] == ("hybrid", "triton") and p["profile"]
    assert (p["json_path"], p["csv_path"]) == ("o.json", "o.csv")


@pytest.mark.parametrize("args, needle", [
    (["--q-max", "0"], "q_max"),
    (["--quant-block-size", "100"], "block_size"),
    (["--super-group-size", "0"], "super_group_size"),
    (["--backends", "cublas"], "unknown backend"),
    (["--models", "no-such-model"], "unknown model"),
    (["--batch-sizes", "0"], "not positive"),
    (["--num-tokens", "0"], "not positive"),
    (["--iters", "0"], "iters"),
    (["--dtype", "fp8"], "dtype"),
])
def test_bad_options_exit_2_with_a_reason(args, needle):
    result = CliRunner().invoke(main, ["bench-int8", "--dry-run"] + args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_registered_and_help_names_the_environment():
    result = CliRunner().invoke(main, ["bench-int8", "--help"])
    assert result.exit_code == 0
    for needle in ("--fused-permute-quant", "--no-fused-silu-quant", "--super-group-size", "--q-max",
                   "MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT", "VLLM_INT8_HYBRID", "--profile", "--models"):
        assert needle in result.output


# ---------------------------------------------------------------------------------------------------------------
# Switch defaults from the environment
# ---------------------------------------------------------------------------------------------------------------

def test_switch_defaults_without_environment():
    p = resolve_params(128, 256, 16, None, None)
    assert (p.fused_silu_quant, p.fused_permute_quant) == (True, False)
    assert p.s_eff == 65


@pytest.mark.parametrize("env, want", [
    ({"MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT": "0"}, (False, False)),
    ({"MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT": "1"}, (True, True)),
    ({"VLLM_INT8_HYBRID_FUSED_SILU_QUANT": "off"}, (False, False)),
    ({"VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT": "TRUE"}, (True, True)),
    ({"MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT": "0", "VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT": "1"}, (True, False)),
    ({"MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT": "", "VLLM_INT8_HYBRID_FUSED_SILU_QUANT": "no"}, (False, False)),
])
def test_switches_follow_the_runners_environment(monkeypatch, env, want):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = resolve_params(128, 256, 16, None, None)
    assert (p.fused_silu_quant, p.fused_permute_quant) == want
    # a flag on the command line wins over the environment
    p = resolve_params(128, 256, 16, not want[0], not want[1])
    assert (p.fused_silu_quant, p.fused_permute_quant) == (not want[0], not want[1])


def test_environment_reaches_the_dry_run(monkeypatch):
    monkeypatch.setenv("VLLM_INT8_HYBRID_FUSED_PERMUTE_QUANT", "1")
    monkeypatch.setenv("MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT", "0")
    out = CliRunner().invoke(main, ["bench-int8", "--dry-run"]).output
    assert "fused permute+quant on, fused SiLU+quant off" in out
    out = CliRunner().invoke(main, ["bench-int8", "--dry-run", "--no-fused-permute-quant"]).output
    assert "fused permute+quant off, fused SiLU+quant off" in out


def test_bad_environment_value_exits_2(monkeypatch):
    monkeypatch.setenv("MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT", "sometimes")
    result = CliRunner().invoke(main, ["bench-int8", "--dry-run"])
    assert result.exit_code == 2 and "not a boolean" in result.output
    with pytest.raises(MoejitInputError):
        resolve_params(128, 256, 16, None, None)
    # an explicit flag does not read that variable
    assert resolve_params(128, 256, 16, None, True).fused_permute_quant


# ---------------------------------------------------------------------------------------------------------------
# Plan, dry run, no GPU
# ---------------------------------------------------------------------------------------------------------------

def test_default_shape_is_qwen_and_custom_shapes_are_named_custom():
    assert cli_shape(256, 8, 2048, 512).name == "qwen3.6-35b-a3b"
    assert cli_shape(8, 2, 4096, 14336).name == "mixtral-8x7b"
    s = cli_shape(16, 4, 1024, 256)
    assert s.name == "custom" and (s.num_experts, s.topk, s.hidden, s.intermediate) == (16, 4, 1024, 256)


def test_make_plan_models_and_batch_sizes():
    plan = make_plan(8192, 2048, 512, 256, 8, 128, 256, 16, None, True, ("qwen3.6-35b-a3b", "mixtral-8x7b"),
                     (64, 512), ("triton", "hybrid"))
    assert [s.name for s in plan["shapes"]] == ["qwen3.6-35b-a3b", "mixtral-8x7b"]
    assert plan["batch_sizes"] == (64, 512)
    assert [b.name for b in plan["backends"]] == ["hybrid", "triton"]  # catalogue order
    assert plan["params"].fused_permute_quant and plan["params"].fused_silu_quant
    assert not plan["problems"]
    plan = make_plan(100, 2880, 2880, 128, 4, 128, 256, 16, None, None, (), (), BACKEND_NAMES)
    assert plan["batch_sizes"] == (100,)
    assert any("multiples of" in p for p in plan["problems"])  # gpt-oss's 2880 is not a multiple of 128


def test_dry_run_prints_the_plan():
    result = CliRunner().invoke(main, ["bench-int8", "--dry-run", "--models", "qwen3.6-35b-a3b", "mixtral-8x7b",
                                       "--batch-sizes", "64", "512", "2048", "8192", "--hidden", "1024"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "56 cells" in out and "mixtral-8x7b" in out and "8/2/4096/14336" in out  # 2 models × 4 M × 7 backends
    assert "S_eff=65" in out and "--hidden ignored with --models" in out
    for name in BACKEND_NAMES:
        assert name in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_gpu_exits_2_with_one_line():
    result = CliRunner(mix_stderr=False).invoke(main, ["bench-int8"]) if "mix_stderr" in \
        CliRunner.__init__.__code__.co_varnames else CliRunner().invoke(main, ["bench-int8"])
    assert result.exit_code == 2
    text = (getattr(result, "stderr", "") or result.output).strip()
    assert "needs a CUDA GPU" in text and len(text.splitlines()) == 1


def test_weight_bytes_and_stage_names():
    s = ModelShape("x", 2, 1, 256, 128)
    assert weight_bytes_int8(s, []) == 2 * s.weight_elements()
    assert weight_bytes_int8(s, ["int8_channel"]) == 3 * s.weight_elements() + 2 * (256 + 256) * 4
    assert stage_names(False, True) == ["quant", "permute", "GEMM1", "SiLU+quant (fused)", "GEMM2", "unpermute"]
    assert stage_names(True, True) == ["permute+quant (fused)", "GEMM1", "SiLU+quant (fused)", "GEMM2", "unpermute"]
    assert stage_names(True, False) == ["permute+quant (fused)", "GEMM1", "SiLU·mul", "quant", "GEMM2", "unpermute"]
    assert len(stage_names(False, False)) == 7


def test_backends_catalogue():
    assert BACKEND_NAMES[:5] == ("hybrid", "cutlass-pt", "triton", "triton-block", "triton-hybrid")
    with pytest.raises(Exception, match="unknown backend"):
        get_int8_backends(["nope"], Int8Params())
    fp8 = {s.name: s for s in SPECS}
    assert fp8["cutlass-fp8"].min_cc == (9, 0) and fp8["triton-fp8"].min_cc == (8, 9)
    assert all(s.min_cc >= (8, 0) for s in SPECS)


# ---------------------------------------------------------------------------------------------------------------
# The sweep on a CPU: fake backends over the real data hooks, fake stage timings
# ---------------------------------------------------------------------------------------------------------------

class FakeInt8Backend(Backend):
    """Computes the float32 layer from the cell's float weights (error 0), or something wrong."""

    def __init__(self, spec, behaviour="good"):
        self.spec, self.name, self.label, self.behaviour = spec, spec.name, spec.label, behaviour

    def prepare(self, x, quant=None):
        w1f, w2f = x.variants["float"]
        q = x.variants[self.spec.variant]
        assert q[0].shape == w1f.shape and q[1].shape == w2f.shape  # its layout exists and matches
        if self.behaviour == "broken":
            def boom():
                raise RuntimeError("kernel exploded")
            return boom
        scale = 1.5 if self.behaviour == "wrong" else 1.0
        return lambda: (moe_ref(x.a, w1f, w2f, x.topk_weights, x.topk_ids) * scale).to(x.a.dtype)


def fake_timer(fns, ops_per_graph, warmup, iters, profile, label):
    for f in fns:
        f()
    base = 10.0 if label.endswith(" triton") else 5.0
    return summarize([base * 0.95, base, base * 1.05])


def fake_stage_times(self, cfg, m, x, label):
    names = stage_names(self.params.fused_permute_quant, self.params.fused_silu_quant)
    samples = [[float(i + 1) + 0.1 * r for i in range(len(names))] for r in range(5)]
    times = StageTimes(names, samples, [sum(s) for s in samples], "fake events")
    return stage_rows(self._stage_blank, cfg, m, times)


def fake_plan(behaviours: dict, fused_permute=False):
    plan = make_plan(16, 256, 128, 4, 2, 128, 256, 16, None, fused_permute, (), (4, 16), BACKEND_NAMES)
    plan["shapes"] = [TINY]
    from moejit.bench.int8.sweep import QUANT
    from moejit.bench.sweep import Config

    plan["configs"] = [Config(TINY, QUANT)]
    plan["backends"] = [FakeInt8Backend(s, behaviours.get(s.name, "good")) for s in SPECS]
    return plan


def test_sweep_end_to_end_with_exports(tmp_path, monkeypatch):
    monkeypatch.setattr(Int8Sweep, "time_hybrid_stages", fake_stage_times)
    plan = fake_plan({"cutlass-pt": "wrong", "triton-fp8": "broken"})
    opts = SweepOptions(batch_sizes=plan["batch_sizes"], warmup=1, iters=3, tolerance=0.15, dtype="bfloat16")
    console = Console(record=True, width=220)
    results, stages = run_int8(console, plan, opts, json_path=tmp_path / "o.json", csv_path=tmp_path / "o.csv",
                               ceilings=CEIL, device="cpu", timer=fake_timer)
    assert len(results) == 2 * len(SPECS)
    by = {(r.batch_size, r.backend): r for r in results}
    good = by[(4, "hybrid")]
    assert good.status == "ok" and good.error < 1e-2 and good.error_ok and good.median_us == 5.0
    assert good.roofline_pct is not None and good.bound in ("memory", "compute")
    assert "S_eff=65" in good.act_scales and not good.per_act_token and good.per_out_ch
    assert by[(4, "triton")].per_act_token and by[(4, "triton")].act_scales == "dynamic per-token"
    assert "128×128" in by[(4, "triton-block")].act_scales and not by[(4, "triton-block")].per_out_ch
    assert by[(4, "cutlass-pt")].error_ok is False and math.isclose(by[(4, "cutlass-pt")].error, 0.5, rel_tol=1e-2)
    assert by[(16, "triton-fp8")].status == "error" and "kernel exploded" in by[(16, "triton-fp8")].message
    # stages: one row per stage and a total, for each batch size; means add up to the total
    assert {s.batch_size for s in stages} == {4, 16}
    for m in (4, 16):
        rows = [s for s in stages if s.batch_size == m]
        assert [s.stage for s in rows] == stage_names(False, True) + [TOTAL_STAGE]
        total = rows[-1]
        assert math.isclose(sum(s.mean_us for s in rows[:-1]), total.mean_us)
        assert math.isclose(sum(s.share_pct for s in rows[:-1]), 100.0)
    text = console.export_text()
    assert "tiny-moe" in text and "CUTLASS INT8 hybrid" in text and "Triton INT8 tok×ch" in text
    assert "2.00×" in text  # 10 µs / 5 µs, separated spreads
    assert "baseline" in text and "per stage" in text and "total (one forward)" in text
    assert "kernel exploded" in text and "summary" in text

    data = json.loads((tmp_path / "o.json").read_text())
    assert data["schema"] == SCHEMA and data["bench"] == "int8" and data["fields"] == list(RECORD_FIELDS)
    assert len(data["records"]) == len(results) and set(data["records"][0]) == set(RECORD_FIELDS)
    assert data["params"]["super_group_size_eff"] == 65 and data["params"]["fused_silu_quant"] is True
    assert data["environment"]["matmul_tflops"] == 500.0
    assert len(data["stages"]) == len(stages) and set(data["stages"][0]) == set(StageResult.field_names())
    assert data["ceilings"]["rates_tflops"] == {"int8": 500.0}

    with open(tmp_path / "o.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(results) and list(rows[0]) == list(RECORD_FIELDS)
    with open(tmp_path / "o_stages.csv") as fh:
        srows = list(csv.DictReader(fh))
    assert len(srows) == len(stages) and srows[0]["stage"] == "quant" and "gpu" in srows[0]


def test_fused_permute_stage_names_and_no_stages(monkeypatch):
    monkeypatch.setattr(Int8Sweep, "time_hybrid_stages", fake_stage_times)
    plan = fake_plan({}, fused_permute=True)
    opts = SweepOptions(batch_sizes=(4,), warmup=0, iters=1)
    _, stages = run_int8(Console(width=200, file=open("/dev/null", "w")), plan, opts, ceilings=CEIL, device="cpu",
                         timer=fake_timer)
    assert stages[0].stage == "permute+quant (fused)" and stages[0].fused_permute_quant
    _, stages = run_int8(Console(width=200, file=open("/dev/null", "w")), plan, opts, stage_timing=False,
                         ceilings=CEIL, device="cpu", timer=fake_timer)
    assert stages == []


def test_failed_stage_timing_is_recorded(monkeypatch):
    def boom(self, cfg, m, x, label):
        raise RuntimeError("graph capture failed")

    monkeypatch.setattr(Int8Sweep, "time_hybrid_stages", boom)
    plan = fake_plan({})
    opts = SweepOptions(batch_sizes=(4,), warmup=0, iters=1)
    console = Console(record=True, width=200)
    results, stages = run_int8(console, plan, opts, ceilings=CEIL, device="cpu", timer=fake_timer)
    assert all(r.status == "ok" for r in results)
    assert stages and all(s.status == "error" and "graph capture failed" in s.message for s in stages)
    assert "graph capture failed" in console.export_text()


def test_weights_share_one_set_of_float_values():
    """Every layout is a quantization of the same float weights (so the error column compares like with like)."""
    opts = SweepOptions(batch_sizes=(4,))
    backends = [FakeInt8Backend(s) for s in SPECS]
    sweep = Int8Sweep([], backends, opts, Int8Params(), device="cpu")
    sets = sweep.make_weights(TINY, True)
    assert len(sets) == 1
    w = sets[0]
    w1f = w["float"][0].float()
    assert set(w) == {"float", "int8_channel", "int8_block", "fp8_channel"}
    q, _, s, _ = w["int8_channel"]
    assert q.dtype == torch.int8 and s.shape == (4, 256)
    assert (q.float() * s[..., None] - w1f).abs().max() <= s.max() / 2 + 1e-6
    qb, _, sb, _ = w["int8_block"]
    assert sb.shape == (4, 2, 2)
    full = sb.repeat_interleave(128, 1).repeat_interleave(128, 2)
    assert (qb.float() * full - w1f).abs().max() <= sb.max() / 2 + 1e-6
    assert w["fp8_channel"][0].dtype == torch.float8_e4m3fn


def test_stage_table_rendering_and_messages():
    blank = lambda cfg, m, i, name, status="ok", message="": StageResult(  # noqa: E731
        "tiny", 1, 4, 2, 256, 128, m, "bfloat16", False, True, i, name, status, message)
    times = StageTimes(["a", "b"], [[1.0, 3.0], [2.0, 4.0], [3.0, 5.0]], [4.0, 6.0, 8.0], "events")
    rows = stage_rows(blank, None, 8, times)
    assert [r.stage for r in rows] == ["a", "b", TOTAL_STAGE]
    assert rows[0].median_us == 2.0 and rows[1].median_us == 4.0 and rows[2].median_us == 6.0
    assert rows[0].share_pct == pytest.approx(100 * 2 / 6)
    console = Console(record=True, width=200)
    console.print(report.render_stage_table(report.shape_key(rows[0]), rows))
    text = console.export_text()
    assert "1. a" in text and "total (one forward)" in text and "33%" in text and "events" in text
    bad = [blank(None, 8, 0, "a", "error", "boom")]
    assert report.stage_messages(bad) == ["hybrid stages tiny error: boom [M=8]"]
    assert report.stages_csv_path("x/y.csv").name == "y_stages.csv"


def test_stage_bench_forwards_to_bench_int8():
    from moejit.int8 import stage_bench

    assert stage_bench.bench_int8_args("mixtral", [64, 512]) == ["--models", "mixtral-8x7b", "--batch-sizes", "64",
                                                                 "512"]
    p = params(stage_bench.bench_int8_args("qwen", [8192]))
    assert p["models"] == ("qwen3.6-35b-a3b",) and p["batch_sizes"] == (8192,)
