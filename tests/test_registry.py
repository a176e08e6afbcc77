"""Every declared op has a schema in bindings.cpp under its module's guard, and fakes give the right shapes."""

import re

import torch

from moejit import jit, registry
import moejit.ops  # noqa: F401  (declares the ops)
from moejit.reference import moe_permute_ref, silu_and_mul_ref


def _schemas_by_module():
    text = (jit.kernels_src_dir() / "bindings.cpp").read_text()
    found = {}
    for block in re.finditer(r"#if defined\(MOEJIT_MODULE_(\w+)\)(.*?)#endif", text, re.S):
        names = re.findall(r'm\.def\(\s*"(\w+)\(', block.group(2))
        found.update({n: block.group(1).lower() for n in names})
    return found


def test_declared_ops_match_bindings():
    schemas = _schemas_by_module()
    declared = {name: entry.module for name, entry in registry.ops().items()}
    assert declared == schemas
    for module in set(declared.values()):
        assert module in jit.MODULES


def test_fakes_match_reference_shapes():
    h = torch.randn(10, 24)
    ids = torch.randint(0, 4, (10, 3), dtype=torch.int32)
    fake = registry.ops()["moe_permute"].fake(h, ids, 4)
    ref = moe_permute_ref(h, ids, 4)
    assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in ref]
    assert [t.dtype for t in fake] == [t.dtype for t in ref]
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    assert registry.ops()["silu_and_mul"].fake(x).shape == silu_and_mul_ref(x).shape
