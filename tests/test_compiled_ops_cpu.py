"""The compiled libraries on a machine without a GPU: what can be checked of them without running a kernel.

A CUDA build of torch loads moejit's libraries without a GPU, and their ops run under ``FakeTensorMode`` through
the fake implementations of :mod:`moejit.registry`. That checks, on the CPU:

- the op registry and the libraries agree: every declared op has a schema in the library of its module, every
  schema a declared op, and each fake takes exactly the schema's arguments (a drift here breaks torch.compile);
- the CUTLASS FP8 layer runs from end to end on fake CUDA tensors in every scale mode: every step goes through a
  registered op or a shape-only torch op, and nothing reads device data on the host (a ``.item()``, a
  data-dependent shape or a ``bool()`` of a device tensor raises under ``FakeTensorMode``), which is what CUDA-graph
  capture needs. The id range check is switched off as it is during capture (``MOEJIT_CHECK_IDS=0``). The INT8
  hybrid runner's glue likewise, with its Triton quantizers replaced by their output contract.

Needs built libraries in the moejit cache (``moejit build --arch 90a``; .ci/run builds before it tests) and a
CUDA build of torch; skipped otherwise, with the reason.
"""

import inspect

import pytest
import torch

from moejit import jit, registry
from moejit.jit import builder

FP8 = torch.float8_e4m3fn


def _built_library(name: str):
    for arch in ("90a", "80", "90", "89", "86"):
        if not jit.MODULES[name].supports(arch):
            continue
        try:
            plan = builder.plan(name, arch)
        except Exception:  # noqa: BLE001 - no CUTLASS headers, say: nothing built to check
            return None
        if plan.is_built():
            return plan.library
    return None


@pytest.fixture(scope="module")
def libraries():
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU-only build: it cannot load the CUDA libraries")
    import moejit.ops  # noqa: F401  (declares every op in the registry)

    found = {name: lib for name in jit.MODULES if (lib := _built_library(name)) is not None}
    if not found:
        pytest.skip("no moejit module is built in the cache (`moejit build --arch 90a` builds them)")
    with pytest.MonkeyPatch.context() as mp:
        for name, lib in found.items():
            torch.ops.load_library(str(lib))
            registry.register_fakes(name)
            mp.setitem(builder._loaded, name, lib)  # the op wrappers find their module loaded
        yield found


def _schemas() -> dict:
    return {str(s.name).split("::", 1)[1]: s for s in torch._C._jit_get_all_schemas()
            if str(s.name).startswith("moejit::")}


def test_registry_and_libraries_agree(libraries):
    schemas = _schemas()
    declared = {name: entry for name, entry in registry.ops().items() if entry.module in libraries}
    assert declared, "no declared op belongs to a built module"
    assert set(declared) <= set(schemas), f"declared but not in the libraries: {set(declared) - set(schemas)}"
    undeclared = {n for n in schemas if n not in registry.ops()}
    assert not undeclared, f"ops in the libraries that the registry does not declare: {undeclared}"
    drift = {}
    for name, entry in declared.items():
        fake_params = list(inspect.signature(entry.fake).parameters)
        schema_args = [a.name for a in schemas[name].arguments]
        if fake_params != schema_args:
            drift[name] = (fake_params, schema_args)
    assert not drift, f"fake parameters differ from the schema's arguments (op: (fake, schema)): {drift}"


MODES = [  # (per_act_token, per_out_ch, static activation scales)
    (False, False, False), (True, False, False), (False, True, False), (True, True, False), (False, False, True),
    (False, True, True)]


@pytest.mark.parametrize("per_act_token, per_out_ch, static", MODES)
@pytest.mark.parametrize("dtype, out_dtype", [(torch.bfloat16, None), (torch.float16, torch.bfloat16)])
def test_cutlass_moe_fp8_traces_without_reading_the_device(libraries, monkeypatch, per_act_token, per_out_ch,
                                                           static, dtype, out_dtype):
    for module in ("common", "sm90_fp8"):  # the layer runs ops of both
        if module not in libraries:
            pytest.skip(f"{module} is not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    import moejit.ops as ops

    monkeypatch.setenv("MOEJIT_CHECK_IDS", "0")
    m, k, n, e, topk = 37, 256, 128, 8, 2
    with FakeTensorMode():
        cuda = dict(device="cuda")
        a = torch.empty(m, k, dtype=dtype, **cuda)
        w1 = torch.empty(e, 2 * n, k, dtype=FP8, **cuda)
        w2 = torch.empty(e, k, n, dtype=FP8, **cuda)
        topk_weights = torch.empty(m, topk, **cuda)
        topk_ids = torch.empty(m, topk, dtype=torch.int32, **cuda)
        s1 = torch.empty((e, 2 * n) if per_out_ch else (e,), **cuda)
        s2 = torch.empty((e, k) if per_out_ch else (e,), **cuda)
        a1 = a2 = torch.empty(1, **cuda) if static else None
        out = ops.cutlass_moe_fp8(a, w1, w2, topk_weights, topk_ids, s1, s2, a1, a2, per_act_token=per_act_token,
                                  per_out_ch=per_out_ch, out_dtype=out_dtype)
        assert out.shape == (m, k) and out.dtype == (out_dtype or dtype) and out.device.type == "cuda"


def _fake_cuda(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="cuda")


# (module, call on fake CUDA tensors → output(s), expected [(shape, dtype)] of the outputs)
M, K, N, E, TOPK = 37, 256, 96, 8, 2
PADDED = 208  # block alignment, block_m 16: M·topk + E·15 = 194 slots at worst, in whole blocks
OP_CASES = {
    "silu_and_mul": ("common", lambda o: o.silu_and_mul(_fake_cuda(M, 2 * N, dtype=torch.bfloat16)),
                     [((M, N), torch.bfloat16)]),
    "moe_permute": ("common", lambda o: o.moe_permute(_fake_cuda(M, K, dtype=torch.float16),
                                                      _fake_cuda(M, TOPK, dtype=torch.int64), E),
                    [((M * TOPK, K), torch.float16), ((E + 1,), torch.int32), ((M * TOPK,), torch.int32),
                     ((M * TOPK,), torch.int32)]),
    # split-K planes [2, rows, K] in float32, summed and rounded to bf16 (the layer's 2-D bf16 use is traced above)
    "moe_unpermute": ("common", lambda o: o.moe_unpermute(_fake_cuda(2, M * TOPK, K), _fake_cuda(M, TOPK),
                                                          _fake_cuda(M * TOPK, dtype=torch.int32),
                                                          out_dtype=torch.bfloat16),
                      [((M, K), torch.bfloat16)]),
    "moe_problem_sizes": ("common", lambda o: o.moe_problem_sizes(_fake_cuda(E + 1, dtype=torch.int32), N, K),
                          [((E, 3), torch.int32)]),
    "moe_align_block_size": ("common", lambda o: o.moe_align_block_size(_fake_cuda(M, TOPK, dtype=torch.int32), E,
                                                                        16),
                             [((PADDED,), torch.int32), ((PADDED // 16,), torch.int32), ((1,), torch.int32)]),
    "fp8_quant": ("sm90_fp8", lambda o: o.fp8_quant(_fake_cuda(M, K, dtype=torch.bfloat16), per_token=True),
                  [((M, K), FP8), ((M, 1), torch.float32)]),
    "silu_mul_fp8_quant": ("sm90_fp8", lambda o: o.silu_mul_fp8_quant(_fake_cuda(M, 2 * N), None,
                                                                      num_rows=_fake_cuda(1, dtype=torch.int32),
                                                                      round_dtype=torch.bfloat16),
                           [((M, N), FP8), ((1,), torch.float32)]),
    "fp8_permute_quant": ("sm90_fp8", lambda o: o.fp8_permute_quant(_fake_cuda(M, K, dtype=torch.bfloat16),
                                                                    _fake_cuda(M, TOPK, dtype=torch.int32), E,
                                                                    per_token=True),
                          [((M * TOPK, K), FP8), ((M * TOPK, 1), torch.float32), ((E + 1,), torch.int32),
                           ((M * TOPK,), torch.int32), ((M * TOPK,), torch.int32)]),
    "cutlass_fp8_grouped_mm": ("sm90_fp8", lambda o: o.cutlass_fp8_grouped_mm(
        _fake_cuda(M, K, dtype=FP8), _fake_cuda(E, N, K, dtype=FP8), _fake_cuda(E + 1, dtype=torch.int32),
        _fake_cuda(M), _fake_cuda(E, N), out_dtype=torch.float32, k_splits=2), [((2, M, N), torch.float32)]),
    "int8_grouped_mm": ("sm80_int8", lambda o: o.int8_grouped_mm(
        _fake_cuda(M, K, dtype=torch.int8), _fake_cuda(M), _fake_cuda(E, N, K, dtype=torch.int8), _fake_cuda(E, N),
        _fake_cuda(E + 1, dtype=torch.int32)), [((M, N), torch.bfloat16)]),
    "int8_hybrid_grouped_mm": ("sm80_int8", lambda o: o.int8_hybrid_grouped_mm(
        _fake_cuda(M, K, dtype=torch.int8), _fake_cuda(M, K // 128, dtype=torch.int32), _fake_cuda(M, 1),
        _fake_cuda(E, N, K, dtype=torch.int8), _fake_cuda(E, N), _fake_cuda(E + 1, dtype=torch.int32),
        out_dtype=torch.float16), [((M, N), torch.float16)]),
}


def test_every_op_has_a_case():
    import moejit.ops  # noqa: F401

    assert set(OP_CASES) == set(registry.ops())


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_wrapper_runs_on_fake_tensors(libraries, name):
    """The public wrapper (validation included) and the fake on fake CUDA tensors: the outputs' shapes and dtypes
    are the op's contract, and nothing reads device data."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import moejit.ops as ops

    module, call, want = OP_CASES[name]
    if module not in libraries:
        pytest.skip(f"{module} is not built")
    with FakeTensorMode():
        out = call(ops)
    outs = out if isinstance(out, tuple) else (out,)
    got = [(tuple(t.shape), t.dtype) for t in outs]
    assert got == [(shape, dtype) for shape, dtype in want]
    assert all(t.device.type == "cuda" for t in outs)


@pytest.mark.parametrize("n, k", [(N, 0), (0, K)])
def test_grouped_mm_wrappers_reject_empty_gemm_dimensions(libraries, n, k):
    """K = 0 would leave the accumulators of a CUTLASS GEMM unwritten and N = 0 is no GEMM: a Python error."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import moejit.ops as ops
    from moejit.errors import MoejitInputError

    if "sm90_fp8" not in libraries or "sm80_int8" not in libraries:
        pytest.skip("sm90_fp8 and sm80_int8 must be built")
    with FakeTensorMode():
        offsets = _fake_cuda(E + 1, dtype=torch.int32)
        with pytest.raises(MoejitInputError, match="positive multiple of 16"):
            ops.cutlass_fp8_grouped_mm(_fake_cuda(M, k, dtype=FP8), _fake_cuda(E, n, k, dtype=FP8), offsets,
                                       _fake_cuda(M), _fake_cuda(E, n))
        with pytest.raises(MoejitInputError, match="non-empty"):
            ops.int8_grouped_mm(_fake_cuda(M, k, dtype=torch.int8), _fake_cuda(M),
                                _fake_cuda(E, n, k, dtype=torch.int8), _fake_cuda(E, n), offsets)


def _hybrid_quant_contract(t, k, block_size, super_group_size, q_max, device):
    """Empty outputs of the Triton Q/F quantizers' contract: ``(xq int8 [T, K], Q int32 [T, K/B], F float32
    [T, G])`` (moejit.int8.format.scale_shapes gives the two scale shapes)."""
    from moejit.int8.format import scale_shapes

    q_shape, f_shape = scale_shapes(t, k, block_size, super_group_size, q_max)
    return (torch.empty((t, k), dtype=torch.int8, device=device),
            torch.empty(q_shape, dtype=torch.int32, device=device),
            torch.empty(f_shape, dtype=torch.float32, device=device))


@pytest.mark.parametrize("fused_silu_quant", [True, False])
@pytest.mark.parametrize("fused_permute_quant", [True, False])
def test_int8_hybrid_runner_traces_without_reading_the_device(libraries, monkeypatch, fused_silu_quant,
                                                              fused_permute_quant):
    """The hybrid runner's glue (stages, scale shapes, the split super group) on fake CUDA tensors, its Triton
    kernels replaced by their output contract (Triton cannot launch on fake tensors; their values are tested
    under the interpreter and on the GPU). K spans 130 blocks: two super groups of at most 65."""
    for module in ("common", "sm80_int8"):
        if module not in libraries:
            pytest.skip(f"{module} is not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    import moejit.int8.quant as quant
    import moejit.ops as ops

    monkeypatch.setenv("MOEJIT_CHECK_IDS", "0")
    monkeypatch.setattr(quant, "int8_hybrid_quant", lambda x, b, s, qm: _hybrid_quant_contract(
        x.shape[0], x.shape[1], b, s, qm, x.device))
    monkeypatch.setattr(quant, "int8_hybrid_silu_quant", lambda x, b, s, qm: _hybrid_quant_contract(
        x.shape[0], x.shape[1] // 2, b, s, qm, x.device))
    monkeypatch.setattr(quant, "int8_hybrid_permute_quant",
                        lambda h, idx, topk, b, s, qm, inv_idx=None: _hybrid_quant_contract(
                            idx.shape[0], h.shape[1], b, s, qm, h.device))
    monkeypatch.setattr(quant, "int8_hybrid_permute_scales", lambda q, f, idx, topk: (
        q.new_empty((idx.shape[0], q.shape[1])), f.new_empty((idx.shape[0], f.shape[1]))))
    m, k, n, e, topk = 37, 130 * 128, 384, 8, 2
    with FakeTensorMode():
        cuda = dict(device="cuda")
        hidden = torch.empty(m, k, dtype=torch.float16, **cuda)
        w13 = torch.empty(e, 2 * n, k, dtype=torch.int8, **cuda)
        w2 = torch.empty(e, k, n, dtype=torch.int8, **cuda)
        out = ops.cutlass_moe_int8_hybrid(hidden, w13, w2, torch.empty(e, 2 * n, **cuda), torch.empty(e, k, **cuda),
                                          torch.empty(m, topk, **cuda), torch.empty(m, topk, dtype=torch.int32, **cuda),
                                          fused_silu_quant=fused_silu_quant, fused_permute_quant=fused_permute_quant)
        assert out.shape == (m, k) and out.dtype == torch.float16 and out.device.type == "cuda"
