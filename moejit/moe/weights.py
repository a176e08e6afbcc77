"""Expert-weight preparation for the FP8 and INT8 W8A8 layers: float weights → quantized weights + float32 scales.

Both formats share the scale layouts the layers accept — one scale per expert ``[E]``, per output channel
``[E, N_out]`` (``per_out_ch``) or per ``bn × bk`` block ``[E, ceil(N_out/bn), ceil(K/bk)]`` (``block_shape``,
which wins) — and differ only in the element type, the scale rule and the rounding:

- FP8 (:func:`quantize_weights_fp8`, for ``cutlass_moe_fp8`` / ``triton_moe_fp8``): ``scale = max(amax / 448,
  1e-12)`` (an IEEE division), ``w_q = e4m3(clamp(w / scale, ±448))`` with round-to-nearest-even. Bit-identical to
  :func:`moejit.reference.quantize_weights_fp8_ref` on any device.
- INT8 W8A8 (:func:`quantize_weights_int8_w8a8`, for ``triton_moe_int8``): ``scale = max(amax / 127, 1e-12)``
  (an IEEE division), ``w_q = rint(clamp(w / scale, ±127))`` — the Triton quantizer's arithmetic
  (:func:`moejit.reference.int8.w8a8_scale_ref`, :func:`~moejit.reference.int8.w8a8_round_ref`).

- INT8 per channel for the *hybrid* layer (:func:`quantize_weights_int8`): ``scale = max(amax / 127, 1e-12)``
  (IEEE division), ``w_q = clamp(round(w / scale), ±127)`` rounding half away from zero, the rule of its
  activation quantizers (:func:`moejit.reference.int8.quantize_weights_int8_ref` is the reference).

Work goes one expert at a time, so the float32 working copy is one expert, never the whole ``[E, N_out, K]``
tensor: a bf16 checkpoint the size of the GPU's memory can be quantized on it expert by expert.
"""

from __future__ import annotations

from typing import Callable

import torch

from moejit.errors import MoejitInputError
from moejit.reference.fp8 import FP8_DTYPE, FP8_MAX, MIN_SCALE
from moejit.reference.core import div_ieee
from moejit.reference.int8 import INT8_MAX, _to_int8, w8a8_round_ref, w8a8_scale_ref

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _quantize_experts(w: torch.Tensor, per_out_ch: bool, block_shape, qdtype: torch.dtype,
                      scale_of: Callable[[torch.Tensor], torch.Tensor],
                      cast: Callable[[torch.Tensor], torch.Tensor]):
    """The loop every format shares: per expert, the amax of each scale group → ``scale_of(amax)`` → ``cast(w /
    scale)`` (the scale broadcast back over its group, so each element is divided by exactly its own scale)."""
    from moejit.ops._validate import block_pair  # lazily: moejit.ops re-exports this module

    if not isinstance(w, torch.Tensor):
        raise MoejitInputError(f"w must be a torch.Tensor [E, N_out, K], got {type(w).__name__}")
    if w.dim() != 3 or w.dtype not in FLOAT_DTYPES:
        raise MoejitInputError(f"w must be a 3-D bf16/fp16/fp32 [E, N_out, K] tensor, got {w.dtype} "
                               f"{tuple(w.shape)}")
    e, n, k = w.shape
    if n == 0 or k == 0:
        raise MoejitInputError(f"w must have non-empty [N_out, K] per expert, got shape {tuple(w.shape)}")
    if block_shape is not None:
        bn, bk = block_pair(block_shape)
        nb, kb = -(-n // bn), -(-k // bk)
        scale = torch.empty((e, nb, kb), dtype=torch.float32, device=w.device)
    else:
        scale = torch.empty((e, n) if per_out_ch else (e,), dtype=torch.float32, device=w.device)
    w_q = torch.empty((e, n, k), dtype=qdtype, device=w.device)
    for i in range(e):
        wf = w[i].float()
        if block_shape is not None:
            padded = torch.zeros((nb * bn, kb * bk), dtype=torch.float32, device=w.device)
            padded[:n, :k] = wf.abs()
            s = scale_of(padded.reshape(nb, bn, kb, bk).amax(dim=(1, 3)))
            full = s.repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)[:n, :k]
        elif per_out_ch:
            s = scale_of(wf.abs().amax(dim=-1))
            full = s[:, None]
        else:
            s = scale_of(wf.abs().amax())
            full = s
        w_q[i] = cast(wf / full)
        scale[i] = s
    return w_q, scale


def _fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    return div_ieee(amax, FP8_MAX).clamp(min=MIN_SCALE)  # an IEEE division on every device


def _fp8_cast(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_weights_fp8(w: torch.Tensor, per_out_ch: bool = False, block_shape: tuple[int, int] | None = None):
    """Quantize expert weights ``w [E, N_out, K]`` (bf16/fp16/fp32, CPU or CUDA) to FP8 e4m3 for
    :func:`moejit.ops.cutlass_moe_fp8` and :func:`moejit.ops.triton_moe_fp8`.

    Args:
        w: ``[E, N_out, K]`` — ``w1`` is ``[E, 2N, K]`` (gate ‖ up), ``w2`` is ``[E, K, N]``.
        per_out_ch: one scale per output channel ``[E, N_out]`` (pass ``per_out_ch=True`` to the layer too);
            otherwise one per expert ``[E]``.
        block_shape: ``(bn, bk)`` block scales ``[E, ceil(N_out/bn), ceil(K/bk)]`` (DeepSeek-V3 style, Triton layer
            with the same ``block_shape``); wins over ``per_out_ch``.

    ``scale = max(amax / 448, 1e-12)``, ``w_q = e4m3(clamp(w / scale, ±448))``; bit-identical to
    :func:`moejit.reference.quantize_weights_fp8_ref`. One expert at a time. Returns ``(w_q float8_e4m3fn,
    scale float32)``. Raises :class:`~moejit.errors.MoejitInputError` on a bad tensor or block shape.

    Example::

        w1_q, w1_s = quantize_weights_fp8(w1, per_out_ch=True)
        w2_q, w2_s = quantize_weights_fp8(w2, per_out_ch=True)
        out = moejit.ops.cutlass_moe_fp8(a, w1_q, w2_q, topk_weights, topk_ids, w1_s, w2_s,
                                         per_act_token=True, per_out_ch=True)
    """
    return _quantize_experts(w, per_out_ch, block_shape, FP8_DTYPE, _fp8_scale, _fp8_cast)


def quantize_weights_int8_w8a8(w: torch.Tensor, per_out_ch: bool = True,
                               block_shape: tuple[int, int] | None = None):
    """Quantize expert weights ``w [E, N_out, K]`` (bf16/fp16/fp32, CPU or CUDA) to int8 for
    :func:`moejit.ops.triton_moe_int8`.

    Scales: per output channel ``[E, N_out]`` (``per_out_ch``, the default), per ``bn × bk`` block
    ``[E, ceil(N_out/bn), ceil(K/bk)]`` (``block_shape``, which wins), else per expert ``[E]``; each
    ``max(amax / 127, 1e-12)`` (IEEE division), ``w_q = rint(clamp(w / scale, ±127))`` (round half to even). One
    expert at a time. Returns ``(w_q int8, scale float32)``. Raises :class:`~moejit.errors.MoejitInputError` on a bad tensor
    or block shape.
    """
    return _quantize_experts(w, per_out_ch, block_shape, torch.int8, w8a8_scale_ref, w8a8_round_ref)


def _int8_channel_scale(amax: torch.Tensor) -> torch.Tensor:
    return div_ieee(amax, INT8_MAX).clamp(min=MIN_SCALE)


def quantize_weights_int8(w: torch.Tensor):
    """Quantize expert weights ``w [E, N, K]`` (bf16/fp16/fp32, CPU or CUDA) per output channel for
    :func:`moejit.ops.cutlass_moe_int8_hybrid`.

    Returns ``(w_q int8 [E, N, K], scale float32 [E, N])`` with ``scale = max(amax over K / 127, 1e-12)`` and
    ``w_q = clamp(round(w / scale), -127, 127)``, rounding half away from zero (the same rule as the activation
    quantizers; :func:`moejit.reference.int8.quantize_weights_int8_ref` is the reference). One expert at a time.
    Raises :class:`~moejit.errors.MoejitInputError` on a bad tensor.
    """
    return _quantize_experts(w, True, None, torch.int8, _int8_channel_scale, _to_int8)


__all__ = ["quantize_weights_fp8", "quantize_weights_int8", "quantize_weights_int8_w8a8"]
