"""Expert-weight preparation for the INT8 MoE layers: symmetric INT8 with one float32 scale per output channel."""

from __future__ import annotations

import torch

from moejit.errors import MoejitInputError
from moejit.int8.format import INT8_MAX

MIN_SCALE = 1e-12  # an all-zero output channel gets this scale (and quantizes to zeros)


def quantize_weights_int8(w: torch.Tensor):
    """Quantize expert weights ``w [E, N, K]`` (bf16/fp16/fp32, CPU or CUDA) per output channel.

    Returns ``(w_q int8 [E, N, K], scale float32 [E, N])`` with ``scale = max(amax over K / 127, 1e-12)`` and
    ``w_q = clamp(round(w / scale), -127, 127)``, rounding half away from zero (the same rule as the activation
    quantizers; :func:`moejit.reference.int8.quantize_weights_int8_ref` is the reference). Works one expert at a
    time so the float32 working copy stays small. A one-off preparation step, not a hot-path op.
    """
    from moejit.ops._validate import check_tensor  # lazily: moejit.ops re-exports this module

    check_tensor("w", w, dtypes=(torch.bfloat16, torch.float16, torch.float32), ndim=3, cuda=False)
    e, n, k = w.shape
    if k == 0 or n == 0:
        raise MoejitInputError(f"w must have non-empty [N, K] per expert, got shape {tuple(w.shape)}")
    w_q = torch.empty((e, n, k), dtype=torch.int8, device=w.device)
    scale = torch.empty((e, n), dtype=torch.float32, device=w.device)
    for i in range(e):
        wf = w[i].float()
        amax = wf.abs().amax(dim=-1)
        s = (amax / torch.full_like(amax, float(INT8_MAX))).clamp(min=MIN_SCALE)  # IEEE division on any device
        v = (wf / s[:, None]).clamp(-INT8_MAX, INT8_MAX)
        t = torch.trunc(v)
        w_q[i] = (t + torch.sign(v) * ((v - t).abs() >= 0.5).to(v.dtype)).to(torch.int8)
        scale[i] = s
    return w_q, scale
