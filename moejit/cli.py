"""The ``moejit`` command line: ``build``, ``info`` and ``bench``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import click
from rich.console import Console
from rich.table import Table

from moejit.errors import MoejitError

console = Console(stderr=False)
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moejit")
def main() -> None:
    """moejit: quantized Mixture-of-Experts kernels, compiled on first use."""


@main.command()
@click.option("--arch", "archs", multiple=True,
              help="GPU arch to build for (80, 86, 89, 90a, ...); repeatable. Default: the visible GPU's.")
@click.option("--module", "modules", multiple=True,
              help="Module to build (repeatable). Default: every module that supports the arch.")
@click.option("--jobs", "-j", type=int, default=None, help="Parallel compile jobs (default: all cores).")
@click.option("--force", is_flag=True, help="Rebuild even when the cache already holds this exact build.")
def build(archs: tuple[str, ...], modules: tuple[str, ...], jobs: int | None, force: bool) -> None:
    """Compile JIT modules ahead of time into the cache (needs nvcc and a CUDA-enabled torch, not a GPU)."""
    import torch

    from moejit import jit

    if torch.version.cuda is None:
        _fail(f"torch {torch.__version__} was built without CUDA; `moejit build` needs a CUDA-enabled torch "
              "(e.g. pip install torch==2.11.0)")
    try:
        arch_list = [jit.normalize_arch(a) for a in archs] or [jit.detect_arch()]
        for name in modules:
            jit.get_module(name)
        jit.find_cuda_home()
    except MoejitError as exc:
        _fail(str(exc))
    table = Table(title=f"moejit build → {jit.cache_root()}")
    for col in ("module", "arch", "status", "seconds", "library"):
        table.add_column(col, overflow="fold")
    failed = False
    for arch in arch_list:
        names = modules or tuple(n for n, m in jit.MODULES.items() if m.supports(arch))
        for name in names:
            module = jit.get_module(name)
            if not module.supports(arch):
                table.add_row(name, f"sm_{arch}", "[yellow]skipped (arch not supported)[/]", "", "")
                continue
            console.print(f"building [bold]{name}[/] for sm_{arch} ...", highlight=False)
            try:
                result = jit.build(name, arch, jobs=jobs, force=force)
            except MoejitError as exc:
                failed = True
                err_console.print(f"[red]{exc}[/]", highlight=False)
                table.add_row(name, f"sm_{arch}", "[red]FAILED[/]", "", getattr(exc, "log_path", "") or "")
                continue
            status = "cached" if result.cached else "[green]built[/]"
            table.add_row(name, f"sm_{arch}", status, f"{result.seconds:.1f}", str(result.library))
    console.print(table)
    if failed:
        sys.exit(1)


def _nvcc_version() -> tuple[str, str]:
    nvcc = shutil.which("nvcc")
    try:
        from moejit.jit import find_cuda_home

        nvcc = str(find_cuda_home() / "bin" / "nvcc")
    except MoejitError:
        if nvcc is None:
            return "not found", ""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
        release = next((ln.split("release")[-1].strip() for ln in out.splitlines() if "release" in ln), "?")
    except (OSError, subprocess.SubprocessError):
        release = "?"
    return nvcc, release


def _cxx_row() -> str:
    """The host compiler a JIT build links with (moejit.jit.toolchain), or why there is none."""
    from moejit.jit import toolchain

    user = toolchain.default_cxx()
    try:
        chosen = toolchain.build_cxx()
    except MoejitError as exc:
        return f"[red]{exc}[/]"
    if chosen is None:
        state = "links the shared libstdc++" if toolchain.probe_cxx(user) else "could not link a probe library"
        return f"{user} ({state})"
    return f"{chosen} (instead of {user}, which links libstdc++ statically)"


@main.command()
def info() -> None:
    """Show the GPU, toolchain versions, CUTLASS headers, the cache and which modules are built."""
    import torch

    from moejit import __version__, jit

    table = Table(title=f"moejit {__version__}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        try:
            arch = f"sm_{jit.detect_arch()}"
        except MoejitError as exc:
            arch = f"[red]{exc}[/]"
        table.add_row("GPU", f"{name} ({arch})")
    else:
        table.add_row("GPU", "none visible")
    table.add_row("torch", f"{torch.__version__} (CUDA {torch.version.cuda})")
    try:
        import triton

        table.add_row("triton", triton.__version__)
    except ImportError:
        table.add_row("triton", "not installed")
    table.add_row("python", sys.version.split()[0])
    nvcc, release = _nvcc_version()
    table.add_row("nvcc", f"{nvcc} ({release})" if release else nvcc)
    try:
        cutlass = jit.find_cutlass()
        table.add_row("CUTLASS", f"{cutlass.version} from {cutlass.source}: {cutlass.include}")
    except MoejitError as exc:
        table.add_row("CUTLASS", f"[red]{exc}[/]")
    table.add_row("C++ compiler", _cxx_row())
    table.add_row("cache", str(jit.cache_root()))
    table.add_row("JIT", "disabled (MOEJIT_DISABLE_JIT)" if os.environ.get("MOEJIT_DISABLE_JIT", "0") not in ("", "0")
                  else "enabled")
    console.print(table)

    built = Table(title="built modules")
    for col in ("module", "arch", "key", "seconds", "torch", "path"):
        built.add_column(col, overflow="fold")
    records = jit.built_modules()
    for rec in records:
        built.add_row(rec.get("module", "?"), f"sm_{rec.get('arch', '?')}", rec.get("key", "?"),
                      str(rec.get("seconds", "")), rec.get("torch", "?"), rec["path"])
    if records:
        console.print(built)
    else:
        console.print("no modules built yet (they build on first use, or with `moejit build`)")
    known = ", ".join(f"{n} ({m.description})" for n, m in jit.MODULES.items())
    console.print(f"modules: {known}", highlight=False)


def _register_subcommands() -> None:
    """Commands that live with their subsystem (each module imports torch only when its command runs)."""
    from moejit.bench.cli import bench
    from moejit.bench.int8.cli import bench_int8
    from moejit.triton.tune import tune

    main.add_command(bench)
    main.add_command(bench_int8)
    main.add_command(tune)


_register_subcommands()


if __name__ == "__main__":
    main()
