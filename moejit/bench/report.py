"""What a sweep prints and writes: the environment, rich tables per configuration, the summary, JSON/CSV (one
record per cell, environment included) and the latency plot. Nothing here needs a GPU."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

from rich.console import Console
from rich.table import Table

from moejit.bench.sweep import STATUS_ERROR, STATUS_NA, STATUS_OK, STATUS_OOM, CellResult, Config, PlanRow

SCHEMA = "moejit.bench/1"
ENV_FIELDS = ("gpu", "gpu_count", "driver", "cuda", "torch", "triton", "python", "moejit_version", "git_rev",
              "timestamp", "copy_gbps", "matmul_tflops")
RECORD_FIELDS = tuple(CellResult.field_names()) + ENV_FIELDS


# ---------------------------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------------------------

def _run(cmd: Sequence[str], cwd: str | None = None) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, cwd=cwd)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def git_revision() -> str:
    """``$MOEJIT_GIT_REV`` when set (a copy of the tree on a GPU machine, whose ``.git``, if any, may be an older
    snapshot than its files), else ``<commit>`` of the moejit checkout with ``+dirty`` when it has uncommitted
    changes, else ``unknown``."""
    from moejit.jit.paths import REPO_DIR

    if os.environ.get("MOEJIT_GIT_REV"):
        return os.environ["MOEJIT_GIT_REV"]
    rev = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=str(REPO_DIR))
    if not rev:
        return "unknown"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=str(REPO_DIR))
    return rev + ("+dirty" if dirty else "")


def environment(ceilings=None, rate_kind: str = "fp8") -> dict:
    """GPU, driver, CUDA/torch/triton/python versions, moejit version and git revision, a UTC timestamp, and the
    device ceilings used for the roofline columns."""
    import torch

    from moejit import __version__

    gpu, count, driver = "none", 0, ""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()
        driver = driver[0].strip() if driver else ""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {
        "gpu": gpu, "gpu_count": count, "driver": driver or "unknown", "cuda": torch.version.cuda or "none",
        "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
        "moejit_version": __version__, "git_rev": git_revision(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "copy_gbps": None if ceilings is None else round(ceilings.copy_gbps, 1),
        "matmul_tflops": None if ceilings is None else round(ceilings.rate(rate_kind), 1),
    }


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------

def _fmt_us(r: CellResult) -> str:
    if r.status == STATUS_NA:
        return "[dim]n/a[/]"
    if r.status == STATUS_OOM:
        return "[yellow]OOM[/]"
    if r.status == STATUS_ERROR or r.median_us is None:
        return "[red]error[/]"
    text = f"{r.median_us:,.1f} [dim]({r.p10_us:,.0f}–{r.p90_us:,.0f})[/]"
    return f"[bold red]{r.median_us:,.1f} ✗[/]" if r.error_ok is False else text


def _fmt_err(r: CellResult | None) -> str:
    if r is None or r.error is None:
        return "[dim]–[/]"
    if not math.isfinite(r.error):
        return "[bold red]nan/inf[/]"
    return f"[bold red]{r.error:.1e}[/]" if r.error_ok is False else f"{r.error:.1e}"


def speedup(base: CellResult | None, other: CellResult | None) -> tuple[float | None, bool]:
    """``base / other`` time ratio (> 1: ``other`` is faster) and whether the gap exceeds both p10–p90 spreads
    (the intervals do not overlap). None when either cell is not usable."""
    if base is None or other is None or not base.usable or not other.usable:
        return None, False
    ratio = base.median_us / other.median_us
    separated = other.p90_us < base.p10_us or base.p90_us < other.p10_us
    return ratio, separated


def _fmt_speedup(ratio: float | None, separated: bool) -> str:
    if ratio is None:
        return "[dim]–[/]"
    if not separated:
        return f"[dim]{ratio:.2f}× ≈[/]"
    return f"[green]{ratio:.2f}×[/]" if ratio > 1 else f"[yellow]{ratio:.2f}×[/]"


def baseline_backend(backends: Sequence[str]) -> str:
    """The backend speedups are measured against: Triton when present (the seed's baseline), else the first."""
    return "triton" if "triton" in backends else backends[0]


def group_results(results: Iterable[CellResult]) -> dict[tuple, list[CellResult]]:
    """Results by table key ``(model, tp, per_act_token, per_out_ch)``, in first-seen order."""
    groups: dict[tuple, list[CellResult]] = {}
    for r in results:
        groups.setdefault((r.model, r.tp, r.per_act_token, r.per_out_ch), []).append(r)
    return groups


def config_title(key: tuple) -> str:
    model, tp, pat, poc = key
    act = "act per-token" if pat else "act per-tensor"
    wt = "w per-channel" if poc else "w per-tensor"
    return f"{model} · TP={tp} · {act}, {wt}"


def _shape_caption(rows: list[CellResult]) -> str:
    r = rows[0]
    return (f"E={r.num_experts} topk={r.topk} K={r.hidden} N={r.intermediate} · {r.dtype} · activations "
            f"{r.act_scales} · µs per call, median (p10–p90)")


def render_table(key: tuple, rows: list[CellResult], labels: dict[str, str] | None = None) -> Table:
    """One configuration's table: batch size, µs per backend, speedup vs the baseline, best % of roofline and
    achieved TFLOP/s / GB/s, error per backend."""
    labels = labels or {}
    backends = list(dict.fromkeys(r.backend for r in rows))
    base = baseline_backend(backends)
    others = [b for b in backends if b != base]
    lab = lambda b: labels.get(b, b.upper() if b == "cutlass" else b.capitalize())  # noqa: E731
    table = Table(title=config_title(key), caption=_shape_caption(rows), title_justify="left")
    table.add_column("M", justify="right", style="bold")
    for b in [base] + others:
        table.add_column(f"{lab(b)} µs", justify="right")
    for b in others:
        table.add_column(f"{lab(b)} vs {lab(base)}", justify="right")
    table.add_column("best % roof", justify="right")
    table.add_column("TFLOP/s", justify="right")
    table.add_column("GB/s", justify="right")
    for b in [base] + others:
        table.add_column(f"err {lab(b)}", justify="right")
    by_m: dict[int, dict[str, CellResult]] = {}
    for r in rows:
        by_m.setdefault(r.batch_size, {})[r.backend] = r
    for m, cells in by_m.items():
        row = [str(m)]
        row += [_fmt_us(cells[b]) if b in cells else "" for b in [base] + others]
        row += [_fmt_speedup(*speedup(cells.get(base), cells.get(b))) for b in others]
        usable = [c for c in cells.values() if c.usable]
        best = min(usable, key=lambda c: c.median_us) if usable else None
        if best is not None and best.roofline_pct is not None:
            row.append(f"{best.roofline_pct:.0f}% [dim]{lab(best.backend)[0]} {best.bound[:3]}[/]")
        else:
            row.append("[dim]–[/]")
        row.append(f"{best.tflops:,.0f}" if best is not None and best.tflops is not None else "[dim]–[/]")
        row.append(f"{best.gbps:,.0f}" if best is not None and best.gbps is not None else "[dim]–[/]")
        row += [_fmt_err(cells.get(b)) for b in [base] + others]
        table.add_row(*row)
    return table


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def render_summary(results: Sequence[CellResult], labels: dict[str, str] | None = None) -> Table:
    """One row per configuration: usable cells, wins per backend, geometric-mean speedup vs the baseline, best %
    of roofline, and the cells that are not usable (flagged, error, OOM, n/a)."""
    labels = labels or {}
    backends = list(dict.fromkeys(r.backend for r in results))
    base = baseline_backend(backends) if backends else ""
    others = [b for b in backends if b != base]
    lab = lambda b: labels.get(b, b.upper() if b == "cutlass" else b.capitalize())  # noqa: E731
    table = Table(title="summary", title_justify="left",
                  caption="wins count only gaps larger than both p10–p90 spreads; ✗ = output out of tolerance")
    table.add_column("configuration")
    table.add_column("timed", justify="right")
    table.add_column("wins " + " / ".join(lab(b) for b in [base] + others) + " / ≈", justify="right")
    for b in others:
        table.add_column(f"geo-mean {lab(b)} vs {lab(base)}", justify="right")
    table.add_column("best % roof", justify="right")
    table.add_column("problems")
    for key, rows in group_results(results).items():
        by_m: dict[int, dict[str, CellResult]] = {}
        for r in rows:
            by_m.setdefault(r.batch_size, {})[r.backend] = r
        wins = {b: 0 for b in [base] + others}
        ties = 0
        for cells in by_m.values():
            usable = {b: c for b, c in cells.items() if c.usable}
            if len(usable) < 2:
                # A correct backend beats one that timed but produced a wrong result; a backend that did not run
                # (n/a, error, OOM) is reported under problems, not as a loss.
                if len(usable) == 1 and any(c.status == STATUS_OK and c.error_ok is False for c in cells.values()):
                    wins[next(iter(usable))] += 1
                continue
            best = min(usable.values(), key=lambda c: c.median_us)
            rest = [c for c in usable.values() if c is not best]
            if all(best.p90_us < c.p10_us for c in rest):
                wins[best.backend] += 1
            else:
                ties += 1
        geo = []
        for b in others:
            ratios = [speedup(c.get(base), c.get(b))[0] for c in by_m.values()]
            g = _geomean([x for x in ratios if x is not None])
            geo.append(f"{g:.2f}×" if g is not None else "[dim]–[/]")
        pcts = [r.roofline_pct for r in rows if r.usable and r.roofline_pct is not None]
        problems = []
        for label, pred in (("✗ out of tolerance", lambda r: r.status == STATUS_OK and r.error_ok is False),
                            ("error", lambda r: r.status == STATUS_ERROR), ("OOM", lambda r: r.status == STATUS_OOM),
                            ("n/a", lambda r: r.status == STATUS_NA)):
            bad = [r for r in rows if pred(r)]
            if bad:
                names = ",".join(sorted({lab(r.backend) for r in bad}))
                problems.append(f"{len(bad)} {label} ({names})")
        timed = sum(r.usable for r in rows)
        table.add_row(config_title(key), f"{timed}/{len(rows)}",
                      " / ".join(str(wins[b]) for b in [base] + others) + f" / {ties}", *geo,
                      f"{max(pcts):.0f}%" if pcts else "[dim]–[/]",
                      "[red]" + "; ".join(problems) + "[/]" if problems else "[green]none[/]")
    return table


def error_messages(results: Sequence[CellResult]) -> list[str]:
    """Distinct (backend, status, message) lines of the cells that failed, for printing after the tables."""
    seen: dict[tuple, list[int]] = {}
    for r in results:
        if r.status in (STATUS_ERROR, STATUS_OOM, STATUS_NA) or r.error_ok is False:
            seen.setdefault((r.backend, r.status if r.error_ok is not False else "✗", r.message or ""), []).append(
                r.batch_size)
    return [f"{b} {s}: {msg or '(no message)'} [M={','.join(map(str, sorted(set(ms))))}]"
            for (b, s, msg), ms in seen.items()]


def render_plan(rows: Sequence[PlanRow], configs: Sequence[Config], gpu_bytes: int | None = None) -> Table:
    """The dry-run plan: every cell (configuration × batch size × backend) and the memory it needs."""
    table = Table(title=f"plan: {len(rows) * (len(rows[0].backends) if rows else 0)} cells in {len(configs)} "
                        "configurations", title_justify="left",
                  caption="weights: FP8 W1+W2 and scales, generated one expert at a time; act: ≈ per-call buffers; "
                          "sets: input copies rotated so a replay does not run from L2")
    for col, justify in (("model", "left"), ("TP", "right"), ("E/topk/K/N", "right"), ("quant", "left"),
                         ("M", "right"), ("backends", "left"), ("weights GiB", "right"), ("act MiB", "right"),
                         ("sets", "right"), ("total GiB", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        s = r.config.shape
        total = r.total_bytes / 2**30
        fits = "" if gpu_bytes is None or r.total_bytes < 0.9 * gpu_bytes else " [yellow](OOM?)[/]"
        table.add_row(s.name, str(s.tp), f"{s.num_experts}/{s.topk}/{s.hidden}/{s.intermediate}",
                      r.config.quant.label, str(r.batch_size), " ".join(r.backends),
                      f"{r.weight_bytes / 2**30:.2f}", f"{r.activation_bytes / 2**20:.1f}", str(r.input_sets),
                      f"{total:.2f}{fits}")
    return table


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------

def records(results: Sequence[CellResult], env: dict) -> list[dict]:
    """One flat record per cell: the cell's fields, then the environment's (the same schema for JSON and CSV)."""
    out = []
    for r in results:
        rec = r.as_dict()
        rec.update({k: env.get(k) for k in ENV_FIELDS})
        out.append(rec)
    return out


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: str | Path, results: Sequence[CellResult], env: dict, argv: Sequence[str] | None = None,
               extra: dict | None = None) -> None:
    data = {"schema": SCHEMA, "command": list(argv) if argv is not None else sys.argv, "environment": env,
            "fields": list(RECORD_FIELDS),
            "records": [{k: _clean(v) for k, v in rec.items()} for rec in records(results, env)]}
    if extra:
        data.update(extra)
    _write_text(path, json.dumps(data, indent=1))


def write_csv(path: str | Path, results: Sequence[CellResult], env: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RECORD_FIELDS))
        writer.writeheader()
        for rec in records(results, env):
            writer.writerow({k: ("" if v is None else _clean(v)) for k, v in rec.items()})


def _write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_plot(path: str | Path, results: Sequence[CellResult], env: dict | None = None,
               labels: dict[str, str] | None = None) -> None:
    """Latency vs batch size, one line per backend, one panel per configuration (log-log), with the roofline
    floor dashed; out-of-tolerance points are drawn as red crosses."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("--plot needs matplotlib (pip install 'moejit[plot]')") from exc
    labels = labels or {}
    groups = group_results(results)
    n = max(1, len(groups))
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    colors = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"]
    for ax, (key, rows) in zip(axes.flat, groups.items()):
        for backend in dict.fromkeys(r.backend for r in rows):
            color = colors.setdefault(backend, palette[len(colors) % len(palette)])
            pts = sorted((r.batch_size, r.median_us, r.p10_us, r.p90_us) for r in rows
                         if r.backend == backend and r.usable)
            label = labels.get(backend, backend.upper() if backend == "cutlass" else backend.capitalize())
            if pts:
                xs, ys, lo, hi = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, color=color, label=label)
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
            bad = [(r.batch_size, r.median_us) for r in rows
                   if r.backend == backend and r.status == STATUS_OK and r.error_ok is False and r.median_us]
            if bad:
                ax.scatter(*zip(*bad), marker="x", color="red", zorder=5,
                           label=f"{label} out of tolerance")
        floors: dict[int, float] = {}
        for r in rows:
            if r.floor_us:
                floors[r.batch_size] = min(r.floor_us, floors.get(r.batch_size, r.floor_us))
        if floors:
            ax.plot(*zip(*sorted(floors.items())), linestyle="--", color="gray", linewidth=1,
                    label="roofline floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_title(config_title(key), fontsize=8)
        ax.set_xlabel("batch size (tokens)", fontsize=8)
        ax.set_ylabel("µs per call", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    if env:
        fig.suptitle(f"moejit bench · {env.get('gpu')} · torch {env.get('torch')} · triton {env.get('triton')} · "
                     f"{env.get('git_rev')}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_results(console: Console, results: Sequence[CellResult], labels: dict[str, str] | None = None) -> None:
    """Every configuration's table, then the summary, then the failure messages."""
    for key, rows in group_results(results).items():
        console.print(render_table(key, rows, labels))
    if results:
        console.print(render_summary(results, labels))
    for line in error_messages(results):
        console.print(f"• {line}", highlight=False, markup=False)
