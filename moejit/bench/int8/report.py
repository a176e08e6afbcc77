"""What ``moejit bench-int8`` prints and writes. The cell formatting, speedup rule, environment and the JSON/CSV
records are :mod:`moejit.bench.report`'s (same schema as ``moejit bench``); this module lays them out side by side
per shape (one row per batch size × backend, six backends do not fit in columns), adds a per-shape summary and the
hybrid runner's stage table, and writes the stage records (JSON key ``stages``; ``<csv stem>_stages.csv``).
Nothing here needs a GPU."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from moejit.bench import report as base
from moejit.bench.int8.backends import BACKEND_NAMES, LABELS
from moejit.bench.int8.sweep import TOTAL_STAGE, StageResult
from moejit.bench.sweep import STATUS_OK, CellResult

BASELINE = "triton"
SCHEMA_STAGES = "moejit.bench-int8.stages/1"


def label(backend: str) -> str:
    return LABELS.get(backend, backend)


def shape_key(r) -> tuple:
    return (r.model, r.tp, r.num_experts, r.topk, r.hidden, r.intermediate)


def shape_title(key: tuple) -> str:
    model, tp, e, topk, k, n = key
    return f"{model} · TP={tp} · E={e} topk={topk} K={k} N={n}"


def group_by_shape(results: Sequence) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for r in results:
        groups.setdefault(shape_key(r), []).append(r)
    return groups


def _backend_order(rows: Sequence[CellResult]) -> list[str]:
    present = list(dict.fromkeys(r.backend for r in rows))
    return [b for b in BACKEND_NAMES if b in present] + [b for b in present if b not in BACKEND_NAMES]


def _fmt_pct(r: CellResult) -> str:
    if not r.usable or r.roofline_pct is None or not math.isfinite(r.roofline_pct):
        return "[dim]–[/]"
    return f"{r.roofline_pct:.0f}% [dim]{r.bound[:3]}[/]"


def render_shape_table(key: tuple, rows: Sequence[CellResult], caption: str = "") -> Table:
    """One shape: for each batch size, one row per backend — µs (median, p10–p90), speedup vs Triton INT8
    (per-token × per-channel), % of the INT8 roofline, achieved TFLOP/s, error vs the float32 layer."""
    table = Table(title=shape_title(key), title_justify="left",
                  caption=caption or ("µs per call, median (p10–p90); × = speedup vs Triton INT8 tok×ch (≈: "
                                      "within the spread); % of the INT8 roofline; error vs the unquantized "
                                      "float32 layer"))
    table.add_column("M", justify="right", style="bold")
    table.add_column("backend")
    table.add_column("µs", justify="right")
    table.add_column("vs Triton", justify="right")
    table.add_column("% roof", justify="right")
    table.add_column("TFLOP/s", justify="right")
    table.add_column("error", justify="right")
    table.add_column("activations")
    order = _backend_order(rows)
    by_m: dict[int, dict[str, CellResult]] = {}
    for r in rows:
        by_m.setdefault(r.batch_size, {})[r.backend] = r
    for i, (m, cells) in enumerate(by_m.items()):
        base_cell = cells.get(BASELINE)
        first = True
        for b in order:
            r = cells.get(b)
            if r is None:
                continue
            ratio, separated = base.speedup(base_cell, r) if b != BASELINE else (None, False)
            table.add_row(str(m) if first else "", label(b), base._fmt_us(r),
                          "[dim]baseline[/]" if b == BASELINE else base._fmt_speedup(ratio, separated),
                          _fmt_pct(r),
                          f"{r.tflops:,.0f}" if r.usable and r.tflops is not None and math.isfinite(r.tflops)
                          else "[dim]–[/]",
                          base._fmt_err(r), f"[dim]{r.act_scales}[/]",
                          end_section=b == order[-1] and i < len(by_m) - 1)
            first = False
    return table


def render_summary(results: Sequence[CellResult]) -> Table:
    """One row per shape and backend: cells timed, geometric-mean speedup vs Triton INT8 over the batch sizes,
    wins (faster than Triton beyond both spreads), best % of the INT8 roofline, problems."""
    table = Table(title="summary", title_justify="left",
                  caption="geo-mean over batch sizes; wins/losses count only gaps larger than both p10–p90 spreads")
    for col, justify in (("shape", "left"), ("backend", "left"), ("timed", "right"),
                         ("geo-mean vs Triton", "right"), ("wins / ≈ / losses", "right"),
                         ("best % roof", "right"), ("problems", "left")):
        table.add_column(col, justify=justify)
    for key, rows in group_by_shape(results).items():
        by_m: dict[int, dict[str, CellResult]] = {}
        for r in rows:
            by_m.setdefault(r.batch_size, {})[r.backend] = r
        order = _backend_order(rows)
        for b in order:
            mine = [cells[b] for cells in by_m.values() if b in cells]
            ratios, wins, ties, losses = [], 0, 0, 0
            for cells in by_m.values():
                if b == BASELINE or b not in cells:
                    continue
                ratio, separated = base.speedup(cells.get(BASELINE), cells[b])
                if ratio is None:
                    continue
                ratios.append(ratio)
                if not separated:
                    ties += 1
                elif ratio > 1:
                    wins += 1
                else:
                    losses += 1
            geo = base._geomean(ratios)
            pcts = [r.roofline_pct for r in mine if r.usable and r.roofline_pct is not None
                    and math.isfinite(r.roofline_pct)]
            problems = []
            for text, pred in (("✗ out of tolerance", lambda r: r.status == STATUS_OK and r.error_ok is False),
                               ("error", lambda r: r.status == "error"), ("OOM", lambda r: r.status == "OOM"),
                               ("n/a", lambda r: r.status == "n/a")):
                bad = [r for r in mine if pred(r)]
                if bad:
                    problems.append(f"{len(bad)} {text}")
            table.add_row(shape_title(key), label(b), f"{sum(r.usable for r in mine)}/{len(mine)}",
                          "[dim]baseline[/]" if b == BASELINE
                          else (f"{geo:.2f}×" if geo is not None else "[dim]–[/]"),
                          "[dim]–[/]" if b == BASELINE else f"{wins} / {ties} / {losses}",
                          f"{max(pcts):.0f}%" if pcts else "[dim]–[/]",
                          "[red]" + "; ".join(problems) + "[/]" if problems else "[green]none[/]",
                          end_section=b == order[-1])
    return table


def render_stage_table(key: tuple, rows: Sequence[StageResult]) -> Table:
    """The hybrid runner's stages at every batch size of one shape: median (p10–p90) and mean µs per stage, share of
    the forward; the last row is the whole forward (its mean is exactly the sum of the stage means)."""
    r0 = rows[0]
    switches = (f"fused permute+quant {'on' if r0.fused_permute_quant else 'off'}, fused SiLU+quant "
                f"{'on' if r0.fused_silu_quant else 'off'}")
    methods = sorted({r.method for r in rows if r.method})
    table = Table(title=f"CUTLASS INT8 hybrid per stage · {shape_title(key)} · {switches}", title_justify="left",
                  caption="µs of each stage inside one captured forward: median (p10–p90) and mean over the "
                          "replays; share = mean / mean of the total. Method: " + ("; ".join(methods) or "–"))
    for col, justify in (("M", "right"), ("stage", "left"), ("median µs", "right"), ("p10–p90", "right"),
                         ("mean µs", "right"), ("share", "right")):
        table.add_column(col, justify=justify)
    by_m: dict[int, list[StageResult]] = {}
    for r in rows:
        by_m.setdefault(r.batch_size, []).append(r)
    for j, (m, stages) in enumerate(by_m.items()):
        for i, r in enumerate(sorted(stages, key=lambda s: s.index)):
            is_total = r.stage == TOTAL_STAGE
            name = "[bold]total (one forward)[/]" if is_total else f"{r.index + 1}. {r.stage}"
            if r.status != STATUS_OK or r.median_us is None:
                cells = [f"[red]{r.status}[/]", "", "", ""]
            else:
                cells = [f"{r.median_us:,.1f}", f"[dim]{r.p10_us:,.1f}–{r.p90_us:,.1f}[/]", f"{r.mean_us:,.1f}",
                         f"{r.share_pct:.0f}%" if r.share_pct is not None else ""]
            table.add_row(str(m) if i == 0 else "", name, *cells,
                          end_section=is_total and j < len(by_m) - 1)
    return table


def stage_messages(stages: Sequence[StageResult]) -> list[str]:
    seen: dict[tuple, list[int]] = {}
    for r in stages:
        if r.status != STATUS_OK:
            seen.setdefault((r.model, r.status, r.message), []).append(r.batch_size)
    return [f"hybrid stages {model} {status}: {msg or '(no message)'} [M={','.join(map(str, sorted(set(ms))))}]"
            for (model, status, msg), ms in seen.items()]


def print_all(console: Console, results: Sequence[CellResult], stages: Sequence[StageResult],
              caption: str = "") -> None:
    """Per shape: the side-by-side table, then the hybrid stage table; then the summary and any failure lines."""
    stage_groups = group_by_shape(stages)
    for key, rows in group_by_shape(results).items():
        console.print(render_shape_table(key, rows, caption))
        if key in stage_groups:
            console.print(render_stage_table(key, stage_groups[key]))
    for key, rows in stage_groups.items():  # stages of a shape without cells (should not happen)
        if key not in group_by_shape(results):
            console.print(render_stage_table(key, rows))
    if results:
        console.print(render_summary(results))
    for line in base.error_messages(results) + stage_messages(stages):
        console.print(f"• {line}", highlight=False, markup=False)


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------

def stage_records(stages: Sequence[StageResult]) -> list[dict]:
    return [{k: base._clean(v) for k, v in s.as_dict().items()} for s in stages]


def write_json(path, results: Sequence[CellResult], stages: Sequence[StageResult], env: dict, params: dict,
               extra: dict | None = None, argv: Sequence[str] | None = None) -> None:
    """The ``moejit bench`` JSON (schema ``moejit.bench/1``: environment, fields, one record per cell) plus
    ``bench: "int8"``, ``params`` (format and switches) and ``stages`` (one record per stage)."""
    more = {"bench": "int8", "params": params, "stage_schema": SCHEMA_STAGES,
            "stage_fields": StageResult.field_names(), "stages": stage_records(stages)}
    more.update(extra or {})
    base.write_json(path, results, env, argv=argv, extra=more)


def stages_csv_path(csv_path) -> Path:
    p = Path(csv_path)
    return p.with_name(f"{p.stem}_stages{p.suffix or '.csv'}")


def write_csv(path, results: Sequence[CellResult], stages: Sequence[StageResult], env: dict) -> Path | None:
    """Cells to ``path`` (the ``moejit bench`` CSV schema); stages, if any, to ``<stem>_stages.csv`` beside it
    (stage fields then the environment's). Returns the stage file's path or None."""
    base.write_csv(path, results, env)
    if not stages:
        return None
    out = stages_csv_path(path)
    fieldnames = StageResult.field_names() + list(base.ENV_FIELDS)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        for rec in stage_records(stages):
            rec.update({k: env.get(k) for k in base.ENV_FIELDS})
            writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    return out
