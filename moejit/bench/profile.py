"""Per-kernel device times of one layer call (torch.profiler with CUPTI), to see where a layer's time goes.

``kernel_breakdown(fn)`` runs ``fn`` eagerly ``iters`` times under the profiler and returns, per kernel name, the
launches per call and the mean device µs per call. Eager, not replayed from a CUDA graph: the kernels' own times
are the same, the gaps between them are not, so compare the sum with the graph-timed layer to see the gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class KernelTime:
    name: str
    launches: float  # per call of fn
    us: float  # device µs per call of fn, all launches together


def kernel_breakdown(fn: Callable[[], object], iters: int = 10, warmup: int = 3) -> list[KernelTime]:
    """Kernels ``fn`` launches, slowest first (see the module docstring). Needs CUDA."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        t = totals.setdefault(ev.name, [0, 0.0])
        t[0] += 1
        t[1] += ev.device_time_total  # µs (a device event's own span)
    rows = [KernelTime(name, n / iters, us / iters) for name, (n, us) in totals.items()]
    return sorted(rows, key=lambda r: -r.us)


def profile_report(fn: Callable[[], object], total_us: float | None = None) -> tuple[list[dict], str]:
    """:func:`kernel_breakdown` of ``fn`` as JSON rows (name, launches, µs) and as :func:`format_breakdown`'s
    table: what the layer benchmark scripts record and print."""
    rows = kernel_breakdown(fn)
    return ([dict(name=r.name, launches=r.launches, us=round(r.us, 2)) for r in rows],
            format_breakdown(rows, total_us))


def short_name(name: str, width: int = 70) -> str:
    """A kernel name cut to ``width`` characters (CUTLASS template names run to kilobytes)."""
    if name.startswith("void "):  # a demangled signature: drop the return type and the parameter list
        name = name[5:].replace("(anonymous namespace)", "{anon}").split("(")[0]
    return name if len(name) <= width else name[:width - 1] + "…"


def format_breakdown(rows: list[KernelTime], total_us: float | None = None) -> str:
    """A plain-text table of :func:`kernel_breakdown`'s rows; with ``total_us`` (the graph-timed layer) also the
    part of it the kernels do not cover."""
    lines = [f"    {'µs':>8s} {'n':>4s}  kernel"]
    lines += [f"    {r.us:8.1f} {r.launches:4.1f}  {short_name(r.name)}" for r in rows]
    busy = sum(r.us for r in rows)
    tail = f"    {busy:8.1f} {sum(r.launches for r in rows):4.1f}  all kernels"
    if total_us is not None:
        tail += f" (layer {total_us:.1f} µs in a graph: {total_us - busy:+.1f} µs between kernels)"
    return "\n".join(lines + [tail])
