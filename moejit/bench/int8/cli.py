"""``moejit bench-int8``: the INT8 seed's benchmark (``bench_int8_hybrid_moe.py``) as a moejit command.

The seed's options and defaults (the Qwen3.6-35B-A3B layer: ``--num-tokens 8192 --hidden 2048 --intermediate 512
--num-experts 256 --top-k 8``, bfloat16, B=128, S=256, q_max=16, 10 warm-up + 50 timed iterations), plus
``--models``/``--batch-sizes`` to sweep like ``moejit bench``. The pipeline switches default from the runner's
environment variables (``MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT``, default 1; ``MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT``,
default 0; the seed's ``VLLM_INT8_HYBRID_*`` names are accepted); ``--[no-]fused-*`` flags override them.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import click

from moejit.bench.int8.backends import BACKEND_NAMES, ENV_HELP
from moejit.bench.int8.sweep import DEFAULT_TOLERANCE
from moejit.bench.options import MultiOption, MultiValueCommand, positive_ints

DEFAULTS = dict(num_tokens=8192, hidden=2048, intermediate=512, num_experts=256, top_k=8, dtype="bfloat16",
                quant_block_size=128, super_group_size=256, q_max=16, warmup=10, iters=50)


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"{value} is not positive", ctx=ctx, param=param)
    return value


@click.command("bench-int8", cls=MultiValueCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--num-tokens", type=int, default=DEFAULTS["num_tokens"], show_default=True, callback=_positive,
              help="Tokens per call (M) when --batch-sizes is not given.")
@click.option("--hidden", type=int, default=DEFAULTS["hidden"], show_default=True, callback=_positive,
              help="Hidden size K (ignored with --models).")
@click.option("--intermediate", type=int, default=DEFAULTS["intermediate"], show_default=True, callback=_positive,
              help="Per-expert intermediate size N (ignored with --models).")
@click.option("--num-experts", type=int, default=DEFAULTS["num_experts"], show_default=True, callback=_positive,
              help="Number of experts E (ignored with --models).")
@click.option("--top-k", type=int, default=DEFAULTS["top_k"], show_default=True, callback=_positive,
              help="Experts per token (ignored with --models).")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16"]), default=DEFAULTS["dtype"], show_default=True,
              help="Activation dtype.")
@click.option("--quant-block-size", type=int, default=DEFAULTS["quant_block_size"], show_default=True,
              help="Hybrid Q/F block size B along K (the CUTLASS kernel needs 128).")
@click.option("--super-group-size", type=int, default=DEFAULTS["super_group_size"], show_default=True,
              help="K-blocks per (Q, F) super group, as requested (split into overflow-safe pieces).")
@click.option("--q-max", type=int, default=DEFAULTS["q_max"], show_default=True, help="Largest integer Q scale.")
@click.option("--warmup", type=click.IntRange(min=0), default=DEFAULTS["warmup"], show_default=True,
              help="Warm-up graph replays.")
@click.option("--iters", type=click.IntRange(min=1), default=DEFAULTS["iters"], show_default=True,
              help="Timed graph replays (median and p10–p90 over them).")
@click.option("--ops-per-graph", type=click.IntRange(min=1), default=10, show_default=True,
              help="Layer calls captured per CUDA graph in the side-by-side timing (the time is per call; the "
                   "per-stage timing captures one forward).")
@click.option("--fused-permute-quant/--no-fused-permute-quant", default=None,
              help="Hybrid runner: fuse permute and Q/F quant (default: environment, see below; else off).")
@click.option("--fused-silu-quant/--no-fused-silu-quant", default=None,
              help="Hybrid runner: fuse SiLU·mul and Q/F quant (default: environment; else on).")
@click.option("--models", cls=MultiOption, default=(), metavar="NAME|CONFIG.json...",
              help="Registered model names or Hugging Face config.json paths to sweep instead of the "
                   "--num-experts/--top-k/--hidden/--intermediate shape.")
@click.option("--batch-sizes", cls=MultiOption, type=int, default=(), metavar="M...", callback=positive_ints,
              help="Batch sizes to sweep (default: --num-tokens).")
@click.option("--backends", cls=MultiOption, default=BACKEND_NAMES, show_default=True, metavar="NAME...",
              help="Layers to compare.")
@click.option("--no-stages", is_flag=True, help="Skip the hybrid runner's per-stage breakdown.")
@click.option("--no-check", is_flag=True, help="Skip the error vs the float32 layer.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE, show_default=True,
              help="Relative error vs the unquantized float32 layer above which a cell is flagged.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of weights, inputs, routing.")
@click.option("--no-rotate", is_flag=True, help="Do not rotate input copies for shapes whose weights fit in L2.")
@click.option("--refresh-ceilings", is_flag=True, help="Re-measure the copy bandwidth and INT8 matmul rate.")
@click.option("--profile", is_flag=True,
              help="Wrap exactly one eager forward of the hybrid runner (first shape and batch size) in "
                   "cudaProfilerStart/Stop with NVTX ranges per stage (nsys profile -c cudaProfilerApi / ncu "
                   "--profile-from-start off).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the cells (moejit bench schema) and the stage records as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write the cells as CSV, and the stages to <stem>_stages.csv.")
@click.option("--dry-run", is_flag=True, help="Print the plan (shapes, batch sizes, backends, memory) and exit; "
                                              "no GPU needed.")
def bench_int8(num_tokens, hidden, intermediate, num_experts, top_k, dtype, quant_block_size, super_group_size,
               q_max, warmup, iters, ops_per_graph, fused_permute_quant, fused_silu_quant, models: Sequence[str],
               batch_sizes, backends, no_stages, no_check, tolerance, seed, no_rotate, refresh_ceilings, profile,
               json_path, csv_path, dry_run) -> None:
    """Benchmark the INT8 hybrid (Q/F) CUTLASS MoE layer against CUTLASS INT8 per-tensor, Triton INT8
    (per-token × per-channel and 128×128 blocks) and the FP8 layers, with the hybrid runner's per-stage times.

    Environment: MOEJIT_INT8_HYBRID_FUSED_SILU_QUANT (default 1), MOEJIT_INT8_HYBRID_FUSED_PERMUTE_QUANT (default
    0); the seed's VLLM_INT8_HYBRID_* names are accepted. Without a GPU (and without --dry-run) exits 2.
    """
    from moejit.bench.cli import fail, make_console
    from moejit.errors import MoejitError

    try:
        plan = make_plan(num_tokens, hidden, intermediate, num_experts, top_k, quant_block_size, super_group_size,
                         q_max, fused_silu_quant, fused_permute_quant, models, batch_sizes, backends)
    except MoejitError as exc:
        fail(str(exc))
    from moejit.bench.sweep import SweepOptions

    opts = SweepOptions(batch_sizes=plan["batch_sizes"], ops_per_graph=ops_per_graph, warmup=warmup, iters=iters,
                        check=not no_check, tolerance=tolerance, profile=False, act_scales="dynamic", dtype=dtype,
                        seed=seed, rotate=not no_rotate)
    console = make_console()
    if models:
        ctx = click.get_current_context()
        ignored = [f"--{n.replace('_', '-')}" for n in ("hidden", "intermediate", "num_experts", "top_k")
                   if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if ignored:
            console.print(f"[yellow]note:[/] {', '.join(ignored)} ignored with --models", highlight=False)
    for line in plan["problems"]:
        console.print(f"[yellow]note:[/] {line}", highlight=False)
    if dry_run:
        print_plan(console, plan, opts)
        return
    import torch

    if not torch.cuda.is_available():
        fail("moejit bench-int8 needs a CUDA GPU and none is visible (use --dry-run to see the plan)")
    run_int8(console, plan, opts, stage_timing=not no_stages, profile=profile, json_path=json_path,
             csv_path=csv_path, refresh_ceilings=refresh_ceilings)


def make_plan(num_tokens, hidden, intermediate, num_experts, top_k, block_size, super_group_size, q_max,
              fused_silu_quant, fused_permute_quant, models, batch_sizes, backends) -> dict:
    """Resolve the options into ``{params, shapes, configs, batch_sizes, backends, problems}``. Raises
    :class:`moejit.errors.MoejitError` (bad model, backend, format or environment value)."""
    from moejit.bench.int8.backends import cli_shape, get_int8_backends, resolve_params, shape_problems
    from moejit.bench.int8.sweep import QUANT
    from moejit.bench.models import resolve_models
    from moejit.bench.sweep import Config

    params = resolve_params(block_size, super_group_size, q_max, fused_silu_quant, fused_permute_quant)
    shapes = resolve_models(models) if models else [cli_shape(num_experts, top_k, hidden, intermediate)]
    chosen = get_int8_backends(backends, params)
    names = [b.name for b in chosen]
    problems = [line for s in shapes for line in shape_problems(s, params, names)]
    return {"params": params, "shapes": shapes, "configs": [Config(s, QUANT) for s in shapes],
            "batch_sizes": tuple(batch_sizes) if batch_sizes else (num_tokens,), "backends": chosen,
            "problems": problems}


def print_plan(console, plan: dict, opts) -> None:
    """The dry run: every shape × batch size with the chosen backends and the memory the run keeps."""
    from rich.table import Table

    from moejit.bench.int8.backends import variants_needed, weight_bytes_int8
    from moejit.bench.sweep import activation_bytes

    params, backends = plan["params"], plan["backends"]
    variants = variants_needed(backends)
    table = Table(title=f"bench-int8 plan: {len(plan['shapes']) * len(plan['batch_sizes']) * len(backends)} cells",
                  title_justify="left",
                  caption="weights: float (bf16, the reference's) + every layout the backends read; act: ≈ per-call "
                          "buffers of an unfused layer")
    for col, justify in (("model", "left"), ("E/topk/K/N", "right"), ("M", "right"), ("weights GiB", "right"),
                         ("act MiB", "right")):
        table.add_column(col, justify=justify)
    for s in plan["shapes"]:
        wb = weight_bytes_int8(s, variants)
        for m in plan["batch_sizes"]:
            table.add_row(s.name, f"{s.num_experts}/{s.topk}/{s.hidden}/{s.intermediate}", str(m),
                          f"{wb / 2**30:.2f}", f"{activation_bytes(s, m, 2) / 2**20:.1f}")
    console.print(table)
    console.print(f"format: {params.describe()}", highlight=False)
    console.print(f"switch defaults: {ENV_HELP}", highlight=False)
    avail = []
    for b in backends:
        try:
            ok, reason = b.available()
        except Exception as exc:  # noqa: BLE001 - the plan prints without a working GPU
            ok, reason = False, str(exc)
        avail.append(f"{b.name} ({b.label}): {'available' if ok else 'n/a (' + reason + ')'}")
    console.print("backends: " + "; ".join(avail), highlight=False)
    console.print(f"timing: {opts.ops_per_graph} calls per graph, {opts.warmup} warm-up + {opts.iters} timed replays; "
                  f"per-stage: one forward per graph, {opts.iters} replays; dtype {opts.dtype}; error vs the float32 "
                  f"layer: {'on' if opts.check else 'off'}", highlight=False)


def run_int8(console, plan: dict, opts, stage_timing: bool = True, profile: bool = False, json_path=None,
             csv_path=None, refresh_ceilings: bool = False, ceilings=None, device="cuda", timer=None):
    """Measure (or load) the INT8 ceilings, run the sweep with progress, print the tables, write the exports.
    Returns ``(results, stage_results)``. (``ceilings``/``device``/``timer`` are injectable for tests.)"""
    from moejit.bench import roofline
    from moejit.bench import report as base_report
    from moejit.bench.cli import SweepProgress, _sigterm_as_interrupt
    from moejit.bench.int8 import report
    from moejit.bench.int8.sweep import Int8Sweep

    params = plan["params"]
    if ceilings is None:
        try:
            with console.status("measuring the device's copy bandwidth and int8 matmul rate (cached per device)"):
                ceilings = roofline.get_ceilings(("int8",), refresh=refresh_ceilings)
        except Exception as exc:  # noqa: BLE001 - still worth running without roofline columns
            console.print(f"[yellow]could not measure the device ceilings ({type(exc).__name__}: {exc}); the "
                          "roofline columns stay empty[/]", highlight=False)
            ceilings = None
    env = base_report.environment(ceilings, "int8")
    console.print(f"[bold]moejit bench-int8[/] on {env.get('gpu')} · driver {env.get('driver')} · CUDA "
                  f"{env.get('cuda')} · torch {env.get('torch')} · triton {env.get('triton')} · moejit "
                  f"{env.get('moejit_version')} ({env.get('git_rev')})", highlight=False)
    console.print(f"format: {params.describe()} · {opts.dtype}", highlight=False)
    if ceilings is not None:
        console.print(f"ceilings{' (cached)' if ceilings.cached else ''}: copy {ceilings.copy_gbps:,.0f} GB/s, int8 "
                      f"matmul {ceilings.rate('int8'):,.0f} TOP/s (roofline floor = max(bytes / copy bandwidth, "
                      "ops / int8 rate))", highlight=False)
    sweep = None
    with SweepProgress(console, 0) as progress:
        sweep = Int8Sweep(plan["configs"], plan["backends"], opts, params, device=device, ceilings=ceilings,
                          timer=timer, progress=progress, stage_timing=stage_timing, profile_once=profile)
        progress.total = sweep.total_cells
        progress.progress.update(progress.task, total=sweep.total_cells)
        for name, (ok, reason) in sweep.availability.items():
            if not ok:
                console.print(f"[yellow]{name}: n/a[/] ({reason})", highlight=False)
        with _sigterm_as_interrupt() if device != "cpu" else contextlib.nullcontext():
            results = sweep.run()
    if note := sweep.end_note():
        console.print(note, highlight=False)
    report.print_all(console, results, sweep.stage_results)
    if profile and not sweep.profiled:
        console.print("[yellow]--profile: no forward was profiled (the hybrid backend did not run)[/]",
                      highlight=False)
    if json_path:
        report.write_json(json_path, results, sweep.stage_results, env, params.as_dict(),
                          extra={"ceilings": ceilings.as_dict() if ceilings is not None else None,
                                 "interrupted": sweep.interrupted, "stopped": sweep.stopped,
                                 "planned_cells": sweep.total_cells})
        console.print(f"wrote {json_path}", highlight=False)
    if csv_path:
        stages_path = report.write_csv(csv_path, results, sweep.stage_results, env)
        console.print(f"wrote {csv_path}" + (f" and {stages_path}" if stages_path else ""), highlight=False)
    return results, sweep.stage_results
