"""``moejit bench``: the CUTLASS-vs-Triton sweep (placeholder until the sweep lands)."""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmark CUTLASS against Triton MoE layers over models, TP sizes and batch sizes."""
    import torch
    from rich.console import Console

    if not torch.cuda.is_available():
        Console(stderr=True).print("[bold red]error:[/] moejit bench needs a CUDA GPU and none is visible")
        sys.exit(2)
    Console(stderr=True).print("[bold red]error:[/] moejit bench: the sweep is not implemented yet")
    sys.exit(2)
