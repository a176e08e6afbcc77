"""``moejit tune``: search fused-MoE kernel configs on the current GPU and write the tables the layer reads.

For every model × TP size × quantization mode, and every batch size M, the whole layer
(:func:`moejit.moe.triton_fp8._fused_moe_quantized` with a fixed config) is timed with CUDA graphs
(:func:`moejit.bench.timing.time_cuda_graph`) over a pruned space, in two rounds:

1. tiles: BLOCK_SIZE_M from the expected rows per expert (``M·topk/E``; at most three sizes), BLOCK_SIZE_N
   ∈ {64, 128, 256}, with warps/stages chosen for the tile;
2. around the best tile, one parameter at a time: num_warps ∈ {4, 8}, num_stages ∈ {3, 4, 5}, GROUP_SIZE_M
   ∈ {1, 16}, BLOCK_SIZE_K ∈ {64, 128, 256};
3. GEMM2's own config (a ``"gemm2"`` override, :mod:`moejit.triton.configs`): BLOCK_SIZE_N, BLOCK_SIZE_K, warps,
   stages, GROUP_SIZE_M in turn, each from the best so far (GEMM1 accumulates gate and up tiles over the hidden
   size, GEMM2 one tile over the intermediate size, so one tile rarely suits both);
4. on sm_90 with FP8 per-tensor/per-token × per-tensor/per-channel scales: the warp-specialized Gluon kernel
   (:mod:`moejit.triton.gluon_moe`, ``"gluon": 1``) on both GEMMs with 64- and 128-row tiles, and on GEMM2 alone
   under the best config so far (:func:`gluon_candidates`).

The shape heuristic's own config (:func:`moejit.triton.configs.heuristic_config`, what the layer runs without a
table) is always timed too, so every table records how far the fallback is from the best (``_heuristic``: M →
heuristic µs / best µs), and the log prints it.

``--quant hybrid --dtype int8`` tunes :func:`moejit.ops.triton_moe_int8_hybrid` (INT8 hybrid Q/F activations,
B = 128, S = 256, q_max = 16; BLOCK_SIZE_K at most B); its tables are keyed ``dtype=int8_w8a8,quant=hybrid``.

That is ~25 configs per M, ~31 with round 4 (each a Triton compile of two GEMM variants plus a short timing), so a
model's default batch sizes tune in minutes. Configs that fail to compile or run (shared memory, registers) are
skipped. The table goes to ``<moejit cache>/triton_configs`` (searched by the layer before the shipped tables)
and, with ``--output DIR``, also to DIR (e.g. ``moejit/triton/configs`` to ship it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

import click

from moejit.triton import configs as cfgs

DEFAULT_BATCH_SIZES = (1, 4, 16, 64, 256, 1024, 2048, 4096, 8192)
QUANT_MODES = ("token_channel", "tensor_tensor", "tensor_channel", "token_tensor", "block128x128", "hybrid")
HYBRID = "hybrid"  # INT8 hybrid Q/F activations (B = 128, S = 256, q_max = 16) × per-channel weights: int8 only
SMEM_LIMIT = 220 * 1024  # bytes of shared memory per CTA on Hopper (227 KB), with room for the epilogue

try:  # the bench CLI's "--models a b c" parsing (several values after one flag); plain repeatable options otherwise
    from moejit.bench.options import MultiOption, MultiValueCommand
except ImportError:  # pragma: no cover - only while the bench package lacks it
    MultiOption, MultiValueCommand = None, click.Command


def _multi(*names, **kw):
    if MultiOption is not None:
        return click.option(*names, cls=MultiOption, **kw)
    return click.option(*names, multiple=True, **kw)


def smem_bytes(cfg: dict, silu_mul: bool = True, elem_bytes: int = 1) -> int:
    """Shared memory of the software pipeline: stages × (A tile + W tile(s)) of 1-byte elements."""
    w_tiles = 2 if silu_mul else 1
    return cfg["num_stages"] * elem_bytes * cfg["BLOCK_SIZE_K"] * (cfg["BLOCK_SIZE_M"] + w_tiles *
                                                                    cfg["BLOCK_SIZE_N"])


def fit_stages(cfg: dict, silu_mul: bool = True) -> dict:
    """Lower ``cfg``'s num_stages (not below 2) until its pipeline fits :data:`SMEM_LIMIT`; returns ``cfg``."""
    while smem_bytes(cfg, silu_mul) > SMEM_LIMIT and cfg["num_stages"] > 2:
        cfg["num_stages"] -= 1
    return cfg


def tile_candidates(m: int, e: int, topk: int, block_shape=None) -> list[dict]:
    """Round 1: BLOCK_SIZE_M around the expected rows per expert × BLOCK_SIZE_N ∈ {64, 128, 256}."""
    rows = m * topk / max(e, 1)
    bms = [bm for bm in (16, 32, 64, 128) if bm <= max(16, 2 * rows) and (bm >= 64 or rows < 512)]
    bms = bms[-3:]
    bk = 128 if block_shape is None else min(128, block_shape[1])
    out = []
    for bm in bms:
        for bn in (64, 128, 256):
            warps = 4 if bm * bn <= 64 * 128 else 8
            c = dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=1 if bm <= 32 else 16,
                     num_warps=warps, num_stages=4 if bm <= 32 else 3)
            out.append(fit_stages(c))
    return out


def refine_candidates(best: dict, block_shape=None) -> list[dict]:
    """Round 2: one parameter at a time around the best tile."""
    out = []
    for key, values in (("num_warps", (4, 8)), ("num_stages", (3, 4, 5)), ("GROUP_SIZE_M", (1, 16)),
                        ("BLOCK_SIZE_K", (64, 128, 256))):
        for v in values:
            c = dict(best, **{key: v})
            if key == "BLOCK_SIZE_K" and block_shape is not None and block_shape[1] % v:
                continue
            if c != best and smem_bytes(c) <= SMEM_LIMIT and c not in out:
                out.append(c)
    return out


# at most this many configs per M in round 3 (each key's values but the current one)
GEMM2_ROUND = 8
GEMM2_SEARCH = (("BLOCK_SIZE_N", (64, 128, 256)), ("BLOCK_SIZE_K", (64, 128, 256)), ("num_warps", (4, 8)),
                ("num_stages", (3, 4, 5)), ("GROUP_SIZE_M", (1, 16)))


def gemm2_variant(cfg: dict, key: str, value: int) -> dict:
    """``cfg`` with GEMM2 running ``key = value`` (a ``"gemm2"`` override; none where it equals GEMM1's)."""
    base, _ = cfgs.gemm_configs(cfg)
    over = {k: v for k, v in {**cfg.get(cfgs.GEMM2, {}), key: value}.items() if base[k] != v}
    return {**base, cfgs.GEMM2: over} if over else base


def gemm2_candidates(best: dict, key: str, values, block_shape=None) -> list[dict]:
    """Round 3, one key: GEMM2 at each value of ``key`` (GEMM1 and GEMM2's other keys as in ``best``)."""
    out = []
    for v in values:
        if key == "BLOCK_SIZE_K" and block_shape is not None and block_shape[1] % v:
            continue
        c = gemm2_variant(best, key, v)
        if c != best and smem_bytes(cfgs.gemm_configs(c)[1], silu_mul=False) <= SMEM_LIMIT and c not in out:
            out.append(c)
    return out


GLUON_ROUND = 6  # at most this many configs per M in round 4


def gluon_candidates(best: dict, m: int, e: int, topk: int) -> list[dict]:
    """Round 4: the Gluon kernel on both GEMMs (BLOCK_SIZE_M 64, and 128 where the rows per expert fill it; the
    widest tile that fits its registers, :func:`moejit.triton.gluon_moe.tile_fits`; 4 stages and the most that
    fit), and on GEMM2 alone under ``best`` where ``best``'s BLOCK_SIZE_M suits it."""
    from moejit.triton.gluon_moe import BLOCK_MS, MAX_STAGES, TILE_VALUES

    rows = m * topk / max(e, 1)
    plain = {k: v for k, v in best.items() if k != cfgs.GEMM2}
    out = []
    for bm in BLOCK_MS:
        if bm > max(64, 2 * rows):
            continue
        for stages in sorted({4, MAX_STAGES[bm]}):
            out.append(dict(plain, BLOCK_SIZE_M=bm, BLOCK_SIZE_N=TILE_VALUES // bm // 2, GROUP_SIZE_M=8, gluon=1,
                            gluon_stages=stages, **{cfgs.GEMM2: {"BLOCK_SIZE_N": TILE_VALUES // bm}}))
    bm = best["BLOCK_SIZE_M"]
    if bm in BLOCK_MS and not best.get("gluon"):
        for stages in sorted({4, MAX_STAGES[bm]}):
            over = {**best.get(cfgs.GEMM2, {}), "BLOCK_SIZE_N": TILE_VALUES // bm, "gluon": 1,
                    "gluon_stages": stages}
            out.append({**plain, cfgs.GEMM2: over})
    return [c for c in out if c != best]


def gluon_applies(q_dtype, mode_args: "ModeArgs", k: int, n: int) -> bool:
    """Whether round 4 runs: this GPU and Triton run the Gluon kernel, and it takes both GEMMs of this shape
    (:func:`moejit.triton.gluon_moe.layer_eligible`)."""
    import torch

    from moejit.moe.triton_fp8 import _gluon
    from moejit.triton.fused_moe import A_ROW, A_TENSOR, W_CHANNEL, W_TENSOR

    gluon_moe = _gluon()
    if gluon_moe is None or mode_args.block is not None or mode_args.hybrid or not torch.cuda.is_available():
        return False
    a_mode = A_ROW if mode_args.per_token else A_TENSOR
    w_mode = W_CHANNEL if mode_args.per_ch else W_TENSOR
    dev = torch.device("cuda", torch.cuda.current_device())
    return gluon_moe.layer_eligible(dev, q_dtype, k, n, a_mode, w_mode)


class ModeArgs(NamedTuple):
    """A quantization mode as the layer's arguments. ``block`` is the block shape the tiles must respect: the
    weights' for block scales; for ``hybrid`` the Q block along K (weights are per channel there)."""

    per_token: bool
    per_ch: bool
    block: tuple[int, int] | None
    hybrid: bool = False


def _mode_args(mode: str) -> ModeArgs:
    if mode == HYBRID:
        return ModeArgs(False, True, (128, 128), True)
    if mode.startswith("block"):
        bn, bk = (int(x) for x in mode[len("block"):].split("x"))
        return ModeArgs(False, False, (bn, bk))
    act, w = mode.split("_")
    return ModeArgs(act == "token", w == "channel", None)


def _make_inputs(e, topk, k, n, m, per_out_ch, block_shape, q_dtype, gen):
    import torch

    def weights(n_out, k_in):
        w = torch.empty(e, n_out, k_in, dtype=q_dtype, device="cuda")
        for i in range(e):
            x = torch.randn(n_out, k_in, device="cuda", generator=gen, dtype=torch.bfloat16) * 32
            w[i] = x.clamp(-127, 127).round().to(q_dtype) if q_dtype == torch.int8 else x.to(q_dtype)
        if block_shape is not None:
            shape = (e, -(-n_out // block_shape[0]), -(-k_in // block_shape[1]))
        else:
            shape = (e, n_out) if per_out_ch else (e,)
        return w, torch.full(shape, 1 / (32 * k_in ** 0.5), device="cuda")

    w1, s1 = weights(2 * n, k)
    w2, s2 = weights(k, n)
    a = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    tw, ids = torch.topk(torch.softmax(torch.randn(m, e, device="cuda", generator=gen), -1), topk, dim=-1)
    return a, w1, w2, tw, ids.to(torch.int32), s1, s2


def time_config(inputs, mode_args, cfg, iters: int) -> float | None:
    """µs per layer call with ``cfg`` (None if it fails to compile or run)."""
    import torch

    from moejit.bench.timing import time_cuda_graph
    from moejit.moe.triton_fp8 import _fused_moe_quantized

    a, w1, w2, tw, ids, s1, s2 = inputs
    per_token, per_ch, block, hybrid = mode_args
    if hybrid:
        from moejit.int8.format import HybridFormat
        from moejit.moe.triton_int8 import _fused_moe_hybrid

        fn = lambda: _fused_moe_hybrid(a, w1, w2, s1, s2, tw, ids, HybridFormat(), cfg)  # noqa: E731
    else:
        fn = lambda: _fused_moe_quantized(a, w1, w2, tw, ids, s1, s2, None, None, per_token, per_ch,  # noqa
                                          block, a.dtype, cfg)
    try:
        return time_cuda_graph(fn, ops_per_graph=10, warmup=2, iters=iters).median_us
    except Exception as exc:  # noqa: BLE001 - out of shared memory / registers: skip the config
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        try:
            torch.cuda.synchronize()
        except Exception as lost:  # noqa: BLE001 - a kernel fault lost the CUDA context: nothing more can run
            raise click.ClickException(f"CUDA context lost after {cfg} ({msg}): {lost}; the tables of the batch "
                                       f"sizes tuned so far are written") from lost
        click.echo(f"  skipped {cfg}: {msg}", err=True)
        return None


def tune_shape(e, topk, k, n, batch_sizes, mode, q_dtype, iters, progress=None, task=None, log=print,
               timer=None, make_inputs=None, on_batch=None, gluon=None) -> tuple[dict, dict]:
    """Best config per batch size for one layer shape. Returns ``({M: config}, {M: heuristic µs / best µs})``
    (the ratio is None where the heuristic's config did not run). ``timer(inputs, mode_args, cfg, iters)`` and
    ``make_inputs(m, previous)`` default to the GPU ones (:func:`time_config`, random FP8/INT8 layer inputs).
    ``on_batch(table, ratios)`` is called after each batch size (the CLI writes the partial table there, so a
    killed or failed run keeps what it tuned). ``gluon``: run round 4 (default: :func:`gluon_applies`)."""
    mode_args = _mode_args(mode)
    if gluon is None:
        gluon = gluon_applies(q_dtype, mode_args, k, n)
    timer = timer or time_config
    if make_inputs is None:
        make_inputs = _gpu_inputs(e, topk, k, n, mode_args, q_dtype)
    table, ratios = {}, {}
    inputs = None
    for m in batch_sizes:
        inputs = make_inputs(m, inputs)
        timed: list[tuple[float | None, dict]] = []

        def run(cands):
            for cfg in cands:
                if any(c == cfg for _, c in timed):
                    continue
                timed.append((timer(inputs, mode_args, cfg, iters), cfg))
                if progress is not None:
                    progress.advance(task)

        heuristic = cfgs.heuristic_config(m, e, n, k, topk, mode_args[2])
        run(tile_candidates(m, e, topk, mode_args[2]) + [heuristic])
        ran = [(us, c) for us, c in timed if us is not None]
        if ran:
            run(refine_candidates(min(ran, key=lambda r: r[0])[1], mode_args[2]))
            # round 3: GEMM2's own tile, one key at a time from the best so far (coordinate descent)
            for key, values in GEMM2_SEARCH:
                best_so_far = min(((u, c) for u, c in timed if u is not None), key=lambda r: r[0])[1]
                run(gemm2_candidates(best_so_far, key, values, mode_args[2]))
            if gluon:  # round 4: the warp-specialized Gluon kernel
                best_so_far = min(((u, c) for u, c in timed if u is not None), key=lambda r: r[0])[1]
                run(gluon_candidates(best_so_far, m, e, topk))
        ran = [(us, c) for us, c in timed if us is not None]
        if not ran:
            raise click.ClickException(f"no config ran for M={m}, E={e}, N={n}, K={k}")
        us, best = min(ran, key=lambda r: r[0])
        h_us = next((u for u, c in timed if c == heuristic), None)
        ratios[m] = None if h_us is None else round(h_us / us, 3)
        log(f"M={m}: best {us:.1f} us {best}; heuristic "
            + (f"{h_us:.1f} us ({h_us / us:.2f}x the best)" if h_us is not None else "did not run"))
        table[m] = best
        if on_batch is not None:
            on_batch(table, ratios)
    return table, ratios


def _gpu_inputs(e, topk, k, n, mode_args, q_dtype):
    """``make_inputs(m, previous)`` for :func:`tune_shape`: weights made once, new activations and routing per M."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)

    def make(m, previous):
        if previous is None:
            weight_blocks = None if mode_args.hybrid else mode_args.block
            return _make_inputs(e, topk, k, n, m, mode_args.per_ch, weight_blocks, q_dtype, gen)
        a = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
        tw, ids = torch.topk(torch.softmax(torch.randn(m, e, device="cuda", generator=gen), -1), topk, dim=-1)
        return (a, previous[1], previous[2], tw, ids.to(torch.int32), previous[5], previous[6])

    return make


def write_table(table: dict, path: Path, meta: dict, heuristic_ratios: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"_meta": meta, **{str(m): c for m, c in sorted(table.items())}}
    if heuristic_ratios:
        body["_heuristic"] = {str(m): r for m, r in sorted(heuristic_ratios.items())}
    path.write_text(json.dumps(body, indent=1) + "\n")


@click.command(cls=MultiValueCommand)
@_multi("--models", default=("qwen3.6-35b-a3b",), show_default=True,
        help="Model names from the registry (moejit.bench.models) or config.json paths; several after one flag.")
@_multi("--tp-sizes", type=int, default=(1,), show_default=True, help="Tensor-parallel sizes (divide N).")
@_multi("--batch-sizes", type=int, default=DEFAULT_BATCH_SIZES, show_default=True, help="Batch sizes M to tune.")
@click.option("--shape", "shapes", multiple=True, metavar="E,TOPK,K,N",
              help="A layer shape instead of (or besides) --models: experts, top-k, hidden K, intermediate N.")
@_multi("--quant", "quant_modes", type=click.Choice(QUANT_MODES), default=("token_channel",), show_default=True,
        help="Quantization modes to tune.")
@click.option("--dtype", "qdtype", type=click.Choice(["fp8", "int8"]), default="fp8", show_default=True)
@click.option("--iters", type=int, default=10, show_default=True, help="Timed graph replays per config.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the tables into this folder (e.g. moejit/triton/configs to ship them).")
def tune(models, tp_sizes, batch_sizes, shapes, quant_modes, qdtype, iters, output):
    """Tune the Triton fused-MoE kernel configs on this GPU and save them where the layer finds them."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    if HYBRID in quant_modes and qdtype != "int8":
        raise click.BadParameter("the hybrid Q/F mode is INT8 only: add --dtype int8", param_hint="--quant")
    if not torch.cuda.is_available():
        raise click.ClickException("moejit tune needs a CUDA GPU")
    q_dtype = torch.float8_e4m3fn if qdtype == "fp8" else torch.int8
    dtype_name = {"fp8": "fp8_w8a8", "int8": "int8_w8a8"}[qdtype]
    todo = []  # (label, E, topk, K, N)
    for spec in shapes:
        try:
            e, topk, k, n = (int(x) for x in spec.split(","))
        except ValueError:
            raise click.BadParameter(f"{spec!r} is not E,TOPK,K,N", param_hint="--shape") from None
        todo.append((f"shape {spec}", e, topk, k, n))
    if models and not (shapes and models == ("qwen3.6-35b-a3b",)):
        from moejit.bench.models import resolve_models

        try:
            resolved = resolve_models(list(models))
        except Exception as exc:  # noqa: BLE001 - ModelError with a clear message
            raise click.ClickException(str(exc)) from exc
        for shape in resolved:
            for tp in tp_sizes:
                try:
                    s = shape.shard(tp)
                except Exception as exc:  # noqa: BLE001
                    raise click.ClickException(str(exc)) from exc
                todo.append((f"{shape.name} TP={tp}", s.num_experts, s.topk, s.hidden, s.intermediate))
    device = cfgs.device_name()
    console.print(f"tuning on [bold]{torch.cuda.get_device_name()}[/] ({len(todo)} shapes × {len(quant_modes)} "
                  f"modes × {len(batch_sizes)} batch sizes)")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        for label, e, topk, k, n in todo:
            for mode in quant_modes:
                mode_args = _mode_args(mode)
                total = sum(len(tile_candidates(m, e, topk, mode_args[2])) + 10 + GEMM2_ROUND + GLUON_ROUND
                            for m in batch_sizes)
                task = progress.add_task(f"{label} {mode}", total=total)
                name = cfgs.config_file_name(e, n, k, topk, device, dtype_name, mode)
                meta = dict(device=torch.cuda.get_device_name(), E=e, N=n, K=k, topk=topk, dtype=dtype_name,
                            quant=mode, tool="moejit tune")
                paths = [cfgs.user_config_dir() / name] + ([output / name] if output else [])

                def write(table, ratios, paths=paths, meta=meta):
                    for path in paths:
                        write_table(table, path, meta, ratios)

                tune_shape(e, topk, k, n, batch_sizes, mode, q_dtype, iters, progress, task,
                           log=lambda line: progress.console.print(line, soft_wrap=True), on_batch=write)
                progress.update(task, completed=total)
                for path in paths:
                    progress.console.print(f"wrote {path}", soft_wrap=True)  # unwrapped: scripts parse the log
    cfgs.load_table.cache_clear()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(tune())
