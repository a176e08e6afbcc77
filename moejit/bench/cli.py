"""``moejit bench``: the CUTLASS-vs-Triton FP8 MoE sweep over models, TP sizes, batch sizes and quantization options.

Options and defaults follow the seed (vLLM's benchmark_cutlass_moe_fp8.py): ``--models mixtral-8x7b --tp-sizes 1
--batch-sizes 4 … 2048 --per-act-token-opts false true --per-out-ch-opts false true``, and ``--ops-per-graph 10``
calls captured per CUDA graph. Options that take several values take them after one flag, like the seed's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Sequence

import click
from rich.console import Console

from moejit.bench.backends import BACKEND_NAMES
from moejit.bench.models import DEFAULT_MODELS
from moejit.bench.options import BOOL, MultiOption, MultiValueCommand, positive_ints
from moejit.bench.sweep import DEFAULT_BATCH_SIZES, DEFAULT_OPTS, DEFAULT_TOLERANCE, DEFAULT_TP_SIZES


def make_console(stderr: bool = False) -> Console:
    """A console that keeps tables readable when piped to a log: 200 columns unless COLUMNS says otherwise."""
    console = Console(stderr=stderr)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, width=200)
    return console


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit ``code``."""
    Console(stderr=True, width=max(200, len(message) + 10)).print(f"[bold red]error:[/] {message}",
                                                                  highlight=False, soft_wrap=True)
    sys.exit(code)


class SweepProgress:
    """The sweep's progress callback: a rich progress bar over all cells on a terminal (what is compiling, what
    is being timed), and one line per finished cell when the output is a log."""

    def __init__(self, console: Console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
            TimeElapsedColumn

        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False,
                                 disable=not self.live)
        self.task = self.progress.add_task("starting", total=total)
        self.done = 0
        self.total = total

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, phase: str, what: str, advance: int) -> None:
        if phase == "done":
            self.done += advance
            self.progress.update(self.task, advance=advance)
            if self.live:
                self.progress.console.print(f"[dim]{what}[/]", highlight=False)
            else:
                self.console.print(f"[{self.done}/{self.total}] {what}", highlight=False, markup=False)
        else:
            self.progress.update(self.task, description=what)
            if not self.live and phase in ("weights",):
                self.console.print(f"… {what}", highlight=False, markup=False)


@click.command(cls=MultiValueCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--models", cls=MultiOption, default=DEFAULT_MODELS, show_default=True, metavar="NAME|CONFIG.json...",
              help="Registered model names (case-insensitive) or paths to local Hugging Face config.json files.")
@click.option("--tp-sizes", cls=MultiOption, type=int, default=DEFAULT_TP_SIZES, show_default=True, metavar="N...",
              callback=positive_ints, help="Tensor-parallel sizes (each divides the intermediate size by TP).")
@click.option("--batch-sizes", cls=MultiOption, type=int, default=DEFAULT_BATCH_SIZES, show_default=True,
              metavar="M...", callback=positive_ints, help="Batch sizes (tokens per call).")
@click.option("--limit-k", cls=MultiOption, type=int, default=(), metavar="K...", callback=positive_ints,
              help="Only shapes whose hidden size K is listed.")
@click.option("--limit-n", cls=MultiOption, type=int, default=(), metavar="N...", callback=positive_ints,
              help="Only shapes whose per-GPU intermediate size N (after TP) is listed.")
@click.option("--per-act-token-opts", cls=MultiOption, type=BOOL, default=DEFAULT_OPTS, show_default=True,
              metavar="BOOL...", help="Per-token activation scales (true) and/or per-tensor (false).")
@click.option("--per-out-ch-opts", cls=MultiOption, type=BOOL, default=DEFAULT_OPTS, show_default=True,
              metavar="BOOL...", help="Per-output-channel weight scales (true) and/or per-expert (false).")
@click.option("--backends", cls=MultiOption, default=BACKEND_NAMES, show_default=True, metavar="NAME...",
              help="Backends to run: cutlass (SM90 grouped GEMM), triton (fused MoE).")
@click.option("--ops-per-graph", type=click.IntRange(min=1), default=10, show_default=True,
              help="Layer calls captured per CUDA graph (the time is per call).")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Graph replays before timing.")
@click.option("--iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="Timed graph replays (median and p10–p90 over them).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write one record per cell (with the environment) as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="The same records as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Latency vs batch size per backend, one panel per configuration (PNG; needs matplotlib).")
@click.option("--no-check", is_flag=True, help="Skip the comparison with the float32 reference.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE, show_default=True,
              help="Relative error vs the reference (which simulates the exact quantization) above which a "
                   "cell is flagged.")
@click.option("--act-scales", type=click.Choice(["static", "dynamic"]), default="static", show_default=True,
              help="Per-tensor activation scales: static (calibrated, given to the layer, as the seed does) or "
                   "dynamic (computed on device).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16"]), default="float16", show_default=True,
              help="Activation dtype (the seed uses float16).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of weights, inputs, routing.")
@click.option("--no-rotate", is_flag=True,
              help="Do not rotate input copies for configurations whose weights would fit in L2.")
@click.option("--refresh-ceilings", is_flag=True,
              help="Re-measure the copy bandwidth and FP8 matmul rate instead of using the cached values.")
@click.option("--profile", is_flag=True,
              help="Wrap one timed replay per cell in cudaProfilerStart/Stop with NVTX ranges "
                   "(nsys profile -c cudaProfilerApi --capture-range-end=repeat ...).")
@click.option("--dry-run", is_flag=True, help="Print the plan (every cell, the memory it needs) and exit; no GPU "
                                              "needed.")
def bench(models: Sequence[str], tp_sizes, batch_sizes, limit_k, limit_n, per_act_token_opts, per_out_ch_opts,
          backends, ops_per_graph, warmup, iters, json_path, csv_path, plot_path, no_check, tolerance, act_scales,
          dtype, seed, no_rotate, refresh_ceilings, profile, dry_run) -> None:
    """Benchmark CUTLASS against Triton FP8 MoE layers over models, TP sizes, batch sizes and quantization options.

    Each cell captures --ops-per-graph layer calls in a CUDA graph, replays it --iters times and reports µs per
    call (median, p10–p90), % of the roofline floor, and the error vs the float32 reference.
    """
    from moejit.bench.backends import get_backends
    from moejit.bench.models import resolve_models
    from moejit.bench.sweep import SweepOptions, make_configs
    from moejit.errors import MoejitError

    try:
        shapes = resolve_models(models)
        configs = make_configs(shapes, tp_sizes, dict.fromkeys(per_act_token_opts),
                               dict.fromkeys(per_out_ch_opts), limit_k, limit_n)
        chosen = get_backends(backends)
    except MoejitError as exc:
        fail(str(exc))
    if not configs:
        fail("no configuration left after --limit-k/--limit-n")
    opts = SweepOptions(batch_sizes=tuple(batch_sizes), ops_per_graph=ops_per_graph, warmup=warmup, iters=iters,
                        check=not no_check, tolerance=tolerance, profile=profile, act_scales=act_scales,
                        dtype=dtype, seed=seed, rotate=not no_rotate)
    console = make_console()
    if dry_run:
        _dry_run(console, configs, chosen, opts)
        return
    import torch

    if not torch.cuda.is_available():
        fail("moejit bench needs a CUDA GPU and none is visible (use --dry-run to see the plan)")
    run_bench(console, configs, chosen, opts, json_path=json_path, csv_path=csv_path, plot_path=plot_path,
              refresh_ceilings=refresh_ceilings)


def _dry_run(console: Console, configs, backends, opts) -> None:
    from moejit.bench.report import render_plan
    from moejit.bench.sweep import ASSUMED_L2_BYTES, plan_rows

    l2, gpu_bytes, where = ASSUMED_L2_BYTES, None, "no GPU visible: L2 assumed 50 MiB"
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            l2, gpu_bytes = int(getattr(props, "L2_cache_size", l2)), props.total_memory
            where = f"{props.name}: {gpu_bytes / 2**30:.0f} GiB, L2 {l2 / 2**20:.0f} MiB"
    except Exception:  # noqa: BLE001 - the plan must print without a working GPU
        pass
    rows = plan_rows(configs, opts.batch_sizes, [b.name for b in backends], opts.ops_per_graph, l2, opts.rotate,
                     act_bytes=2)
    console.print(render_plan(rows, configs, gpu_bytes))
    avail = []
    for b in backends:
        try:
            ok, reason = b.available()
        except Exception as exc:  # noqa: BLE001
            ok, reason = False, str(exc)
        avail.append(f"{b.name}: {'available' if ok else 'n/a (' + reason + ')'}")
    peak = max((r.total_bytes for r in rows), default=0)
    console.print(f"{len(rows) * len(backends)} cells; peak ≈ {peak / 2**30:.2f} GiB per cell ({where}); "
                  f"timing: {opts.ops_per_graph} calls per graph, {opts.warmup} warm-up + {opts.iters} timed "
                  f"replays; check: {'on' if opts.check else 'off'}", highlight=False)
    console.print("backends: " + "; ".join(avail), highlight=False)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM (e.g. from `timeout`) into KeyboardInterrupt while the sweep runs, so the cells measured so
    far are still printed and exported."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_bench(console: Console, configs, backends, opts, json_path=None, csv_path=None, plot_path=None,
              refresh_ceilings: bool = False, ceilings=None, device="cuda", timer=None, rate_kind: str = "fp8"):
    """Measure (or load) the ceilings, run the sweep with progress, print the tables and summary, write the
    exports. Returns the results. (``ceilings``/``device``/``timer`` are injectable for tests.)"""
    from moejit.bench import report, roofline
    from moejit.bench.sweep import Sweep

    if ceilings is None:
        try:
            with console.status(f"measuring the device's copy bandwidth and {rate_kind} matmul rate (cached per "
                                "device)"):
                ceilings = roofline.get_ceilings((rate_kind,), refresh=refresh_ceilings)
        except Exception as exc:  # noqa: BLE001 - the sweep is still worth running without roofline columns
            console.print(f"[yellow]could not measure the device ceilings ({type(exc).__name__}: {exc}); the "
                          "roofline columns stay empty[/]", highlight=False)
            ceilings = None
    env = report.environment(ceilings, rate_kind)
    console.print(f"[bold]moejit bench[/] on {env.get('gpu')} · driver {env.get('driver')} · "
                  f"CUDA {env.get('cuda')} · torch {env.get('torch')} · triton {env.get('triton')} · moejit {env.get('moejit_version')} "
                  f"({env.get('git_rev')})", highlight=False)
    if ceilings is not None:
        console.print(f"ceilings{' (cached)' if ceilings.cached else ''}: copy {ceilings.copy_gbps:,.0f} GB/s, "
                      f"{rate_kind} matmul {ceilings.rate(rate_kind):,.0f} TFLOP/s (roofline floor = "
                      "max(bytes / copy bandwidth, FLOPs / matmul rate))", highlight=False)
    sweep = None
    with SweepProgress(console, 0) as progress:
        sweep = Sweep(configs, backends, opts, device=device, ceilings=ceilings, timer=timer, progress=progress,
                      rate_kind=rate_kind)
        progress.total = sweep.total_cells
        progress.progress.update(progress.task, total=sweep.total_cells)
        for name, (ok, reason) in sweep.availability.items():
            if not ok:
                console.print(f"[yellow]{name}: n/a[/] ({reason})", highlight=False)
        with _sigterm_as_interrupt():
            results = sweep.run()
    if note := sweep.end_note():
        console.print(note, highlight=False)
    report.print_results(console, results)
    if json_path:
        report.write_json(json_path, results, env,
                          extra={"ceilings": ceilings.as_dict() if ceilings is not None else None,
                                 "interrupted": sweep.interrupted, "stopped": sweep.stopped,
                                 "planned_cells": sweep.total_cells})
        console.print(f"wrote {json_path}", highlight=False)
    if csv_path:
        report.write_csv(csv_path, results, env)
        console.print(f"wrote {csv_path}", highlight=False)
    if plot_path:
        try:
            report.write_plot(plot_path, results, env)
            console.print(f"wrote {plot_path}", highlight=False)
        except RuntimeError as exc:
            console.print(f"[red]plot not written:[/] {exc}", highlight=False)
    return results
