"""How many bytes of the next GEMM's weights the decode MoE layer prefetches into L2 (``l2_prefetch.cuh``).

At decode the layer streams its experts' weights through two GEMMs at the HBM rate, and between them run kernels
that move almost nothing (the front end, SiLU·mul + quantize) while HBM idles. Those kernels can bring the first
bytes of the next GEMM's weights into L2 (``prefetch=`` of :func:`moejit.ops.fp8_permute_quant` and
:func:`moejit.ops.silu_mul_fp8_quant`), so the GEMM starts on L2 hits.

``MOEJIT_L2_PREFETCH_MB`` (read at call time) sets the budget in MiB per GEMM (``0`` turns it off); the default is
:data:`DEFAULT_L2_FRACTION` of the device's L2.
"""

from __future__ import annotations

import os

import torch

from moejit.errors import MoejitInputError

ENV_L2_PREFETCH_MB = "MOEJIT_L2_PREFETCH_MB"
DEFAULT_L2_FRACTION = 0.5

_L2_BYTES: dict[int, int] = {}


def _l2_bytes(device: torch.device) -> int:
    if not torch.cuda.is_available():
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _L2_BYTES:
        _L2_BYTES[index] = int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0))
    return _L2_BYTES[index]


def l2_prefetch_bytes(device: torch.device) -> int:
    """The prefetch budget in bytes (a multiple of 16) for a decode layer on ``device``; 0 where there is no CUDA
    device (a fake-tensor trace) or the environment turns it off. Raises :class:`MoejitInputError` for a
    ``MOEJIT_L2_PREFETCH_MB`` that is not a number >= 0."""
    raw = os.environ.get(ENV_L2_PREFETCH_MB, "").strip()
    if raw:
        try:
            mib = float(raw)
        except ValueError:
            mib = -1.0
        if not mib >= 0 or mib > 1 << 20:
            raise MoejitInputError(f"{ENV_L2_PREFETCH_MB}={raw!r} must be a number of MiB >= 0")
        nbytes = int(mib * (1 << 20))
    else:
        nbytes = int(_l2_bytes(device) * DEFAULT_L2_FRACTION)
    return nbytes // 16 * 16
