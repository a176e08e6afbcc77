"""GPU tests of the common module's ops against the float32 references (skipped without a GPU)."""

import pytest
import torch

from cuda_graphs import capture
from moejit import ops
from moejit.errors import MoejitInputError
from moejit.reference import (moe_permute_ref, moe_problem_sizes_ref, moe_unpermute_ref, rel_error,
                              silu_and_mul_ref)

pytestmark = pytest.mark.gpu
DTYPES = [torch.bfloat16, torch.float16]


def _ids(m, topk, e, gen, device="cuda"):
    """Distinct experts per token (as a router gives), random per row."""
    scores = torch.rand(m, e, generator=gen)
    return scores.topk(topk, dim=1).indices.int().to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t, n", [(1, 8), (7, 512), (64, 14336), (33, 100), (5, 3)])
def test_silu_and_mul(dtype, t, n, seeded):
    x = (torch.randn(t, 2 * n, generator=seeded) * 3).to(dtype).cuda()
    out = ops.silu_and_mul(x)
    ref = silu_and_mul_ref(x)
    assert out.shape == (t, n) and out.dtype == dtype
    # One rounding of a float32 result: at most 1 ulp of the 16-bit type apart from the reference.
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-3)


def test_silu_and_mul_rejects_bad_input():
    with pytest.raises(MoejitInputError, match="x must have dtype"):
        ops.silu_and_mul(torch.randn(4, 8, device="cuda"))
    with pytest.raises(MoejitInputError, match="even"):
        ops.silu_and_mul(torch.randn(4, 7, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(MoejitInputError, match="contiguous"):
        ops.silu_and_mul(torch.randn(8, 4, device="cuda", dtype=torch.bfloat16).t())
    with pytest.raises(MoejitInputError, match="CUDA"):
        ops.silu_and_mul(torch.randn(4, 8, dtype=torch.bfloat16))


CASES = [  # (M, K, E, topk)
    (0, 64, 8, 2), (1, 64, 8, 2), (1, 4096, 8, 1), (7, 24, 4, 4), (64, 2048, 256, 8),
    (1000, 128, 8, 2), (4096, 7168, 256, 8), (333, 30, 16, 3), (4, 7168, 256, 8),  # unpermute: 4 column blocks
]


@pytest.mark.parametrize("m, k, e, topk", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_permute_unpermute(m, k, e, topk, dtype, seeded):
    hidden = torch.randn(m, k, generator=seeded).to(dtype).cuda()
    ids = _ids(m, topk, e, seeded)
    rows = ops.moe_permute(hidden, ids, e)
    expect = moe_permute_ref(hidden, ids, e)
    for got, want, name in zip(rows, expect, ("rows", "offsets", "sort_idx", "inv_idx")):
        assert got.shape == want.shape, name
        assert torch.equal(got.view(torch.uint8) if got.dtype == dtype else got,
                           want.view(torch.uint8) if want.dtype == dtype else want), name
    if dtype == torch.bfloat16:
        w = torch.rand(m, topk, generator=seeded).cuda()
        out = ops.moe_unpermute(rows[0], w, rows[3])
        ref = moe_unpermute_ref(rows[0], w, rows[3])
        assert out.shape == (m, k)
        if m:
            assert rel_error(out, ref) < 1e-2


@pytest.mark.parametrize("sort", ["cub", "counting"])
@pytest.mark.parametrize("m, e, topk", [
    (40000, 256, 8),   # 320000 slots: counting-sort chunks longer than 1024
    (8192, 256, 8),    # Qwen3.6 M=8192: 64 chunks of 1024, four scatter warps a chunk
    (3000, 4095, 4),   # 4096 buckets: the counting sort's largest
    (3000, 4096, 4),   # one more: CUB's radix sort whatever MOEJIT_PERMUTE_SORT says
    (270000, 64, 8),   # 2.16M slots: the counting sort's chunk length at its 8192 bound (264 chunks)
    (500, 10000, 6),
    (2048, 1, 1),      # one expert
    (3, 256, 8),       # fewer slots than a warp
])
def test_permute_sort_paths(sort, m, e, topk, seeded, monkeypatch):
    """Both sorts behind moe_permute (the counting sort, the default up to 4095 experts; MOEJIT_PERMUTE_SORT=cub:
    CUB's radix sort) give the reference's stable permutation, offsets and inverse, with dropped slots (-1 and E)
    and repeated experts in a token's row; a zero-width hidden (the permutation only) gives the same indices."""
    monkeypatch.setenv("MOEJIT_PERMUTE_SORT", sort)
    ids = torch.randint(-1, e + 1, (m, topk), generator=seeded).int().cuda()
    hidden = torch.randn(m, 8, generator=seeded).bfloat16().cuda()
    want = moe_permute_ref(hidden, ids, e)
    got = ops.moe_permute(hidden, ids, e)
    for g, w, name in zip(got, want, ("rows", "offsets", "sort_idx", "inv_idx")):
        assert torch.equal(g, w), name
    only = ops.moe_permute(hidden[:, :0].contiguous(), ids.long(), e)
    assert only[0].shape == (m * topk, 0)
    for g, w, name in zip(only[1:], want[1:], ("offsets", "sort_idx", "inv_idx")):
        assert torch.equal(g, w), name


def test_permute_hot_expert_and_empty_experts(seeded):
    m, k, e, topk = 300, 256, 64, 2
    ids = torch.randint(0, 3, (m, topk), generator=seeded).int()
    ids[:, 0] = 5  # expert 5 gets every token once; experts >= 6 get nothing
    ids[:, 1] = torch.where(ids[:, 1] == 5, 4, ids[:, 1])
    hidden = torch.randn(m, k, generator=seeded).bfloat16().cuda()
    ids = ids.cuda()
    rows, offsets, sort_idx, inv_idx = ops.moe_permute(hidden, ids, e)
    counts = torch.bincount(ids.flatten().long(), minlength=e)
    assert torch.equal((offsets[1:] - offsets[:-1]).long(), counts)
    assert torch.equal(rows, hidden[sort_idx.long() // topk])
    sizes = ops.moe_problem_sizes(offsets, n=512, k=k)
    assert torch.equal(sizes, moe_problem_sizes_ref(offsets, 512, k))
    swapped = ops.moe_problem_sizes(offsets, n=512, k=k, swap_ab=True)
    assert torch.equal(swapped, moe_problem_sizes_ref(offsets, 512, k, swap_ab=True))


def test_dropped_slots_contribute_nothing(seeded):
    m, k, e, topk = 50, 64, 8, 2
    hidden = torch.randn(m, k, generator=seeded).bfloat16().cuda()
    ids = _ids(m, topk, e, seeded)
    ids[::3, 1] = -1
    ids[1::7, 0] = e + 5
    rows, offsets, sort_idx, inv_idx = ops.moe_permute(hidden, ids, e)
    ref = moe_permute_ref(hidden, ids, e)
    assert torch.equal(offsets, ref[1]) and torch.equal(inv_idx, ref[3])
    assert int(offsets[-1]) == int(((ids >= 0) & (ids < e)).sum())
    w = torch.rand(m, topk, generator=seeded).cuda()
    torch.testing.assert_close(ops.moe_unpermute(rows, w, inv_idx).float(),
                               moe_unpermute_ref(rows, w, inv_idx).float(), rtol=1e-2, atol=1e-2)


def test_int64_ids_match_int32(seeded):
    hidden = torch.randn(40, 32, generator=seeded).bfloat16().cuda()
    ids = _ids(40, 2, 8, seeded)
    a = ops.moe_permute(hidden, ids, 8)
    b = ops.moe_permute(hidden, ids.long(), 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_ops_capture_in_cuda_graph(seeded):
    m, k, e, topk = 256, 512, 16, 2
    hidden = torch.randn(m, k, generator=seeded).bfloat16().cuda()
    ids = _ids(m, topk, e, seeded)
    w = torch.rand(m, topk, generator=seeded).cuda()
    x2 = torch.randn(m, 2 * k, generator=seeded).bfloat16().cuda()

    def step():
        rows, offsets, _, inv = ops.moe_permute(hidden, ids, e)
        return ops.moe_unpermute(ops.silu_and_mul(torch.cat([rows, rows], dim=1)), w, inv), \
            ops.moe_problem_sizes(offsets, 64, k), ops.silu_and_mul(x2)

    eager = step()
    graph, captured = capture(step)
    for out in captured:
        out.fill_(-1) if out.is_floating_point() else out.fill_(-7)  # poison: replay must rewrite everything
    # New inputs in the same buffers: the replay must follow them.
    hidden.copy_(torch.randn(m, k, generator=seeded).bfloat16())
    ids.copy_(_ids(m, topk, e, seeded))
    graph.replay()
    torch.cuda.synchronize()
    fresh = step()
    for got, want in zip(captured, fresh):
        assert torch.equal(got, want)
    assert not torch.equal(captured[0], eager[0])


def test_ops_trace_under_torch_compile(seeded):
    hidden = torch.randn(64, 128, generator=seeded).bfloat16().cuda()
    ids = _ids(64, 2, 8, seeded)
    w = torch.rand(64, 2, generator=seeded).cuda()

    def layer(h, i, w):
        rows, offsets, _, inv = ops.moe_permute(h, i, 8)
        return ops.moe_unpermute(ops.silu_and_mul(torch.cat([rows, rows], 1)), w, inv)

    eager = layer(hidden, ids, w)
    compiled = torch.compile(layer, fullgraph=True)(hidden, ids, w)
    assert torch.equal(eager, compiled)


@pytest.mark.parametrize("splits", [1, 2, 3])
@pytest.mark.parametrize("in_dtype, out_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
                                                 (torch.bfloat16, torch.float32), (torch.float32, None)])
@pytest.mark.parametrize("k", [64, 100])  # 100: not a multiple of the vector width (scalar path)
def test_unpermute_sums_split_planes(splits, in_dtype, out_dtype, k, seeded):
    """[S, R, K] partial planes (split-K GEMM output) are summed before the weighted reduce; float32 in or out."""
    m, e, topk = 33, 8, 2
    ids = _ids(m, topk, e, seeded)
    ids[::5, 1] = -1
    hidden = torch.randn(m, k, generator=seeded).bfloat16().cuda()
    _, _, _, inv_idx = ops.moe_permute(hidden, ids, e)
    r = m * topk + 3  # extra rows no slot points at
    planes = torch.randn(splits, r, k, generator=seeded).to(in_dtype).cuda()
    w = torch.rand(m, topk, generator=seeded).cuda()
    rows = planes if splits > 1 else planes[0]
    torch.full((m, k), float("nan"), device="cuda")  # freed at once: the output below may reuse this block
    out = ops.moe_unpermute(rows, w, inv_idx, out_dtype=out_dtype)
    assert out.shape == (m, k) and out.dtype == (out_dtype or in_dtype)
    ref = moe_unpermute_ref(planes.double().sum(0), w, inv_idx).double()
    tol = 1e-5 if out.dtype == torch.float32 else 1e-2  # float32 accumulation; one 16-bit rounding
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_unpermute_rejects_bad_planes(seeded):
    w = torch.rand(4, 2, device="cuda")
    inv = torch.arange(8, dtype=torch.int32, device="cuda")
    with pytest.raises(MoejitInputError, match="rows must be"):
        ops.moe_unpermute(torch.zeros(1, 1, 8, 16, device="cuda"), w, inv)
    with pytest.raises(MoejitInputError, match="rows must be"):
        ops.moe_unpermute(torch.zeros(0, 8, 16, device="cuda"), w, inv)
    with pytest.raises(MoejitInputError, match="fewer than"):
        ops.moe_unpermute(torch.zeros(2, 7, 16, device="cuda"), w, inv)
    with pytest.raises(MoejitInputError, match="out_dtype"):
        ops.moe_unpermute(torch.zeros(8, 16, device="cuda"), w, inv, out_dtype=torch.int8)
