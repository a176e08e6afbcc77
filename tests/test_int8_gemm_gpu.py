"""INT8 grouped GEMMs (module sm80_int8): per-tensor / per-token × per-channel and hybrid blockwise Q/F.

Every test runs once per kernel family: the CUTLASS SM80 mma.sync kernels, and on an sm_90 device also the TMA +
wgmma kernels of the module's sm_90a build (MOEJIT_INT8_GEMM_KERNEL forces the family; the fixture below).

Every kernel result is compared with a float64 torch computation of exactly the documented formula on fresh random
int8 data (random Q in 1..q_max and random positive F for the hybrid GEMM: independent of the quantizer). Integer
products and their sums stay below 2^31 < 2^53, so the float64 reference is exact up to its final scaling.

Tolerances. The kernels' integer math is exact; the only errors are the float32 scaling (relative ~1e-7 of the
largest term, which for the multi-group hybrid can exceed |y| through cancellation, hence the small absolute floor
of 1e-4 · max|y|) and the one rounding to the output type: half an ulp is 2^-8 = 3.9e-3 relative for bf16 and
2^-11 = 4.9e-4 for fp16. So: elementwise |y - ref| <= rtol · |ref| + 1e-4 · max|ref| with rtol 1e-2 (bf16) / 2e-3
(fp16), and the Frobenius relative error (uniform rounding: ~ulp/sqrt(12) ≈ 2.3e-3 for bf16) <= 4e-3 (bf16) /
1e-3 (fp16).
"""

from __future__ import annotations

import pytest
import torch

from moejit import registry
from moejit.errors import MoejitInputError
from moejit.ops import int8 as int8_ops

gpu = pytest.mark.gpu
DEV = "cuda"
TOL = {torch.bfloat16: (1e-2, 4e-3), torch.float16: (2e-3, 1e-3)}


def _is_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.fixture(autouse=True, params=["sm80", "sm90", "sm90-single"])
def int8_kernel(request, monkeypatch):
    """Runs the test with the SM80 kernels, then with the SM90 ones: in clusters of two CTAs (the multicast A, used
    where N has an even number of 128-column tiles) and as single CTAs (MOEJIT_INT8_SM90_CLUSTER=1, the path for
    the other N). GPU tests on an sm_90 device only."""
    sm90 = request.param.startswith("sm90")
    if sm90 and request.node.get_closest_marker("gpu") is None:
        pytest.skip("CPU test: one run is enough")
    if sm90 and not _is_sm90():
        pytest.skip("the TMA + wgmma INT8 kernels need an sm_90 GPU")
    monkeypatch.setenv("MOEJIT_INT8_GEMM_KERNEL", request.param[:4])
    if request.param == "sm90-single":
        monkeypatch.setenv("MOEJIT_INT8_SM90_CLUSTER", "1")
    return request.param


# ----------------------------------------------------------------------------------------------------------- helpers
def offsets_from_counts(counts: list[int]) -> torch.Tensor:
    off = [0]
    for c in counts:
        off.append(off[-1] + c)
    return torch.tensor(off, dtype=torch.int32)


def routed_counts(m: int, e: int, topk: int, gen: torch.Generator) -> list[int]:
    """Rows per expert of a realistic top-k routing of m tokens (distinct experts per token)."""
    logits = torch.randn(m, e, generator=gen)
    ids = logits.topk(topk, dim=1).indices.flatten()
    return torch.bincount(ids, minlength=e).tolist()


def rand_int8(shape, gen, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)


def ref_per_tensor(a, a_scale, b, b_scale, offsets):
    """float64: out[r, n] = a_scale[r] * b_scale[e, n] * sum_k a[r, k] b[e, n, k]; NaN where not defined."""
    rows, n = a.shape[0], b.shape[1]
    out = torch.full((rows, n), float("nan"), dtype=torch.float64, device=a.device)
    off = offsets.tolist()
    a_s = a_scale.double().reshape(-1)
    b_s = b_scale.double().reshape(b.shape[0], -1)
    for e in range(b.shape[0]):
        lo, hi = off[e], off[e + 1]
        if hi <= lo:
            continue
        acc = a[lo:hi].double() @ b[e].double().T  # exact: |acc| < 2^31 < 2^53
        sa = a_s[lo:hi, None] if a_s.numel() > 1 else a_s
        out[lo:hi] = acc * sa * b_s[e][None, :]
    return out


def ref_hybrid(a, a_q, a_f, b, b_scale, offsets, block_size, super_group):
    """float64: y = b_scale[e, n] * sum_g F[m, g] * sum_{b in g} Q[m, b] * P[m, n, b] (design.md)."""
    rows, k = a.shape
    n = b.shape[1]
    nb = k // block_size
    out = torch.full((rows, n), float("nan"), dtype=torch.float64, device=a.device)
    off = offsets.tolist()
    # sum_{b in g} Q[m,b] P[m,n,b] = (a * Q broadcast over each block)[:, cols of g] @ b[:, cols of g]^T, exact.
    a_scaled = (a.double().reshape(rows, nb, block_size) * a_q.double()[:, :, None]).reshape(rows, k)
    for e in range(b.shape[0]):
        lo, hi = off[e], off[e + 1]
        if hi <= lo:
            continue
        y = torch.zeros(hi - lo, n, dtype=torch.float64, device=a.device)
        for g, c0 in enumerate(range(0, nb, super_group)):
            cols = slice(c0 * block_size, min(nb, c0 + super_group) * block_size)
            i_g = a_scaled[lo:hi, cols] @ b[e, :, cols].double().T
            assert i_g.abs().max().item() < 2**31 if i_g.numel() else True
            y += a_f[lo:hi, g].double()[:, None] * i_g
        out[lo:hi] = y * b_scale[e].double()[None, :]
    return out


def assert_close(out, ref, out_dtype, valid_rows):
    rtol, ftol = TOL[out_dtype]
    o = out[:valid_rows].double()
    r = ref[:valid_rows]
    assert torch.isfinite(o).all(), "non-finite output in a row the kernel must write"
    if r.numel() == 0:
        return
    floor = 1e-4 * r.abs().max().item()
    err = (o - r).abs()
    bad = err > rtol * r.abs() + floor
    assert not bad.any(), (f"{int(bad.sum())} elements off; worst err {err.max().item():.3e} "
                           f"at ref {r.flatten()[err.argmax()].item():.3e}")
    frob = (torch.linalg.norm(o - r) / torch.linalg.norm(r)).item()
    assert frob <= ftol, f"Frobenius relative error {frob:.2e} > {ftol:.0e}"


def make_hybrid_inputs(rows, e, n, k, q_max, super_group, gen, block_size=128):
    nb = k // block_size
    groups = -(-nb // super_group)
    a = rand_int8((rows, k), gen)
    b = rand_int8((e, n, k), gen)
    a_q = torch.randint(1, q_max + 1, (rows, nb), generator=gen, dtype=torch.int32)
    # Positive F and per-channel scales sized so that |y| ~ 0.1 .. 1 (fits fp16 comfortably).
    a_f = (0.5 + torch.rand(rows, groups, generator=gen)) / (127.0 * q_max)
    b_scale = (0.5 + torch.rand(e, n, generator=gen)) / (127.0 * k**0.5)
    return [t.to(DEV) for t in (a, a_q, a_f, b, b_scale)]


# --------------------------------------------------------------------------------------------- CPU: API and fakes
def test_ops_are_declared_in_sm80_int8():
    ops = registry.ops()
    assert ops["int8_grouped_mm"].module == "sm80_int8"
    assert ops["int8_hybrid_grouped_mm"].module == "sm80_int8"


def test_fakes_shapes():
    a = torch.empty(10, 256, dtype=torch.int8)
    b = torch.empty(4, 96, 256, dtype=torch.int8)
    off = torch.zeros(5, dtype=torch.int32)
    out = registry.ops()["int8_grouped_mm"].fake(a, torch.ones(1), b, torch.ones(4), off, torch.float16)
    assert out.shape == (10, 96) and out.dtype == torch.float16
    out = registry.ops()["int8_hybrid_grouped_mm"].fake(a, torch.ones(10, 2, dtype=torch.int32), torch.ones(10, 1),
                                                        b, torch.ones(4, 96), off, 128, 65, 16, torch.bfloat16)
    assert out.shape == (10, 96) and out.dtype == torch.bfloat16
    rows = torch.zeros(24, dtype=torch.int32)  # a row gather: the GEMM has 24 rows of the 10-row a
    out = registry.ops()["int8_hybrid_grouped_mm"].fake(a, torch.ones(24, 2, dtype=torch.int32), torch.ones(24, 1),
                                                        b, torch.ones(4, 96), off, 128, 65, 16, torch.bfloat16,
                                                        rows, 3)
    assert out.shape == (24, 96)


def test_max_safe_super_group():
    assert int8_ops.max_safe_super_group(128, 16) == 65
    assert int8_ops.max_safe_super_group(128, 1) == 1040
    s = int8_ops.max_safe_super_group(128, 16)
    assert s * 128 * 127**2 * 16 < 2**31 <= (s + 1) * 128 * 127**2 * 16


def test_wrappers_reject_cpu_tensors():
    a = torch.zeros(4, 128, dtype=torch.int8)
    b = torch.zeros(2, 64, 128, dtype=torch.int8)
    off = torch.tensor([0, 2, 4], dtype=torch.int32)
    with pytest.raises(MoejitInputError, match="CUDA"):
        int8_ops.int8_grouped_mm(a, torch.ones(1), b, torch.ones(2), off)


# ------------------------------------------------------------------------------------------------------ GPU tests
DISTRIBUTIONS = {
    # name: (E, counts or None for routed, tokens, topk)
    "uneven_with_empty": (8, [0, 37, 130, 0, 1, 64, 200, 5], None, None),
    "one_hot_expert": (16, [0] * 3 + [333] + [0] * 12, None, None),
    "routed_decode": (256, None, 64, 8),      # 512 rows over 256 experts: the 64-row tile, many empty experts
    "routed_prefill": (64, None, 1024, 4),    # 4096 rows, ~64 per expert
    "big_experts": (4, [700, 0, 513, 300], None, None),
    "huge_experts": (2, [2100, 333], None, None),  # rows / E > 1024: the 128-row tile
}


def _counts(name, gen):
    e, counts, tokens, topk = DISTRIBUTIONS[name]
    return e, (counts if counts is not None else routed_counts(tokens, e, topk, gen))


@gpu
@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
@pytest.mark.parametrize("k,n", [(128, 512), (2048, 1024), (4096, 512), (208, 100), (2064, 13)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_token", [False, True])
def test_int8_grouped_mm(dist, k, n, out_dtype, per_token, seeded):
    e, counts = _counts(dist, seeded)
    offsets = offsets_from_counts(counts)
    rows = int(offsets[-1]) + 19  # 19 trailing rows past expert_offsets[E] (dropped slots): never written
    a = rand_int8((rows, k), seeded).to(DEV)
    b = rand_int8((e, n, k), seeded).to(DEV)
    if per_token:
        a_scale = (0.5 + torch.rand(rows, generator=seeded)).to(DEV) / 127.0
        b_scale = (0.5 + torch.rand(e, n, generator=seeded)).to(DEV) / (127.0 * k**0.5)
    else:
        a_scale = torch.tensor([0.7 / 127.0], device=DEV)
        b_scale = (0.5 + torch.rand(e, generator=seeded)).to(DEV) / (127.0 * k**0.5)
    off = offsets.to(DEV)
    out = int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, out_dtype)
    assert out.shape == (rows, n) and out.dtype == out_dtype
    ref = ref_per_tensor(a, a_scale, b, b_scale, offsets)
    assert_close(out, ref, out_dtype, int(offsets[-1]))


@gpu
@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
@pytest.mark.parametrize("k,n,super_group", [(128, 512, 65), (2048, 1024, 65), (4096, 512, 65), (7168, 512, 16),
                                             (2048, 512, 3), (384, 200, 2), (256, 13, 65)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_int8_hybrid_grouped_mm(dist, k, n, super_group, out_dtype, seeded):
    q_max = 16
    e, counts = _counts(dist, seeded)
    offsets = offsets_from_counts(counts)
    rows = int(offsets[-1]) + 7
    a, a_q, a_f, b, b_scale = make_hybrid_inputs(rows, e, n, k, q_max, super_group, seeded)
    out = int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_scale, offsets.to(DEV), 128, super_group, q_max,
                                          out_dtype)
    ref = ref_hybrid(a, a_q, a_f, b, b_scale, offsets, 128, super_group)
    assert_close(out, ref, out_dtype, int(offsets[-1]))


@gpu
@pytest.mark.parametrize("tile_m", ["64", "128"])
@pytest.mark.parametrize("dist", ["uneven_with_empty", "routed_decode", "big_experts"])
@pytest.mark.parametrize("k,n,super_group", [(2064, 200, 65), (2048, 512, 65), (7168, 512, 16)])
def test_forced_tile(tile_m, dist, k, n, super_group, monkeypatch, seeded, int8_kernel):
    """Both SM80 tile shapes on the same data (MOEJIT_INT8_GEMM_TILE_M overrides the shape-based choice)."""
    if int8_kernel != "sm80":
        pytest.skip("the SM80 tile override; the SM90 kernels have one tile")
    monkeypatch.setenv("MOEJIT_INT8_GEMM_TILE_M", tile_m)
    e, counts = _counts(dist, seeded)
    offsets = offsets_from_counts(counts)
    rows = int(offsets[-1])
    off = offsets.to(DEV)
    if k % 128 == 0:
        a, a_q, a_f, b, b_scale = make_hybrid_inputs(rows, e, n, k, 16, super_group, seeded)
        out = int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_scale, off, 128, super_group, 16, torch.bfloat16)
        assert_close(out, ref_hybrid(a, a_q, a_f, b, b_scale, offsets, 128, super_group), torch.bfloat16, rows)
    else:
        a = rand_int8((rows, k), seeded).to(DEV)
        b = rand_int8((e, n, k), seeded).to(DEV)
        b_scale = (0.5 + torch.rand(e, n, generator=seeded)).to(DEV) / (127.0 * k**0.5)
    a_scale = (0.5 + torch.rand(rows, generator=seeded)).to(DEV) / 127.0
    out = int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, torch.float16)
    assert_close(out, ref_per_tensor(a, a_scale, b, b_scale, offsets), torch.float16, rows)


@gpu
@pytest.mark.parametrize("hybrid", [False, True])
@pytest.mark.parametrize("n", [512, 200])
def test_sm90_half_tiles(hybrid, n, int8_kernel, monkeypatch, seeded):
    """The SM90 kernels' half tiles (an expert's last tile with at most 64 rows loads 64 rows of A, and the second
    consumer warp group skips it): the reference's values, and the same bits as with full tiles only
    (MOEJIT_INT8_SM90_HALF_TILES=0); remainders of 1, 63, 64, 65, 127 and 128 rows, in clusters and single CTAs."""
    if not int8_kernel.startswith("sm90"):
        pytest.skip("an SM90 kernel switch")
    counts = [1, 64, 65, 127, 128, 129, 191, 192, 193, 0, 320, 63, 256 + 64, 5]
    e, k = len(counts), 2048
    offsets = offsets_from_counts(counts)
    rows = int(offsets[-1])
    off = offsets.to(DEV)
    a, a_q, a_f, b, b_scale = make_hybrid_inputs(rows, e, n, k, 16, 65, seeded)
    a_scale = (0.5 + torch.rand(rows, generator=seeded)).to(DEV) / 127.0

    def run():
        if hybrid:
            return int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_scale, off, 128, 65, 16, torch.bfloat16)
        return int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, torch.bfloat16)

    half = run()
    ref = (ref_hybrid(a, a_q, a_f, b, b_scale, offsets, 128, 65) if hybrid
           else ref_per_tensor(a, a_scale, b, b_scale, offsets))
    assert_close(half, ref, torch.bfloat16, rows)
    monkeypatch.setenv("MOEJIT_INT8_SM90_HALF_TILES", "0")
    assert torch.equal(run(), half)


GATHER_COUNTS = {
    # name: (E, rows per expert); the SM90 half-tile remainders (1, 63, 64, 65, 127, 128 rows) and routed shapes
    "remainders": (14, [1, 64, 65, 127, 128, 129, 191, 192, 193, 0, 320, 63, 256 + 64, 5]),
    "uneven_with_empty": (8, [0, 37, 130, 0, 1, 64, 200, 5]),
    "routed_decode": (256, None),
    "routed_prefill": (64, None),
}


@gpu
@pytest.mark.parametrize("dist", list(GATHER_COUNTS))
@pytest.mark.parametrize("k,n,super_group", [(2048, 512, 65), (7168, 512, 16), (384, 200, 2), (2048, 1024, 65)])
def test_hybrid_row_gather(dist, k, n, super_group, seeded):
    """a_rows / a_rows_div (GEMM1 of the MoE layer reading the token rows through moe_permute's sort_idx): bit for
    bit the GEMM of the same rows copied, ``a[a_rows // div]``, and the float64 reference. The source has fewer
    rows than the GEMM (a token row read by several slots, in random order), some indices lie outside
    [0, T · div) and are clamped, and rows past expert_offsets[E] are never written (NaN-poisoned output)."""
    e, counts = GATHER_COUNTS[dist]
    if counts is None:
        counts = routed_counts(64 if dist == "routed_decode" else 1024, e, 8 if dist == "routed_decode" else 4,
                               seeded)
    offsets = offsets_from_counts(counts)
    valid = int(offsets[-1])
    rows, div = valid + 9, 4
    src = max(1, rows // 3)
    a_src = rand_int8((src, k), seeded).to(DEV)
    a_rows = torch.randint(0, src * div, (rows,), generator=seeded, dtype=torch.int32)
    a_rows[::97] = src * div + 5   # past the source: clamped to its last row
    a_rows[1::89] = -3             # negative: clamped to row 0
    a_rows = a_rows.to(DEV)
    _, a_q, a_f, b, b_scale = make_hybrid_inputs(rows, e, n, k, 16, super_group, seeded)
    off = offsets.to(DEV)
    copied = a_src[(a_rows.long() // div).clamp(0, src - 1)]
    want = int8_ops.int8_hybrid_grouped_mm(copied, a_q, a_f, b, b_scale, off, 128, super_group, 16, torch.bfloat16)
    torch.cuda.synchronize()
    poison = torch.full((rows, n), float("nan"), dtype=torch.bfloat16, device=DEV)
    ptr = poison.data_ptr()
    del poison
    out = int8_ops.int8_hybrid_grouped_mm(a_src, a_q, a_f, b, b_scale, off, 128, super_group, 16, torch.bfloat16,
                                          a_rows=a_rows, a_rows_div=div)
    assert out.shape == (rows, n)
    if out.data_ptr() == ptr:
        assert torch.isnan(out[valid:].float()).all(), "rows past expert_offsets[E] were written"
    assert torch.equal(out[:valid], want[:valid])
    assert_close(out, ref_hybrid(copied, a_q, a_f, b, b_scale, offsets, 128, super_group), torch.bfloat16, valid)


@gpu
def test_hybrid_row_gather_in_a_cuda_graph(seeded):
    """The gather reads a_rows on the device: replaying a captured GEMM after changing a_rows, the source rows and
    expert_offsets in place gives the new result."""
    e, n, k, s, rows, src, div = 8, 512, 2048, 65, 600, 150, 8
    _, a_q, a_f, b, b_scale = make_hybrid_inputs(rows, e, n, k, 16, s, seeded)
    a_src = rand_int8((src, k), seeded).to(DEV)
    a_rows = torch.randint(0, src * div, (rows,), generator=seeded, dtype=torch.int32).to(DEV)
    off = offsets_from_counts([100, 0, 50, 50, 200, 0, 0, 190]).to(DEV)

    def run():
        return int8_ops.int8_hybrid_grouped_mm(a_src, a_q, a_f, b, b_scale, off, 128, s, 16, torch.bfloat16,
                                               a_rows=a_rows, a_rows_div=div)

    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for counts in ([0, 0, 0, 600, 0, 0, 0, 0], [75] * 8):
        offsets = offsets_from_counts(counts)
        off.copy_(offsets.to(DEV))
        a_src.copy_(rand_int8((src, k), seeded).to(DEV))
        a_rows.copy_(torch.randint(0, src * div, (rows,), generator=seeded, dtype=torch.int32).to(DEV))
        graph.replay()
        torch.cuda.synchronize()
        copied = a_src[a_rows.long() // div]
        assert_close(out, ref_hybrid(copied, a_q, a_f, b, b_scale, offsets, 128, s), torch.bfloat16,
                     int(offsets[-1]))


@gpu
@pytest.mark.parametrize("k,n", [(4096, 14336), (7168, 1024)])
def test_large_n_and_k(k, n, seeded):
    """Mixtral-like GEMM1 (N = 14336) and DeepSeek-like K = 7168, both GEMMs, one dtype."""
    counts = [0, 150, 3, 97]
    offsets = offsets_from_counts(counts)
    rows = int(offsets[-1])
    e = len(counts)
    a, a_q, a_f, b, b_scale = make_hybrid_inputs(rows, e, n, k, 16, 65, seeded)
    off = offsets.to(DEV)
    out = int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_scale, off, 128, 65, 16, torch.bfloat16)
    assert_close(out, ref_hybrid(a, a_q, a_f, b, b_scale, offsets, 128, 65), torch.bfloat16, rows)
    a_scale = (0.5 + torch.rand(rows, generator=seeded)).to(DEV) / 127.0
    out = int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, torch.bfloat16)
    assert_close(out, ref_per_tensor(a, a_scale, b, b_scale, offsets), torch.bfloat16, rows)


@gpu
@pytest.mark.parametrize("sign", [1, -1])
def test_hybrid_worst_case_no_overflow(sign):
    """All |a| = |b| = 127 and Q = q_max: every super group sums to the largest allowed |I| = S·B·127²·q_max < 2^31.

    K = 16640 = 2 super groups of 65 blocks (the safe maximum for B = 128, q_max = 16) of which the second is full
    too; any int32 wrap-around would flip signs and show up as a huge error.
    """
    q_max, s = 16, int8_ops.max_safe_super_group(128, 16)
    k = 2 * s * 128
    e, n = 2, 256
    counts = [0, 150]
    offsets = offsets_from_counts(counts)
    rows = 150
    a = torch.full((rows, k), 127, dtype=torch.int8, device=DEV)
    b = torch.full((e, n, k), 127 * sign, dtype=torch.int8, device=DEV)
    b[1, ::2] *= -1  # both signs of the extreme sum in one launch
    a_q = torch.full((rows, k // 128), q_max, dtype=torch.int32, device=DEV)
    a_f = torch.full((rows, 2), 1.0 / (127.0 * q_max), device=DEV)
    b_scale = torch.full((e, n), 1.0 / (127.0 * k), device=DEV)
    out = int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_scale, offsets.to(DEV), 128, s, q_max, torch.float16)
    ref = ref_hybrid(a, a_q, a_f, b, b_scale, offsets, 128, s)
    assert ref.abs().max().item() == pytest.approx(1.0)  # sum = k * 127^2 * q_max, scaled back to ±1
    assert_close(out, ref, torch.float16, rows)


@gpu
def test_per_tensor_worst_case_no_overflow():
    """The largest K the per-tensor GEMM accepts (K · 128² < 2^31) with all products at ±127² (and -128s)."""
    k = 131056
    e, n, rows = 2, 128, 96
    offsets = offsets_from_counts([40, 56])
    a = torch.full((rows, k), 127, dtype=torch.int8, device=DEV)
    b = torch.full((e, n, k), 127, dtype=torch.int8, device=DEV)
    b[0, 1::2] = -127
    a[50:] = -128
    b[1, :64] = -128
    a_scale = torch.ones(1, device=DEV)
    b_scale = torch.full((e,), 1.0 / (128.0 * 128 * k), device=DEV)
    out = int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, offsets.to(DEV), torch.float16)
    ref = ref_per_tensor(a, a_scale, b, b_scale, offsets)
    assert_close(out, ref, torch.float16, rows)


@gpu
def test_cuda_graph_capture_and_device_offsets(seeded):
    """Both GEMMs capture into one CUDA graph; replaying after changing the data *and* expert_offsets in place gives
    the new results (nothing was read on the host at capture time)."""
    e, n, k, q_max, s = 8, 512, 2048, 16, 65
    rows = 600
    a, a_q, a_f, b, b_scale = make_hybrid_inputs(rows, e, n, k, q_max, s, seeded)
    a_scale = (0.5 + torch.rand(rows, generator=seeded)).to(DEV) / 127.0
    off = offsets_from_counts([100, 0, 50, 50, 200, 0, 0, 190]).to(DEV)
    out_h = int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_scale, off, 128, s, q_max, torch.bfloat16)  # warm up
    out_p = int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, torch.bfloat16)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_h = int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_scale, off, 128, s, q_max, torch.bfloat16)
        out_p = int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, torch.bfloat16)
    for counts in ([0, 0, 0, 600, 0, 0, 0, 0], [75] * 8, [1, 2, 3, 4, 5, 6, 7, 500]):
        offsets = offsets_from_counts(counts)
        off.copy_(offsets.to(DEV))
        new = make_hybrid_inputs(rows, e, n, k, q_max, s, seeded)
        for dst, src in zip((a, a_q, a_f, b, b_scale), new):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        valid = int(offsets[-1])
        assert_close(out_h, ref_hybrid(a, a_q, a_f, b, b_scale, offsets, 128, s), torch.bfloat16, valid)
        assert_close(out_p, ref_per_tensor(a, a_scale, b, b_scale, offsets), torch.bfloat16, valid)


@gpu
@pytest.mark.parametrize("hybrid", [False, True])
def test_rows_past_offsets_stay_poisoned(hybrid, seeded):
    """The output is poisoned (NaN) through the caching allocator: rows < expert_offsets[E] are all written, rows
    past it are left as they were."""
    e, n, k = 4, 320, 256
    counts = [10, 0, 70, 33]
    offsets = offsets_from_counts(counts)
    valid = int(offsets[-1])
    rows = valid + 45
    a, a_q, a_f, b, b_scale = make_hybrid_inputs(rows, e, n, k, 16, 65, seeded)
    a_scale = torch.full((1,), 0.01, device=DEV)
    off = offsets.to(DEV)
    torch.cuda.synchronize()
    poison = torch.full((rows, n), float("nan"), dtype=torch.bfloat16, device=DEV)
    ptr = poison.data_ptr()
    del poison
    if hybrid:
        out = int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_scale, off, 128, 65, 16, torch.bfloat16)
        ref = ref_hybrid(a, a_q, a_f, b, b_scale, offsets, 128, 65)
    else:
        out = int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, torch.bfloat16)
        ref = ref_per_tensor(a, a_scale, b, b_scale, offsets)
    if out.data_ptr() != ptr:
        pytest.skip("the caching allocator did not reuse the poisoned block")
    assert torch.isnan(out[valid:].float()).all(), "rows past expert_offsets[E] were written"
    assert_close(out, ref, torch.bfloat16, valid)


@gpu
def test_empty_rows_and_all_empty_experts():
    e, n, k = 4, 64, 128
    b = torch.ones(e, n, k, dtype=torch.int8, device=DEV)
    a = torch.ones(0, k, dtype=torch.int8, device=DEV)
    off = torch.zeros(e + 1, dtype=torch.int32, device=DEV)
    assert int8_ops.int8_grouped_mm(a, torch.ones(1, device=DEV), b, torch.ones(e, device=DEV), off).shape == (0, n)
    a = torch.ones(5, k, dtype=torch.int8, device=DEV)  # rows exist, but no expert owns them
    out = int8_ops.int8_hybrid_grouped_mm(a, torch.ones(5, 1, dtype=torch.int32, device=DEV),
                                          torch.ones(5, 1, device=DEV), b, torch.ones(e, n, device=DEV), off)
    torch.cuda.synchronize()
    assert out.shape == (5, n)


@gpu
def test_more_experts_than_the_sm90_schedule_holds(int8_kernel, monkeypatch, seeded):
    """The SM90 kernels keep the schedule in shared memory (at most 1024 experts): with more, the automatic choice
    runs the SM80 kernels (correctly), and forcing sm90 is a clear error."""
    if int8_kernel != "sm90":
        pytest.skip("one run, on sm_90")
    e, n, k = 1100, 256, 256
    counts = [64 if i % 100 == 0 else (1 if i % 7 == 0 else 0) for i in range(e)]  # ~700 rows, most experts empty
    offsets = offsets_from_counts(counts)
    rows = int(offsets[-1])
    a = rand_int8((rows, k), seeded).to(DEV)
    b = rand_int8((e, n, k), seeded).to(DEV)
    a_scale = (0.5 + torch.rand(rows, generator=seeded)).to(DEV) / 127.0
    b_scale = (0.5 + torch.rand(e, n, generator=seeded)).to(DEV) / (127.0 * k**0.5)
    off = offsets.to(DEV)
    monkeypatch.delenv("MOEJIT_INT8_GEMM_KERNEL")
    out = int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, torch.bfloat16)
    assert_close(out, ref_per_tensor(a, a_scale, b, b_scale, offsets), torch.bfloat16, rows)
    monkeypatch.setenv("MOEJIT_INT8_GEMM_KERNEL", "sm90")
    with pytest.raises(RuntimeError, match="at most 1024 experts"):
        int8_ops.int8_grouped_mm(a, a_scale, b, b_scale, off, torch.bfloat16)


@gpu
def test_input_errors():
    e, n, k, rows = 2, 64, 256, 8
    a = torch.zeros(rows, k, dtype=torch.int8, device=DEV)
    b = torch.zeros(e, n, k, dtype=torch.int8, device=DEV)
    off = torch.tensor([0, 4, 8], dtype=torch.int32, device=DEV)
    a_q = torch.ones(rows, 2, dtype=torch.int32, device=DEV)
    a_f = torch.ones(rows, 1, device=DEV)
    bs = torch.ones(e, n, device=DEV)
    mm, hy = int8_ops.int8_grouped_mm, int8_ops.int8_hybrid_grouped_mm
    with pytest.raises(MoejitInputError, match="a must have dtype int8"):
        mm(a.float(), torch.ones(1, device=DEV), b, bs, off)
    with pytest.raises(MoejitInputError, match="K mismatch"):
        mm(a[:, :128].contiguous(), torch.ones(1, device=DEV), b, bs, off)
    with pytest.raises(MoejitInputError, match="E \\+ 1"):
        mm(a, torch.ones(1, device=DEV), b, bs, off[:2])
    with pytest.raises(MoejitInputError, match="a_scale"):
        mm(a, torch.ones(3, device=DEV), b, bs, off)
    with pytest.raises(MoejitInputError, match="b_scale"):
        mm(a, torch.ones(1, device=DEV), b, torch.ones(e, 3, device=DEV), off)
    with pytest.raises(MoejitInputError, match="out_dtype"):
        mm(a, torch.ones(1, device=DEV), b, bs, off, torch.float32)
    with pytest.raises(MoejitInputError, match="block_size must be 128"):
        hy(a, torch.ones(rows, 4, dtype=torch.int32, device=DEV), a_f, b, bs, off, 64, 65, 16)
    with pytest.raises(MoejitInputError, match="overflow"):
        hy(a, a_q, a_f, b, bs, off, 128, 66, 16)
    with pytest.raises(MoejitInputError, match="a_q must be"):
        hy(a, a_q[:, :1].contiguous(), a_f, b, bs, off, 128, 65, 16)
    with pytest.raises(MoejitInputError, match="a_f must be"):
        hy(a, a_q, torch.ones(rows, 2, device=DEV), b, bs, off, 128, 65, 16)
    with pytest.raises(MoejitInputError, match="b_scale must be"):
        hy(a, a_q, a_f, b, torch.ones(e, device=DEV), off, 128, 65, 16)
    idx = torch.zeros(rows, dtype=torch.int32, device=DEV)
    with pytest.raises(MoejitInputError, match="a_rows must have dtype int32"):
        hy(a, a_q, a_f, b, bs, off, 128, 65, 16, a_rows=idx.long())
    with pytest.raises(MoejitInputError, match="a_rows_div must be a positive int"):
        hy(a, a_q, a_f, b, bs, off, 128, 65, 16, a_rows=idx, a_rows_div=0)
    with pytest.raises(MoejitInputError, match="only meaningful with a_rows"):
        hy(a, a_q, a_f, b, bs, off, 128, 65, 16, a_rows_div=2)
    with pytest.raises(MoejitInputError, match="a_q must be"):  # a_q counts the gathered rows
        hy(a, a_q, a_f, b, bs, off, 128, 65, 16, a_rows=torch.zeros(rows + 1, dtype=torch.int32, device=DEV))
    with pytest.raises(MoejitInputError, match="no rows to gather"):
        hy(a[:0], a_q, a_f, b, bs, off, 128, 65, 16, a_rows=idx)
    # The C++ checks stand on their own (torch.ops called directly).
    op = registry.op("int8_hybrid_grouped_mm")
    with pytest.raises(RuntimeError, match="overflow the int32 super-group sum"):
        op(a, a_q, a_f, b, bs, off, 128, 66, 16, torch.bfloat16)
    with pytest.raises(RuntimeError, match="multiple of block_size"):
        op(a[:, :144].contiguous(), a_q, a_f, b[:, :, :144].contiguous(), bs, off, 128, 65, 16, torch.bfloat16)
    with pytest.raises(RuntimeError, match="block_size must be 128"):
        op(a, a_q, a_f, b, bs, off, 64, 65, 16, torch.bfloat16)
    with pytest.raises(RuntimeError, match="a_rows must be int32"):
        op(a, a_q, a_f, b, bs, off, 128, 65, 16, torch.bfloat16, idx.long(), 1)
    with pytest.raises(RuntimeError, match="a_rows_div must be >= 1"):
        op(a, a_q, a_f, b, bs, off, 128, 65, 16, torch.bfloat16, idx, 0)
    with pytest.raises(RuntimeError, match="only meaningful with a_rows"):
        op(a, a_q, a_f, b, bs, off, 128, 65, 16, torch.bfloat16, None, 2)
    with pytest.raises(RuntimeError, match="a_q must be"):
        op(a, a_q, a_f, b, bs, off, 128, 65, 16, torch.bfloat16, torch.zeros(rows + 1, dtype=torch.int32,
                                                                            device=DEV), 1)
