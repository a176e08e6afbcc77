"""GPU architectures: parsing user spellings, detecting the current GPU, and the nvcc flags for each."""

from __future__ import annotations

from moejit.errors import MoejitError

# Arch names are the strings nvcc uses after "sm_": "80", "86", "89", "90a", "100a", ...
# Hopper's wgmma/TMA instructions need the arch-specific "90a" target, so SM90 is always built as 90a.
_ARCH_SPECIFIC = {"90": "90a", "100": "100a", "103": "103a", "120": "120a"}
MIN_CAPABILITY = (8, 0)


def normalize_arch(arch: str | int) -> str:
    """Return the canonical arch name for a user spelling: ``80``, ``"sm_80"``, ``"9.0"``, ``"90a"`` → ``"90a"``."""
    text = str(arch).strip().lower()
    for prefix in ("sm_", "sm", "compute_"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if "." in text:
        major, _, minor = text.partition(".")
        text = f"{major}{minor}"
    suffix = ""
    if text.endswith("a") or text.endswith("f"):
        text, suffix = text[:-1], text[-1]
    if not text.isdigit() or len(text) < 2:
        raise MoejitError(f"unrecognised GPU arch {arch!r}; expected e.g. 80, 86, 89, 90a")
    number = int(text)
    if number < MIN_CAPABILITY[0] * 10 + MIN_CAPABILITY[1]:
        raise MoejitError(
            f"GPU arch sm_{number} is not supported: moejit needs compute capability 8.0 (Ampere) or newer")
    return _ARCH_SPECIFIC.get(text, text + suffix) if not suffix else text + suffix


def arch_from_capability(capability: tuple[int, int]) -> str:
    """Map ``torch.cuda.get_device_capability()`` to an arch name, refusing GPUs older than SM80."""
    major, minor = capability
    if (major, minor) < MIN_CAPABILITY:
        raise MoejitError(
            f"this GPU has compute capability {major}.{minor}; moejit needs 8.0 (Ampere) or newer")
    return normalize_arch(f"{major}{minor}")


def detect_arch(device: int | None = None) -> str:
    """The arch of the current (or given) CUDA device. Raises :class:`MoejitError` without a usable GPU."""
    import torch

    if not torch.cuda.is_available():
        raise MoejitError("no CUDA GPU is visible to torch; moejit's kernels need one "
                          "(use `moejit build --arch ...` to compile ahead of time without a GPU)")
    return arch_from_capability(torch.cuda.get_device_capability(device))


def arch_number(arch: str) -> int:
    """``"90a"`` → 90, ``"86"`` → 86."""
    return int(arch.rstrip("af"))


def gencode_flags(arch: str) -> list[str]:
    """The nvcc flags that emit SASS for exactly this arch (``-gencode=arch=compute_90a,code=sm_90a`` for 90a)."""
    arch = normalize_arch(arch)
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
