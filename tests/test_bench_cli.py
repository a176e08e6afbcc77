"""`moejit bench` option parsing and --dry-run (CPU only: the plan never needs a GPU)."""

import json

import pytest
import torch
from click.testing import CliRunner

from moejit.bench.cli import bench
from moejit.cli import main


def params(args):
    return bench.make_context("bench", list(args)).params


def test_defaults_are_the_seeds():
    p = params([])
    assert p["models"] == ("mixtral-8x7b",)
    assert p["tp_sizes"] == (1,)
    assert p["batch_sizes"] == (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    assert p["per_act_token_opts"] == (False, True) and p["per_out_ch_opts"] == (False, True)
    assert p["backends"] == ("cutlass", "triton")
    assert p["ops_per_graph"] == 10 and p["limit_k"] == () and p["limit_n"] == ()
    assert not p["no_check"] and not p["profile"] and not p["dry_run"]
    assert p["json_path"] is None and p["csv_path"] is None and p["plot_path"] is None


def test_several_values_after_one_flag_like_the_seed():
    p = params(["--models", "deepseek-v3", "qwen3.6-35b-a3b", "--tp-sizes", "1", "8", "--batch-sizes", "2", "4",
                "8", "--per-act-token-opts", "false", "--per-out-ch-opts", "TRUE", "False", "--limit-k", "4096",
                "--limit-n", "14336", "1792", "--backends", "triton", "--ops-per-graph", "3", "--warmup", "1",
                "--iters", "7", "--no-check", "--profile", "--json", "x.json", "--csv", "x.csv", "--plot", "x.png"])
    assert p["models"] == ("deepseek-v3", "qwen3.6-35b-a3b")
    assert p["tp_sizes"] == (1, 8) and p["batch_sizes"] == (2, 4, 8)
    assert p["per_act_token_opts"] == (False,) and p["per_out_ch_opts"] == (True, False)
    assert p["limit_k"] == (4096,) and p["limit_n"] == (14336, 1792)
    assert p["backends"] == ("triton",)
    assert (p["ops_per_graph"], p["warmup"], p["iters"]) == (3, 1, 7)
    assert p["no_check"] and p["profile"]
    assert (p["json_path"], p["csv_path"], p["plot_path"]) == ("x.json", "x.csv", "x.png")


def test_repeated_flags_append_and_equals_form_works():
    p = params(["--tp-sizes", "1", "--tp-sizes", "2", "4", "--batch-sizes=16"])
    assert p["tp_sizes"] == (1, 2, 4) and p["batch_sizes"] == (16,)


@pytest.mark.parametrize("args, needle", [
    (["--tp-sizes", "0"], "not positive"),
    (["--batch-sizes", "-4"], "not positive"),
    (["--per-act-token-opts", "maybe"], "not a boolean"),
    (["--ops-per-graph", "0"], "ops-per-graph"),
    (["--models"], "requires an argument"),
])
def test_bad_options_are_usage_errors(args, needle):
    result = CliRunner().invoke(main, ["bench", "--dry-run"] + args)
    assert result.exit_code == 2
    assert needle in result.output


def test_unknown_model_backend_and_bad_tp_exit_2_naming_them():
    runner = CliRunner()
    r = runner.invoke(main, ["bench", "--dry-run", "--models", "nope-moe"])
    assert r.exit_code == 2 and "nope-moe" in r.output and "deepseek-v3" in r.output
    r = runner.invoke(main, ["bench", "--dry-run", "--backends", "cuBLAS"])
    assert r.exit_code == 2 and "cuBLAS" in r.output and "triton" in r.output
    r = runner.invoke(main, ["bench", "--dry-run", "--models", "gpt-oss-120b", "--tp-sizes", "7"])
    assert r.exit_code == 2 and "gpt-oss-120b" in r.output and "TP=7" in r.output
    r = runner.invoke(main, ["bench", "--dry-run", "--limit-k", "123"])
    assert r.exit_code == 2 and "no configuration" in r.output


def test_dry_run_prints_every_cell_and_memory(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    r = CliRunner().invoke(main, ["bench", "--dry-run", "--models", "deepseek-v3", "qwen3.6-35b-a3b",
                                  "--tp-sizes", "1", "8", "--batch-sizes", "16", "2048"])
    assert r.exit_code == 0, r.output
    out = r.output
    # 2 models x 2 TP x 4 quant options x 2 batch sizes = 32 rows, 2 backends each.
    assert "64 cells in 16 configurations" in out
    assert out.count("deepseek-v3") >= 16 and out.count("qwen3.6-35b-a3b") >= 16
    assert "256/8/7168/2048" in out and "256/8/7168/256" in out and "256/8/2048/64" in out
    # deepseek-v3 TP1 weights: 256 experts x 3 x 2048 x 7168 bytes + per-expert scales = 10.50 GiB.
    assert "10.50" in out
    assert "act per-token, w per-channel" in out
    assert "backends:" in out and "peak" in out


def test_dry_run_limit_filters_use_k_and_sharded_n(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    r = CliRunner().invoke(main, ["bench", "--dry-run", "--models", "mixtral-8x7b", "custom-small",
                                  "--tp-sizes", "1", "2", "--limit-n", "7168", "--batch-sizes", "64",
                                  "--per-act-token-opts", "false", "--per-out-ch-opts", "false"])
    assert r.exit_code == 0, r.output
    assert "2 cells in 1 configurations" in r.output  # only mixtral TP=2 has N = 14336 / 2
    assert "8/2/4096/7168" in r.output and "custom-small" not in r.output


def test_dry_run_reads_a_config_json(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    d = tmp_path / "Tiny-MoE"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"num_experts": 16, "num_experts_per_tok": 4, "hidden_size": 1024,
                                               "intermediate_size": 4096, "moe_intermediate_size": 256}))
    r = CliRunner().invoke(main, ["bench", "--dry-run", "--models", str(d / "config.json"), "--tp-sizes", "2",
                                  "--batch-sizes", "8"])
    assert r.exit_code == 0, r.output
    assert "Tiny-MoE" in r.output and "16/4/1024/128" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_no_gpu_without_dry_run_is_one_line_exit_2():
    r = CliRunner().invoke(main, ["bench", "--models", "deepseek-v3", "--tp-sizes", "8"])
    assert r.exit_code == 2
    assert len(r.output.strip().splitlines()) == 1 and "GPU" in r.output and "--dry-run" in r.output
