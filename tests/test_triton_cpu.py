"""CPU tests of the Triton FP8 MoE path: config tables and heuristic, the alignment's shape math and reference,
argument validation that needs no GPU, and the kernels themselves under TRITON_INTERPRET=1 (in a subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moejit.triton import configs
from moejit.triton.align import align_block_size_ref, max_padded_size

ROOT = Path(__file__).resolve().parents[1]


def test_max_padded_size():
    assert max_padded_size(0, 8, 16) == 8 * 16  # rounded up to whole blocks: 8*15 -> 128
    assert max_padded_size(10, 4, 16) == 80  # 10 + 60 = 70 -> 80
    assert max_padded_size(8192 * 8, 384, 64) % 64 == 0
    assert max_padded_size(8192 * 8, 384, 64) >= 8192 * 8 + 384 * 63


def test_align_ref(seeded):
    ids = torch.randint(0, 5, (37, 3), generator=seeded, dtype=torch.int32)
    ids[0, 0] = -1
    sorted_ids, expert_ids, total = align_block_size_ref(ids, 5, 16)
    counts = torch.bincount(ids[ids >= 0].long(), minlength=5)
    assert total.item() == int(((counts + 15) // 16 * 16).sum())
    live = sorted_ids[: total.item()]
    real = live[live < ids.numel()]
    assert sorted(real.tolist()) == sorted(torch.nonzero(ids.reshape(-1) >= 0).flatten().tolist())
    for b in range(total.item() // 16):  # each block holds slots of its expert only
        blk = sorted_ids[b * 16:(b + 1) * 16]
        blk = blk[blk < ids.numel()]
        assert (ids.reshape(-1)[blk.long()] == expert_ids[b]).all()
    assert (expert_ids[total.item() // 16:] == -1).all()


def test_quant_mode_names():
    assert configs.quant_mode(True, True, None) == "token_channel"
    assert configs.quant_mode(False, False, None) == "tensor_tensor"
    assert configs.quant_mode(False, False, (128, 128)) == "block128x128"
    name = configs.config_file_name(8, 14336, 4096, 2, "NVIDIA_H200", "fp8_w8a8", "token_channel")
    assert name == "E=8,N=14336,K=4096,topk=2,device_name=NVIDIA_H200,dtype=fp8_w8a8,quant=token_channel.json"


def test_per_token_tile_rule():
    """Per-token quantization reads rows up to 16384 columns once, four warps a program and about 4096 values
    (several short rows) a program; wider rows go to the two-pass kernel."""
    from moejit.triton.quant import token_tile

    assert token_tile(512) == (512, 8, 4) and token_tile(2048) == (2048, 2, 4)
    assert token_tile(14336) == (16384, 1, 4) and token_tile(100) == (128, 32, 4)
    assert token_tile(16385) is None


@pytest.mark.parametrize("m", [1, 4, 64, 512, 2048, 8192])
@pytest.mark.parametrize("e,topk,k", [(8, 2, 4096), (256, 8, 2048), (256, 8, 7168), (128, 8, 16)])
def test_heuristic_is_valid(m, e, topk, k):
    cfg = configs.validate_config(configs.heuristic_config(m, e, 512, k, topk))
    assert 32 <= cfg["BLOCK_SIZE_K"] <= max(32, triton_next_pow2(k))  # 8-bit tl.dot needs K >= 32
    block = configs.validate_config(configs.heuristic_config(m, e, 512, k, topk, block_shape=(128, 64)))
    assert 64 % block["BLOCK_SIZE_K"] == 0
    # more rows per expert never picks a smaller M tile
    bigger = configs.heuristic_config(m * 16, e, 512, k, topk)
    assert bigger["BLOCK_SIZE_M"] >= cfg["BLOCK_SIZE_M"]


def triton_next_pow2(x):
    return 1 << (x - 1).bit_length()


def _write_table(d: Path, device: str, entries: dict) -> None:
    name = configs.config_file_name(8, 1024, 2048, 2, device, "fp8_w8a8", "token_channel")
    (d / name).write_text(json.dumps(entries))


def test_table_lookup_nearest_and_precedence(tmp_path, monkeypatch):
    cfg = lambda bm: dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1,  # noqa: E731
                          num_warps=4, num_stages=3)
    user, env = tmp_path / "user", tmp_path / "env"
    user.mkdir()
    env.mkdir()
    monkeypatch.setenv("MOEJIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(configs, "user_config_dir", lambda: user)
    _write_table(user, "FakeGPU", {"1": cfg(16), "64": cfg(32), "1024": cfg(64), "_comment": "ignored"})
    configs.load_table.cache_clear()
    get = lambda m: configs.get_config(m, 8, 1024, 2048, 2, "fp8_w8a8", "token_channel", device="FakeGPU")  # noqa
    assert get(1)["BLOCK_SIZE_M"] == 16
    assert get(40)["BLOCK_SIZE_M"] == 32  # nearest key (log scale)
    assert get(600)["BLOCK_SIZE_M"] == 64 and get(2048)["BLOCK_SIZE_M"] == 64  # 1024 is within 2×
    # further than 2× from every entry: the heuristic (an M = 64 entry served M = 1024 at 2.6× the heuristic's time)
    for m in (8, 250, 100000):
        assert get(m) == configs.heuristic_config(m, 8, 1024, 2048, 2)
    # block scales clamp BLOCK_SIZE_K to the scale group
    assert configs.get_config(1, 8, 1024, 2048, 2, "fp8_w8a8", "token_channel", (128, 64),
                              device="FakeGPU")["BLOCK_SIZE_K"] == 64
    # $MOEJIT_TRITON_CONFIG_DIR wins over the user table
    _write_table(env, "FakeGPU", {"64": cfg(128)})
    monkeypatch.setenv("MOEJIT_TRITON_CONFIG_DIR", str(env))
    configs.load_table.cache_clear()
    assert get(64)["BLOCK_SIZE_M"] == 128
    # unknown device: the heuristic
    configs.load_table.cache_clear()
    assert configs.get_config(64, 8, 1024, 2048, 2, "fp8_w8a8", "token_channel", device="Other") == \
        configs.heuristic_config(64, 8, 1024, 2048, 2)


def test_bad_table_is_rejected():
    with pytest.raises(ValueError, match="BLOCK_SIZE_N"):
        configs.parse_table(json.dumps({"1": dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=48, BLOCK_SIZE_K=128,
                                                  GROUP_SIZE_M=1, num_warps=4, num_stages=3)}))
    with pytest.raises(ValueError, match="lacks"):
        configs.parse_table(json.dumps({"1": dict(BLOCK_SIZE_M=16)}))
    with pytest.raises(ValueError, match="BLOCK_SIZE_K must be a power of two >= 32"):  # 8-bit tl.dot: K >= 32
        configs.parse_table(json.dumps({"1": dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=16,
                                                  GROUP_SIZE_M=1, num_warps=4, num_stages=3)}))


def test_shipped_tables_parse():
    paths = sorted(configs.PACKAGE_CONFIG_DIR.glob("*.json"))
    if not paths:
        pytest.skip(f"no config tables shipped yet in {configs.PACKAGE_CONFIG_DIR} (moejit tune --output writes them)")
    for path in paths:
        table = configs.parse_table(path.read_text())
        assert table, path


def test_validation_on_cpu_tensors():
    """Validation runs before anything touches a GPU: CPU tensors are rejected with a clear error."""
    from moejit.errors import MoejitInputError
    from moejit.moe.triton_fp8 import triton_moe_fp8

    a = torch.randn(4, 64, dtype=torch.bfloat16)
    w1 = torch.zeros(2, 64, 64).to(torch.float8_e4m3fn)
    w2 = torch.zeros(2, 64, 32).to(torch.float8_e4m3fn)
    ids = torch.zeros(4, 1, dtype=torch.int32)
    with pytest.raises(MoejitInputError, match="CUDA"):
        triton_moe_fp8(a, w1, w2, torch.ones(4, 1), ids, torch.ones(2), torch.ones(2))


@pytest.mark.skipif(os.environ.get("MOEJIT_SKIP_INTERPRETER") == "1", reason="MOEJIT_SKIP_INTERPRETER=1")
def test_kernels_under_interpreter():
    """Alignment, quantization, the fused GEMM in every scale mode, and the whole layer, on the CPU."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           str(ROOT / "tests" / "triton_interp_cases.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


@pytest.mark.parametrize("m,e,topk", [(1, 8, 2), (64, 256, 8), (8192, 8, 2), (8192, 256, 8), (4, 384, 8)])
def test_tune_space_is_pruned(m, e, topk):
    from moejit.triton import tune

    tiles = tune.tile_candidates(m, e, topk)
    assert 3 <= len(tiles) <= 9
    for c in tiles + tune.refine_candidates(tiles[0]):
        configs.validate_config(c)
        assert tune.smem_bytes(c) <= tune.SMEM_LIMIT
    assert len(tune.refine_candidates(tiles[0])) <= 9
    rows = m * topk / e
    assert all(c["BLOCK_SIZE_M"] <= max(16, 2 * rows) for c in tiles)
    block = tune.tile_candidates(m, e, topk, (128, 64))
    assert all(c["BLOCK_SIZE_K"] == 64 for c in block)
    assert all(64 % c["BLOCK_SIZE_K"] == 0 for c in tune.refine_candidates(block[0], (128, 64)))


def test_tune_mode_args_and_cli():
    from click.testing import CliRunner

    from moejit.cli import main
    from moejit.triton.tune import QUANT_MODES, _mode_args

    assert _mode_args("token_channel") == (True, True, None, False)
    assert _mode_args("tensor_tensor") == (False, False, None, False)
    assert _mode_args("block128x128") == (False, False, (128, 128), False)
    assert _mode_args("hybrid") == (False, True, (128, 128), True)  # per-channel weights, K tiles inside a Q block
    for mode in QUANT_MODES:
        per_token, per_ch, block, hybrid = _mode_args(mode)
        assert hybrid or configs.quant_mode(per_token, per_ch, block) == mode
    result = CliRunner().invoke(main, ["tune", "--help"])
    assert result.exit_code == 0 and "--batch-sizes" in result.output and "--shape" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(main, ["tune", "--shape", "8,2,128,128", "--batch-sizes", "1"])
        assert result.exit_code != 0 and "needs a CUDA GPU" in result.output
    result = CliRunner().invoke(main, ["tune", "--shape", "8,2,128,128", "--quant", "hybrid"])
    assert result.exit_code != 0 and "INT8 only" in result.output


def test_write_table_roundtrip(tmp_path):
    from moejit.triton.tune import write_table

    cfg = configs.heuristic_config(64, 8, 1024, 2048, 2)
    path = tmp_path / "t.json"
    write_table({64: cfg, 1: cfg}, path, {"device": "x"}, {1: 1.25, 64: None})
    assert configs.parse_table(path.read_text()) == {1: cfg, 64: cfg}
    assert json.loads(path.read_text())["_heuristic"] == {"1": 1.25, "64": None}


@pytest.mark.parametrize("heuristic_runs", [True, False])
def test_tune_shape_picks_the_fastest_and_always_times_the_heuristic(heuristic_runs):
    """tune_shape's search with a synthetic cost model in place of the GPU timer: the table holds the cheapest
    config that ran, the heuristic's config is timed at every M whether or not the search space holds it, and its
    ratio to the best is reported (None when it failed to run)."""
    from moejit.triton import tune

    e, topk, k, n = 8, 2, 1024, 512
    timed = []

    def cost(inputs, mode_args, cfg, iters):  # favours big N tiles and 256-deep K; 8 warps fail
        timed.append((inputs, cfg))
        is_heuristic = cfg == configs.heuristic_config(inputs, e, n, k, topk)
        if cfg["num_warps"] == 8 or (is_heuristic and not heuristic_runs):
            return None
        return 100.0 + 5000.0 / cfg["BLOCK_SIZE_N"] + 4000.0 / cfg["BLOCK_SIZE_K"] + cfg["num_stages"]

    lines, partial = [], []
    table, ratios = tune.tune_shape(e, topk, k, n, [1, 512], "token_channel", None, 3, log=lines.append,
                                    timer=cost, make_inputs=lambda m, prev: m,
                                    on_batch=lambda t, r: partial.append(sorted(t)))
    assert sorted(table) == [1, 512] and len(lines) == 2
    assert partial == [[1], [1, 512]]  # the CLI writes the table after each batch size
    for m in (1, 512):
        heuristic = configs.heuristic_config(m, e, n, k, topk)
        tried = [c for inputs, c in timed if inputs == m]
        assert heuristic in tried and len(tried) == len({json.dumps(c, sort_keys=True) for c in tried})
        ran = [(cost(m, None, c, 0), c) for c in tried]
        best_us = min(us for us, _ in ran if us is not None)
        assert cost(m, None, table[m], 0) == best_us and table[m]["num_warps"] == 4
        if heuristic_runs:
            assert ratios[m] == round(cost(m, None, heuristic, 0) / best_us, 3) and ratios[m] >= 1
        else:
            assert ratios[m] is None and "did not run" in lines[[1, 512].index(m)]


def test_cuda_alignment_contract_on_cpu(monkeypatch):
    """The CUDA alignment op's fake (torch.compile) has the Triton alignment's shapes; its wrapper validates before
    any kernel; MOEJIT_ALIGN picks the implementation."""
    from moejit import registry
    from moejit.errors import MoejitInputError
    from moejit.ops.common import align_max_padded, moe_align_block_size
    from moejit.triton.align import align_impl, max_padded_size

    ids = torch.empty(7, 8, dtype=torch.int32, device="meta")
    s, ex, tot = registry.ops()["moe_align_block_size"].fake(ids, 256, 16)
    assert s.shape == (max_padded_size(56, 256, 16),) and ex.shape == (s.shape[0] // 16,) and tot.shape == (1,)
    assert align_max_padded(56, 256, 16) == -(-(56 + 256 * 15) // 16) * 16 and align_max_padded(0, 1, 1) == 1
    with pytest.raises(MoejitInputError, match="CUDA"):
        moe_align_block_size(torch.zeros(4, 2, dtype=torch.int32), 8, 16)
    with pytest.raises(MoejitInputError, match="topk_ids must have dtype"):
        moe_align_block_size(torch.zeros(4, 2), 8, 16)
    monkeypatch.delenv("MOEJIT_ALIGN", raising=False)
    assert align_impl() == "triton"
    monkeypatch.setenv("MOEJIT_ALIGN", "CUDA")
    assert align_impl() == "cuda"
    monkeypatch.setenv("MOEJIT_ALIGN", "cub")
    with pytest.raises(ValueError, match="MOEJIT_ALIGN"):
        align_impl()


def test_gemm2_overrides_parse_split_and_clamp(tmp_path, monkeypatch):
    """A config's "gemm2" dict overrides GEMM2's keys (never BLOCK_SIZE_M, the shared alignment); block scales clamp
    its BLOCK_SIZE_K like GEMM1's."""
    base = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=16, num_warps=4, num_stages=3)
    entry = dict(base, gemm2=dict(BLOCK_SIZE_N=256, BLOCK_SIZE_K=256, num_warps=8))
    table = configs.parse_table(json.dumps({"64": entry}))
    g1, g2 = configs.gemm_configs(table[64])
    assert g1 == base and g2 == dict(base, BLOCK_SIZE_N=256, BLOCK_SIZE_K=256, num_warps=8)
    assert configs.gemm_configs(base) == (base, base)
    with pytest.raises(ValueError, match="may set"):
        configs.parse_table(json.dumps({"1": dict(base, gemm2=dict(BLOCK_SIZE_M=128))}))
    with pytest.raises(ValueError, match="BLOCK_SIZE_N must be a power of two"):
        configs.parse_table(json.dumps({"1": dict(base, gemm2=dict(BLOCK_SIZE_N=96))}))
    monkeypatch.setattr(configs, "user_config_dir", lambda: tmp_path)
    monkeypatch.delenv("MOEJIT_TRITON_CONFIG_DIR", raising=False)
    _write_table(tmp_path, "FakeGPU", {"64": entry})
    configs.load_table.cache_clear()
    got = configs.get_config(64, 8, 1024, 2048, 2, "fp8_w8a8", "token_channel", (128, 128), device="FakeGPU")
    configs.load_table.cache_clear()
    assert got["BLOCK_SIZE_K"] == 128 and got["gemm2"]["BLOCK_SIZE_K"] == 128 and entry["gemm2"]["BLOCK_SIZE_K"] == 256


def test_tune_shape_finds_gemm2_its_own_tile():
    """Round 3 of the search: with a cost model where GEMM1 wants narrow N tiles and GEMM2 wide, shallow ones, the
    table's entry keeps GEMM1's tile and carries GEMM2's as overrides; the layer would run exactly those."""
    from moejit.triton import tune

    e, topk, k, n = 8, 2, 1024, 512

    def cost(inputs, mode_args, cfg, iters):
        g1, g2 = configs.gemm_configs(cfg)
        return (1000.0 + 10.0 * g1["BLOCK_SIZE_N"] + 5000.0 / g1["BLOCK_SIZE_K"]
                + 50000.0 / g2["BLOCK_SIZE_N"] + g2["BLOCK_SIZE_K"] + g1["num_stages"] + g2["num_stages"])

    table, _ = tune.tune_shape(e, topk, k, n, [512], "token_channel", None, 3, log=lambda s: None, timer=cost,
                               make_inputs=lambda m, prev: m)
    best = table[512]
    g1, g2 = configs.gemm_configs(best)
    assert g1["BLOCK_SIZE_N"] == 64 and g2["BLOCK_SIZE_N"] == 256 and g2["BLOCK_SIZE_K"] == 64
    assert "BLOCK_SIZE_M" not in best["gemm2"] and all(best["gemm2"][key] != g1[key] for key in best["gemm2"])
    assert configs.validate_config(best) == best  # what the CLI writes parses back
    # GEMM2's shared memory is checked without the second (up) weight tile
    wide = tune.gemm2_variant(dict(g1, num_stages=5), "BLOCK_SIZE_N", 256)
    assert tune.smem_bytes(configs.gemm_configs(wide)[1], silu_mul=False) < tune.smem_bytes(
        configs.gemm_configs(wide)[1])
    assert tune.gemm2_variant(wide, "BLOCK_SIZE_N", g1["BLOCK_SIZE_N"]) == dict(g1, num_stages=5)


def test_tune_gluon_round():
    """Round 4 of the search (the Gluon kernel): every candidate is a valid table entry whose GEMM tiles fit the
    kernel (gate + up tiles for GEMM1); 128-row tiles only where the rows per expert fill them; GEMM2 alone is
    tried under the best tl.dot config; with a cost model that favours the Gluon kernel on GEMM2 only, the table
    keeps GEMM1 on tl.dot and carries the Gluon GEMM2 as overrides. Without ``gluon`` (no sm_90 here) no
    candidate asks for it."""
    from moejit.triton import gluon_moe, tune

    best = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=3,
                gemm2=dict(BLOCK_SIZE_N=128))
    for m, e, topk, bms in ((8192, 8, 2, {64, 128}), (64, 256, 8, {64})):
        cands = tune.gluon_candidates(best, m, e, topk)
        assert len(cands) <= tune.GLUON_ROUND and best not in cands
        assert {c["BLOCK_SIZE_M"] for c in cands if c.get("gluon")} == bms
        for c in cands:
            assert configs.validate_config(c) == c
            g1, g2 = configs.gemm_configs(c)
            assert g2.get("gluon") and gluon_moe.tile_fits(g2["BLOCK_SIZE_M"], g2["BLOCK_SIZE_N"], False)
            if g1.get("gluon"):
                assert gluon_moe.tile_fits(g1["BLOCK_SIZE_M"], g1["BLOCK_SIZE_N"], True)
            else:
                assert g1 == configs.gemm_configs(best)[0]  # GEMM2 alone: GEMM1 as the best config
            assert g2.get("gluon_stages", 4) <= gluon_moe.MAX_STAGES[g2["BLOCK_SIZE_M"]]

    e, topk, k, n = 8, 2, 1024, 512

    def cost(inputs, mode_args, cfg, iters):
        g1, g2 = configs.gemm_configs(cfg)
        return 1000.0 + (300.0 if g1.get("gluon") else 0.0) - (200.0 if g2.get("gluon") else 0.0) + g1["num_stages"]

    table, _ = tune.tune_shape(e, topk, k, n, [512], "token_channel", None, 3, log=lambda s: None, timer=cost,
                               make_inputs=lambda m, prev: m, gluon=True)
    g1, g2 = configs.gemm_configs(table[512])
    assert not g1.get("gluon") and g2["gluon"] == 1 and configs.validate_config(table[512]) == table[512]
    table, _ = tune.tune_shape(e, topk, k, n, [512], "token_channel", None, 3, log=lambda s: None, timer=cost,
                               make_inputs=lambda m, prev: m)
    assert not any(g.get("gluon") for g in configs.gemm_configs(table[512]))


def test_gluon_switch_and_eligibility(monkeypatch):
    """MOEJIT_TRITON_GLUON: 1 (default) / 0 / force / force64, anything else a clear error; the Gluon GEMM takes
    only what it implements (sm_90, e4m3, K a multiple of 256, tensor/row × tensor/channel scales) and only
    configs that ask for it; a config asking for it with a tile that does not fit its registers is an error; the
    forced configs keep the table's other keys."""
    from moejit.errors import MoejitInputError
    from moejit.triton import gluon_moe
    from moejit.triton.fused_moe import A_GROUP, A_ROW, W_BLOCK, W_CHANNEL

    monkeypatch.delenv("MOEJIT_TRITON_GLUON", raising=False)
    assert gluon_moe.gluon_mode() == "1"
    for raw, want in (("0", "0"), ("off", "0"), ("FORCE", "force"), ("force64", "force64"), ("on", "1")):
        monkeypatch.setenv("MOEJIT_TRITON_GLUON", raw)
        assert gluon_moe.gluon_mode() == want
    monkeypatch.setenv("MOEJIT_TRITON_GLUON", "sometimes")
    with pytest.raises(MoejitInputError, match="MOEJIT_TRITON_GLUON"):
        gluon_moe.gluon_mode()
    monkeypatch.setenv("MOEJIT_TRITON_GLUON", "1")

    cpu, fp8 = torch.device("cpu"), torch.float8_e4m3fn
    assert not gluon_moe.eligible(cpu, fp8, 4096, A_ROW, W_CHANNEL)  # no Hopper GPU
    monkeypatch.setattr(gluon_moe, "_hopper", lambda device: True)
    assert gluon_moe.eligible(cpu, fp8, 4096, A_ROW, W_CHANNEL)
    assert not gluon_moe.eligible(cpu, torch.int8, 4096, A_ROW, W_CHANNEL)
    assert not gluon_moe.eligible(cpu, fp8, 4096 + 128, A_ROW, W_CHANNEL)  # an odd number of 128-deep K steps
    assert not gluon_moe.eligible(cpu, fp8, 4096, A_GROUP, W_BLOCK)
    a, w = torch.empty(8, 512, dtype=fp8), torch.empty(2, 64, 512, dtype=fp8)
    table = (dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, num_warps=8), {"num_warps": 4})
    for block_m, bn1, bn2 in ((128, 64, 128), (64, 128, 256)):
        cfg1, cfg2 = gluon_moe.forced_configs(*table, block_m)
        assert cfg1["BLOCK_SIZE_M"] == cfg2["BLOCK_SIZE_M"] == block_m and cfg1["num_warps"] == 8
        assert (cfg1["BLOCK_SIZE_N"], cfg2["BLOCK_SIZE_N"]) == (bn1, bn2)
        assert gluon_moe.use_gluon(a, w, A_ROW, W_CHANNEL, cfg1, silu_mul=True)
        assert gluon_moe.use_gluon(a, w, A_ROW, W_CHANNEL, cfg2)
        assert not gluon_moe.use_gluon(a, w, A_ROW, W_CHANNEL, dict(cfg1, gluon=0), silu_mul=True)
    assert gluon_moe.forced_configs(*table) == gluon_moe.forced_configs(*table, 128)
    for bad in (dict(cfg1, BLOCK_SIZE_M=32), dict(cfg1, BLOCK_SIZE_N=64)):
        with pytest.raises(MoejitInputError, match="Gluon"):
            gluon_moe.use_gluon(a, w, A_ROW, W_CHANNEL, bad, silu_mul=True)
    monkeypatch.setenv("MOEJIT_TRITON_GLUON", "0")
    assert not gluon_moe.use_gluon(a, w, A_ROW, W_CHANNEL, cfg1, silu_mul=True)
    assert [gluon_moe.unroll(k) for k in (2048, 512, 14336, 7168, 256, 768)] == [8, 4, 8, 8, 2, 2]
