"""Benchmark backends: a small interface between the sweep and the MoE layers it times.

A :class:`Backend` has a ``name``, says whether it can run here (:meth:`Backend.available` → ``(ok, reason)``) and
turns one cell's inputs into a zero-argument callable (:meth:`Backend.prepare`) that the sweep times in a CUDA graph
and checks against the reference. The layers are imported lazily: a backend whose code is missing from this
checkout shows as ``n/a`` with the reason, not as a crash.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from moejit.errors import MoejitError


@dataclass(frozen=True)
class QuantOpts:
    """The seed's two quantization switches: per-token activation scales (else per-tensor) and per-output-channel
    weight scales (else per-expert)."""

    per_act_token: bool = False
    per_out_ch: bool = False

    @property
    def label(self) -> str:
        act = "act per-token" if self.per_act_token else "act per-tensor"
        wt = "w per-channel" if self.per_out_ch else "w per-tensor"
        return f"{act}, {wt}"

    @property
    def short(self) -> str:
        return f"a{'T' if self.per_act_token else 't'}w{'C' if self.per_out_ch else 't'}"


@dataclass
class LayerInputs:
    """One cell's tensors, in the layer signature's order. ``a1_scale``/``a2_scale`` None means dynamic."""

    a: object
    w1_q: object
    w2_q: object
    topk_weights: object
    topk_ids: object
    w1_scale: object
    w2_scale: object
    a1_scale: object = None
    a2_scale: object = None


class Backend:
    """Interface. Subclasses set ``name``/``label`` and implement :meth:`available` and :meth:`prepare`."""

    name: str = "?"
    label: str = "?"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def prepare(self, inputs: LayerInputs, quant: QuantOpts) -> Callable[[], object]:
        raise NotImplementedError


class OpBackend(Backend):
    """A backend over a moejit layer function ``fn(a, w1_q, w2_q, topk_weights, topk_ids, w1_scale, w2_scale,
    a1_scale=None, a2_scale=None, per_act_token=False, per_out_ch=False)``, found at the first of ``locations``
    (``"module:attr"``) that imports, and needing at least compute capability ``min_cc`` (and below ``max_cc``)."""

    def __init__(self, name: str, label: str, locations: Sequence[str], min_cc: tuple[int, int] = (0, 0),
                 max_cc: tuple[int, int] | None = None, cc_reason: str = ""):
        self.name, self.label, self.locations = name, label, tuple(locations)
        self.min_cc, self.max_cc, self.cc_reason = min_cc, max_cc, cc_reason
        self._fn = None

    def _resolve(self):
        if self._fn is not None:
            return self._fn, ""
        missing = []
        for loc in self.locations:
            module_name, attr = loc.split(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                missing.append(f"{module_name} ({exc})")
                continue
            fn = getattr(module, attr, None)
            if fn is not None:
                self._fn = fn
                return fn, ""
            missing.append(f"{module_name}.{attr}")
        return None, "not in this checkout: " + ", ".join(missing)

    def available(self) -> tuple[bool, str]:
        fn, reason = self._resolve()
        if fn is None:
            return False, reason
        try:
            import torch

            if torch.cuda.is_available():
                cc = torch.cuda.get_device_capability()
                if cc < self.min_cc or (self.max_cc is not None and cc >= self.max_cc):
                    return False, self.cc_reason or f"needs compute capability {self.min_cc}, GPU has {cc}"
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        return True, ""

    def prepare(self, inputs: LayerInputs, quant: QuantOpts) -> Callable[[], object]:
        fn, reason = self._resolve()
        if fn is None:
            raise MoejitError(reason)
        x = inputs

        def call():
            return fn(x.a, x.w1_q, x.w2_q, x.topk_weights, x.topk_ids, x.w1_scale, x.w2_scale,
                      a1_scale=x.a1_scale, a2_scale=x.a2_scale, per_act_token=quant.per_act_token,
                      per_out_ch=quant.per_out_ch)

        return call


def default_backends() -> dict[str, Backend]:
    """The FP8 backends ``moejit bench`` knows, by name."""
    return {
        "cutlass": OpBackend("cutlass", "CUTLASS",
                             ("moejit.ops:cutlass_moe_fp8", "moejit.moe.cutlass_fp8:cutlass_moe_fp8"),
                             min_cc=(9, 0), max_cc=(10, 0), cc_reason="the CUTLASS FP8 grouped GEMM is SM90 only"),
        "triton": OpBackend("triton", "Triton",
                            ("moejit.ops:triton_moe_fp8", "moejit.moe.triton_fp8:triton_moe_fp8"),
                            min_cc=(8, 9), cc_reason="FP8 tensor cores need compute capability 8.9+"),
    }


BACKEND_NAMES = ("cutlass", "triton")


def get_backends(names: Iterable[str], known: dict[str, Backend] | None = None) -> list[Backend]:
    """Backends by name (case-insensitive, order kept); an unknown name is a :class:`MoejitError` listing all."""
    known = default_backends() if known is None else known
    out = []
    for name in names:
        key = name.strip().lower()
        if key not in known:
            raise MoejitError(f"unknown backend {name!r}; known backends: {', '.join(known)}")
        if known[key] not in out:
            out.append(known[key])
    return out
