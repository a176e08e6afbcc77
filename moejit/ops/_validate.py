"""Argument checks shared by the op wrappers: each failure raises MoejitInputError naming the argument."""

from __future__ import annotations

from typing import Iterable

import torch

from moejit.errors import MoejitInputError

FLOAT16_TYPES = (torch.bfloat16, torch.float16)


def check_tensor(name: str, t, *, dtypes: Iterable[torch.dtype] | None = None, ndim: int | None = None,
                 cuda: bool = True, contiguous: bool = False) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise MoejitInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise MoejitInputError(f"{name} must have dtype {allowed}; got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise MoejitInputError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if cuda and t.device.type != "cuda":
        raise MoejitInputError(f"{name} must be on a CUDA device, got {t.device}")
    if contiguous and not t.is_contiguous():
        raise MoejitInputError(f"{name} must be contiguous (call .contiguous())")
    return t


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise MoejitInputError(f"all tensors must be on the same device: {listed}")


def block_pair(block_shape) -> tuple[int, int]:
    """``block_shape`` as a pair of positive ints ``(block_n, block_k)``."""
    try:
        bn, bk = (int(v) for v in block_shape)
    except (TypeError, ValueError):
        raise MoejitInputError(f"block_shape must be a pair (block_n, block_k), got {block_shape!r}") from None
    if bn < 1 or bk < 1:
        raise MoejitInputError(f"block_shape {(bn, bk)} must be positive")
    return bn, bk
