"""NaN inputs through the Triton quantizers: shared by the interpreter runs (CPU) and the GPU tests.

Compiled Triton's plain max/min drop NaN where the interpreter (numpy) and the torch references keep it, so the
same checks run in both places: a NaN must make its row's / group's / the tensor's scale NaN, exactly where the
reference's scale is NaN, and everything the NaN does not reach must be bit-identical to the reference.
"""

import torch

from moejit.int8.quant import int8_hybrid_quant
from moejit.reference import fp8_quant_ref, int8_hybrid_quant_ref, int8_quant_w8a8_ref
from moejit.triton.quant import quantize_activations

QUANT_MODES = {"static": dict(scale=torch.tensor([0.02])), "tensor": {}, "token": dict(per_token=True),
               "group": dict(group_size=128)}


def _with_nan(device: str, gen: torch.Generator, rows: int = 5, cols: int = 256) -> torch.Tensor:
    x = (torch.randn(rows, cols, generator=gen) * 3).to(torch.bfloat16)
    x[1, 200] = float("nan")  # second 128-group of row 1
    return x.to(device)


def check_quantizer_keeps_nan(device: str, gen: torch.Generator, q_dtype: torch.dtype, mode: str,
                              exact_fp8: bool = True):
    """:func:`quantize_activations` on an input with one NaN vs the reference of its format, computed on the same
    device. With ``exact_fp8`` (on a GPU) FP8 scales and the values the NaN does not reach are compared bit for bit;
    without it (the interpreter: torch on the CPU divides by 448 exactly where the kernel multiplies by fl(1/448),
    and the interpreter's e4m3 conversion has known defects, see triton_interp_cases.py, and makes NaN finite)
    scales within one ulp and no FP8 values. INT8 is exact everywhere (its reference follows the kernel)."""
    x = _with_nan(device, gen)
    rows, cols = x.shape
    kw = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in QUANT_MODES[mode].items()}
    q, s = quantize_activations(x, q_dtype, **kw)
    ref = fp8_quant_ref if q_dtype == torch.float8_e4m3fn else int8_quant_w8a8_ref
    q_ref, s_ref = ref(x, **kw)
    s, q, q_ref, s_ref = s.cpu().reshape(s_ref.shape), q.cpu(), q_ref.cpu(), s_ref.cpu()
    exact = exact_fp8 or q_dtype == torch.int8
    assert torch.equal(s.isnan(), s_ref.isnan()), \
        f"NaN scales at {s.isnan().nonzero().tolist()}, the reference's at {s_ref.isnan().nonzero().tolist()}"
    if mode != "static":
        assert s.isnan().any(), "the NaN did not reach the scale"
    torch.testing.assert_close(s, s_ref, rtol=0 if exact else 2.4e-7, atol=0, equal_nan=True)
    # the scale of every element ([rows, cols]); what a NaN scale or a NaN element reaches is compared as NaN only
    s_2d = s_ref.reshape(1, 1) if s_ref.numel() == 1 else s_ref.reshape(rows, -1)
    s_el = s_2d.repeat_interleave(cols // s_2d.shape[1], dim=1).expand(rows, cols)
    reached = s_el.isnan() | x.cpu().float().isnan()
    if q_dtype == torch.float8_e4m3fn:
        if exact:  # the interpreter's e4m3 conversion also turns NaN into a finite byte (0x7c); hardware keeps NaN
            assert torch.equal(q.float().isnan(), q_ref.float().isnan())
            assert torch.equal(q.view(torch.uint8)[~reached], q_ref.view(torch.uint8)[~reached])
    else:
        assert torch.equal(q[~reached], q_ref[~reached])


def check_hybrid_quantizer_keeps_nan(device: str, gen: torch.Generator):
    """INT8 hybrid Q/F: a NaN makes its super group's F NaN (Q = 1, xq = 0 there, as the reference); everything
    else is bit-identical to the reference."""
    x = (torch.randn(3, 1024, generator=gen) * 3).to(torch.bfloat16)
    x[1, 300] = float("nan")  # block 2 of row 1; super groups of 2 blocks → group 1
    xq, q, f = int8_hybrid_quant(x.to(device), block_size=128, super_group_size=2, q_max=16)
    xq_ref, q_ref, f_ref = int8_hybrid_quant_ref(x, 128, 2, 16)
    f = f.cpu()
    assert torch.equal(f.isnan(), f_ref.isnan()) and f.isnan().sum() == 1 and f[1, 1].isnan()
    assert torch.equal(f[~f.isnan()], f_ref[~f_ref.isnan()])
    assert torch.equal(q.cpu(), q_ref) and torch.equal(xq.cpu(), xq_ref)
