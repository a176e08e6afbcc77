import json

import pytest
import torch
from click.testing import CliRunner

from moejit.cli import main


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("build", "info", "bench"):
        assert command in result.output


def test_info_runs_and_names_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEJIT_CACHE_DIR", str(tmp_path))
    (tmp_path / "common" / "sm_80" / "abc").mkdir(parents=True)
    (tmp_path / "common" / "sm_80" / "abc" / "build.json").write_text(
        json.dumps({"module": "common", "arch": "80", "key": "abc", "seconds": 12.5, "torch": "x", "built_at": 1}))
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "CUTLASS" in result.output and "torch" in result.output and "C++ compiler" in result.output
    assert "sm_80" in result.output and "common" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_bench_without_gpu_exits_2_with_one_line():
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "GPU" in result.output


def test_build_rejects_unknown_module_and_old_arch():
    if torch.version.cuda is None:
        pytest.skip("needs a CUDA-enabled torch")
    result = CliRunner().invoke(main, ["build", "--arch", "80", "--module", "nope"])
    assert result.exit_code == 2 and "unknown moejit module" in result.output
    result = CliRunner().invoke(main, ["build", "--arch", "75"])
    assert result.exit_code == 2 and "8.0" in result.output
