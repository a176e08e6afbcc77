"""Kernel configs of the fused MoE GEMM: JSON tables per GPU and problem, and a shape heuristic for the rest.

A table maps a batch size M to one config (``BLOCK_SIZE_M/N/K``, ``GROUP_SIZE_M``, ``num_warps``, ``num_stages``) for
both GEMMs of the layer, optionally with a ``"gemm2"`` dict of the keys GEMM2 runs differently (all but BLOCK_SIZE_M:
the two GEMMs share the alignment). GEMM1 accumulates gate and up tiles (fused SiLU) over the hidden size; GEMM2 one
tile over the intermediate size, so their best tiles differ. It is keyed by the device name, the number
of experts E, the intermediate size N (per TP shard: ``w2.shape[2]``), the hidden size K, top-k, the quantized
dtype and the quantization mode, in the file name::

    E=8,N=14336,K=4096,topk=2,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,quant=token_channel.json

Lookup order: ``$MOEJIT_TRITON_CONFIG_DIR``, then ``<moejit cache>/triton_configs`` (where ``moejit tune`` writes),
then the tables shipped in ``moejit/triton/configs/``. The entry with the nearest M (log scale) is used if it is
within 2× of the batch size (:data:`TABLE_REACH`). Without a table or such an entry,
:func:`heuristic_config` picks a config from the expected rows per expert.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

PACKAGE_CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
GEMM2 = "gemm2"  # the key of GEMM2's overrides in a config
# optional: "gluon": 1 runs the GEMM on the warp-specialized Gluon kernel (moejit.triton.gluon_moe; sm_90, BLOCK_SIZE_M
# 64 or 128 and a tile that fits its registers, gluon_moe.tile_fits), with "gluon_stages" shared-memory stages
OPTIONAL_KEYS = ("gluon", "gluon_stages")
GEMM2_KEYS = CONFIG_KEYS[1:] + OPTIONAL_KEYS  # what GEMM2 may run differently: all but BLOCK_SIZE_M (the alignment)


def device_name(device=None) -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name(device).replace(" ", "_").replace("/", "_")


def quant_mode(per_act_token: bool, per_out_ch: bool, block_shape: tuple[int, int] | None) -> str:
    """``tensor_tensor``, ``token_channel``, ``token_tensor``, ``tensor_channel`` or ``block<bn>x<bk>``."""
    if block_shape is not None:
        return f"block{block_shape[0]}x{block_shape[1]}"
    return f"{'token' if per_act_token else 'tensor'}_{'channel' if per_out_ch else 'tensor'}"


def config_file_name(e: int, n: int, k: int, topk: int, device: str, dtype: str, mode: str) -> str:
    return f"E={e},N={n},K={k},topk={topk},device_name={device},dtype={dtype},quant={mode}.json"


def user_config_dir() -> Path:
    from moejit.jit import cache_root

    return cache_root() / "triton_configs"


def search_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("MOEJIT_TRITON_CONFIG_DIR")
    if env:
        dirs.append(Path(env))
    dirs += [user_config_dir(), PACKAGE_CONFIG_DIR]
    return dirs


def _check_blocks(cfg: dict) -> None:
    for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
        if k not in cfg:
            continue
        low = 32 if k == "BLOCK_SIZE_K" else 16  # an 8-bit tl.dot needs K >= 32
        if cfg[k] < low or cfg[k] & (cfg[k] - 1):
            raise ValueError(f"{k} must be a power of two >= {low}, got {cfg[k]}")


def _check_optional(cfg: dict) -> None:
    if cfg.get("gluon", 0) not in (0, 1):
        raise ValueError(f"gluon must be 0 or 1, got {cfg['gluon']}")
    if not 2 <= cfg.get("gluon_stages", 4) <= 8:
        raise ValueError(f"gluon_stages must be in [2, 8], got {cfg['gluon_stages']}")


def validate_config(cfg: dict) -> dict:
    """The config with int values and only known keys; raises ValueError on a missing key, a bad block size or a
    ``"gemm2"`` entry with keys GEMM2 cannot override."""
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"config {cfg} lacks {missing}")
    out = {k: int(cfg[k]) for k in CONFIG_KEYS + OPTIONAL_KEYS if k in cfg}
    _check_optional(out)
    _check_blocks(out)
    if cfg.get(GEMM2):
        extra = sorted(set(cfg[GEMM2]) - set(GEMM2_KEYS))
        if extra:
            raise ValueError(f"config {cfg}: {GEMM2!r} may set {list(GEMM2_KEYS)}, not {extra}")
        out[GEMM2] = {k: int(v) for k, v in cfg[GEMM2].items()}
        _check_optional(out[GEMM2])
        _check_blocks(out[GEMM2])
    return out


def gemm_configs(cfg: dict) -> tuple[dict, dict]:
    """(GEMM1's config, GEMM2's config) of a layer config: GEMM2's is GEMM1's with the ``"gemm2"`` overrides."""
    base = {k: v for k, v in cfg.items() if k != GEMM2}
    return base, {**base, **cfg.get(GEMM2, {})}


def parse_table(text: str) -> dict[int, dict]:
    raw = json.loads(text)
    return {int(m): validate_config(cfg) for m, cfg in raw.items() if not str(m).startswith("_")}


@functools.lru_cache(maxsize=256)
def load_table(file_name: str, dirs: tuple[Path, ...]) -> tuple[dict[int, dict] | None, Path | None]:
    for d in dirs:
        path = d / file_name
        if path.is_file():
            return parse_table(path.read_text()), path
    return None, None


# A table's entry serves batch sizes within this factor of its M; further away the heuristic is the better guess
# (a Mixtral table tuned at M = 4, 64, 2048, 8192 served M = 1024 with the M = 64 entry: 2.6× slower than the
# heuristic on an H200).
TABLE_REACH = 2.0


def nearest(table: dict[int, dict], m: int) -> dict | None:
    """The entry whose M is nearest to ``m`` on a log scale (the smaller M on a tie), or None when it is more than
    :data:`TABLE_REACH` times away."""
    key = min(table, key=lambda t: (abs(math.log(max(t, 1) / max(m, 1))), t))
    return table[key] if max(key, m) <= TABLE_REACH * max(min(key, m), 1) else None


def heuristic_config(m: int, e: int, n: int, k: int, topk: int, block_shape: tuple[int, int] | None = None) -> dict:
    """A config from the expected rows per expert (``M·topk/E``), sized for Hopper-class FP8/INT8 tensor cores.

    Few rows per expert: the layer streams weights, so small M tiles and enough N tiles to fill the GPU; many rows:
    128×128 tiles, grouped ordering for L2 reuse of the weights, 8 warps."""
    rows = m * topk / max(e, 1)
    if rows < 16:  # at 16 rows (Mixtral M=64) moejit tune on an H200 found the next config 1.28x faster
        cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=4)
    elif rows <= 48:
        cfg = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=4)
    elif rows <= 160:
        cfg = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=8, num_warps=4, num_stages=3)
    else:
        cfg = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=16, num_warps=8, num_stages=3)
    if block_shape is not None:
        cfg["BLOCK_SIZE_K"] = min(cfg["BLOCK_SIZE_K"], block_shape[1])
        # block scales keep a scaled partial product live next to the gate and up accumulators: ptxas spills
        # 0.4 KB (64 rows, 4 warps) to 1.2 KB (128×128, 8 warps) per thread; these two shapes compile spill-free
        if cfg["BLOCK_SIZE_M"] == 64:
            cfg["num_warps"] = 8
        elif cfg["BLOCK_SIZE_M"] == 128:
            cfg["BLOCK_SIZE_N"] = 64
    # a K smaller than the tile wastes loads: shrink BLOCK_SIZE_K toward K (at least 32: an 8-bit tl.dot needs K >= 32)
    while cfg["BLOCK_SIZE_K"] > 32 and cfg["BLOCK_SIZE_K"] // 2 >= k:
        cfg["BLOCK_SIZE_K"] //= 2
    return cfg


def get_config(m: int, e: int, n: int, k: int, topk: int, dtype: str, mode: str,
               block_shape: tuple[int, int] | None = None, device: str | None = None) -> dict:
    """The config for batch size ``m``: the nearest entry (within :data:`TABLE_REACH`) of the first table found,
    else the heuristic."""
    device = device or device_name()
    table, _ = load_table(config_file_name(e, n, k, topk, device, dtype, mode), tuple(search_dirs()))
    entry = nearest(table, m) if table else None
    if entry is not None:
        cfg = dict(entry)
        if block_shape is not None:
            cfg["BLOCK_SIZE_K"] = min(cfg["BLOCK_SIZE_K"], block_shape[1])
            if "BLOCK_SIZE_K" in cfg.get(GEMM2, {}):
                cfg[GEMM2] = dict(cfg[GEMM2], BLOCK_SIZE_K=min(cfg[GEMM2]["BLOCK_SIZE_K"], block_shape[1]))
        return cfg
    return heuristic_config(m, e, n, k, topk, block_shape)
