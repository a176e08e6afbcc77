"""GPU tests of the sm90_fp8 quantization ops against moejit.reference.fp8_quant_ref (bit-exact) (Hopper only)."""

import pytest
import torch

from cuda_graphs import capture
from moejit import ops
from moejit.errors import MoejitInputError
from moejit.reference import (MIN_SCALE, fp8_dequant_ref, fp8_quant_ref, moe_permute_ref, rel_error,
                              silu_and_mul_ref)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="the sm90_fp8 module is built for Hopper (sm_90a) only")]

DTYPES = [torch.bfloat16, torch.float16]
# (7, 100): the non-vectorized path. Per token (on a 132-multiprocessor GPU), fewer rows than half the
# multiprocessors split each row over a cluster of CTAs (64 rows of 4096, 5 of 520 and 2 of 14336 and 20480 here;
# SPLIT_SHAPES below), and so do up to 128 rows wider than 2048 (80 × 14336); more rows stay in registers (a warp per
# row up to 512 columns, else the block: 333 × 2048 one vector a thread, 300 × 14336 eight), longer ones take the
# two-pass kernel (300 × 20480)
SHAPES = [(1, 16), (7, 100), (64, 4096), (333, 2048), (5, 520), (2, 14336), (3, 20480), (80, 14336), (300, 14336),
          (300, 20480)]
# Decode-sized row counts of the model widths: the cluster-split per-token kernel (C = 8 up to 16 rows, 4 up to 33,
# on a 132-multiprocessor GPU)
SPLIT_SHAPES = [(rows, cols) for rows in (1, 3, 8, 32) for cols in (2048, 4096, 7168, 14336)]
# rows that no cluster split takes (more than half of any Hopper GPU's multiprocessors): the row-cached kernels
MANY_ROWS = 300
MODES = ["static", "tensor", "token"]


def _x(shape, dtype, gen, scale=3.0):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).cuda()


def _bytes(q):
    return q.view(torch.uint8)


def _quant(fn, x, mode, gen):
    if mode == "static":
        s = (x.float().abs().amax() / 300).reshape(1)  # some values saturate at ±448
        return fn(x, s), s
    return fn(x, per_token=(mode == "token")), None


@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_fp8_quant_matches_reference_exactly(dtype, shape, mode, seeded):
    x = _x(shape, dtype, seeded)
    (q, s), static = _quant(ops.fp8_quant, x, mode, seeded)
    # The reference runs on the CPU: there ``amax / 448`` is a true division, as in the kernel and design.md (torch's
    # CUDA division by a Python scalar multiplies by the rounded reciprocal, which can differ in the last bit).
    q_ref, s_ref = fp8_quant_ref(x.cpu(), scale=None if static is None else static.cpu(), per_token=(mode == "token"))
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape
    assert s.shape == ((shape[0], 1) if mode == "token" else (1,)) and s.dtype == torch.float32
    # Same float32 division and round-to-nearest-even conversion: identical bytes and scales.
    assert torch.equal(s.cpu(), s_ref.reshape(s.shape))
    assert torch.equal(_bytes(q).cpu(), _bytes(q_ref))


@pytest.mark.parametrize("dtype, round_dtype", [(torch.bfloat16, None), (torch.float16, None),
                                                (torch.float32, torch.bfloat16), (torch.float32, torch.float16)])
# more rows than the row-cached kernels' grids hold at once (8500 for a warp per row, 1100 for a block per row),
# and past the registers' 16384 columns (300 rows: the two-pass kernel; 2 and 80 rows: the cluster split); 40 and
# 80 rows of 14336: the cluster split, 300 the block per row; 128 × 1536: a block per row, a vector a thread
@pytest.mark.parametrize("shape", [(1, 32), (9, 200), (128, 2 * 1536), (40, 2 * 14336), (80, 2 * 14336),
                                   (300, 2 * 14336), (8500, 2 * 256), (1100, 2 * 4096), (2, 2 * 17408),
                                   (80, 2 * 17408), (300, 2 * 17408)])
@pytest.mark.parametrize("mode", MODES)
def test_silu_mul_fp8_quant(dtype, round_dtype, shape, mode, seeded):
    x = _x(shape, dtype, seeded)
    fn = lambda *args, **kw: ops.silu_mul_fp8_quant(*args, round_dtype=round_dtype, **kw)  # noqa: E731
    (q, s), static = _quant(fn, x, mode, seeded)
    xc = x.cpu()
    n = xc.shape[1] // 2
    act = (torch.nn.functional.silu(xc[:, :n].float()) * xc[:, n:].float()).to(round_dtype or dtype)
    assert torch.equal(act, silu_and_mul_ref(xc)) or dtype == torch.float32
    q_ref, s_ref = fp8_quant_ref(act, scale=None if static is None else static.cpu(), per_token=(mode == "token"))
    q, s = q.cpu(), s.cpu()
    assert q.shape == act.shape and s.shape == s_ref.reshape(s.shape).shape
    # The kernel's expf and torch's silu may round an activation to a neighbouring 16-bit value now and then, which
    # can move an amax by one ulp and a quantized value by one e4m3 step: compare dequantized values closely and
    # require almost all bytes to agree.
    torch.testing.assert_close(s, s_ref.reshape(s.shape), rtol=1e-2, atol=0)
    assert rel_error(fp8_dequant_ref(q, s), fp8_dequant_ref(q_ref, s_ref)) < 1e-2
    assert (_bytes(q) != _bytes(q_ref)).float().mean().item() < 1e-2


def _padded(x, rows=MANY_ROWS):
    """x's rows followed by others, so that the row-cached kernels (not the cluster split) run; per token, a row's
    bytes and scale do not depend on the other rows."""
    pad = torch.randn(rows - x.shape[0], x.shape[1], device=x.device).to(x.dtype)
    return torch.cat([x, pad])


@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_token_quant_split_rows_match_reference_exactly(dtype, shape, seeded):
    """Few rows: each row is split over a cluster of CTAs, whose partial maxima meet in distributed shared memory.
    The bytes and scales are the reference's, and the row-cached kernel's for the same rows."""
    x = _x(shape, dtype, seeded)
    q, s = ops.fp8_quant(x, per_token=True)
    q_ref, s_ref = fp8_quant_ref(x.cpu(), per_token=True)
    assert q.shape == x.shape and s.shape == (shape[0], 1)
    assert torch.equal(s.cpu(), s_ref.reshape(s.shape))
    assert torch.equal(_bytes(q).cpu(), _bytes(q_ref))
    q_rc, s_rc = ops.fp8_quant(_padded(x), per_token=True)
    assert torch.equal(_bytes(q), _bytes(q_rc[:shape[0]])) and torch.equal(s, s_rc[:shape[0]])


@pytest.mark.parametrize("dtype, round_dtype", [(torch.bfloat16, None), (torch.float16, None),
                                                (torch.float32, torch.bfloat16), (torch.float32, torch.float16)])
@pytest.mark.parametrize("shape", [(rows, 2 * cols) for rows, cols in SPLIT_SHAPES])
def test_silu_mul_token_quant_split_rows(dtype, round_dtype, shape, seeded):
    """The gated variant at decode sizes (Mixtral's 14336, DeepSeek-V3's 2048 outputs): as close to the reference as
    test_silu_mul_fp8_quant requires, and bit for bit the row-cached kernel's (same SiLU, rounding and division)."""
    x = _x(shape, dtype, seeded)
    q, s = ops.silu_mul_fp8_quant(x, per_token=True, round_dtype=round_dtype)
    xc = x.cpu()
    n = xc.shape[1] // 2
    act = (torch.nn.functional.silu(xc[:, :n].float()) * xc[:, n:].float()).to(round_dtype or dtype)
    q_ref, s_ref = fp8_quant_ref(act, per_token=True)
    assert q.shape == act.shape and s.shape == (shape[0], 1)
    torch.testing.assert_close(s.cpu(), s_ref.reshape(s.shape), rtol=1e-2, atol=0)
    assert rel_error(fp8_dequant_ref(q.cpu(), s.cpu()), fp8_dequant_ref(q_ref, s_ref)) < 1e-2
    assert (_bytes(q).cpu() != _bytes(q_ref)).float().mean().item() < 1e-2
    q_rc, s_rc = ops.silu_mul_fp8_quant(_padded(x), per_token=True, round_dtype=round_dtype)
    assert torch.equal(_bytes(q), _bytes(q_rc[:shape[0]])) and torch.equal(s, s_rc[:shape[0]])


@pytest.mark.parametrize("fn", [ops.fp8_quant, ops.silu_mul_fp8_quant])
@pytest.mark.parametrize("rows, cols, valid", [(8, 14336, 3), (32, 2048, 5), (3, 4096, 0), (8, 7168, 8),
                                               (8, 7168, 100), (8, 7168, -2)])
def test_token_quant_split_honours_num_rows(fn, rows, cols, valid, seeded):
    """Only the first clamp(num_rows, 0, rows) rows are quantized; the others (poisoned through the caching
    allocator: e4m3 NaN bytes, NaN scales) are left as they were."""
    width = 2 * cols if fn is ops.silu_mul_fp8_quant else cols
    x = _x((rows, width), torch.bfloat16, seeded)
    live = min(max(valid, 0), rows)
    num_rows = torch.tensor([valid], dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    poison_q = torch.full((rows, cols), 0x7F, dtype=torch.uint8, device="cuda")
    poison_s = torch.full((rows, 1), float("nan"), device="cuda")
    ptrs = (poison_q.data_ptr(), poison_s.data_ptr())
    del poison_q, poison_s
    q, s = fn(x, per_token=True, num_rows=num_rows)
    poisoned = (q.data_ptr(), s.data_ptr()) == ptrs
    if live:
        q_all, s_all = fn(x[:live].contiguous(), per_token=True)
        assert torch.equal(_bytes(q[:live]), _bytes(q_all)) and torch.equal(s[:live], s_all)
    if not poisoned:
        pytest.skip("the caching allocator did not reuse the poisoned blocks")
    assert (_bytes(q[live:]) == 0x7F).all() and s[live:].isnan().all(), "rows past num_rows were written"


@pytest.mark.parametrize("fn", [ops.fp8_quant, ops.silu_mul_fp8_quant])
def test_token_quant_split_zero_and_nan_rows(fn, seeded):
    """An all-zero row gets the minimum scale and zero bytes; a NaN in one CTA's slice of a row (near its end) reaches
    every CTA of the cluster: that row's scale and bytes are NaN, the others' are untouched."""
    cols = 14336
    width = 2 * cols if fn is ops.silu_mul_fp8_quant else cols
    x = _x((8, width), torch.bfloat16, seeded)
    x[2] = 0
    x[5, cols - 3] = float("nan")
    q, s = fn(x, per_token=True)
    q_rc, s_rc = fn(_padded(x), per_token=True)
    assert s[2].item() == pytest.approx(MIN_SCALE, rel=1e-6, abs=0) and (q.float()[2] == 0).all()
    assert s[5].isnan().all() and q.float()[5].isnan().all()
    others = [r for r in range(8) if r != 5]
    assert not s[others].isnan().any() and not q.float()[others].isnan().any()
    assert torch.equal(_bytes(q[others]), _bytes(q_rc[others])) and torch.equal(s[others], s_rc[others])


@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_like_the_reference(mode):
    """A NaN input is not hidden: per tensor (dynamic) every scale and value becomes NaN, per token its row's, and a
    static scale leaves the NaN element NaN — as fp8_quant_ref (amax and clamp propagate NaN) does."""
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    x[1, 3] = float("nan")
    static = torch.tensor([0.01]) if mode == "static" else None
    q, s = ops.fp8_quant(x.cuda(), None if static is None else static.cuda(), per_token=mode == "token")
    q_ref, s_ref = fp8_quant_ref(x, scale=static, per_token=mode == "token")
    assert torch.equal(s.cpu().isnan(), s_ref.reshape(s.shape).isnan())
    assert torch.equal(q.float().cpu().isnan(), q_ref.float().isnan())
    assert q.float().isnan().any()
    finite = ~q_ref.float().isnan()
    assert torch.equal(_bytes(q).cpu()[finite], _bytes(q_ref)[finite])


@pytest.mark.parametrize("fn", [ops.fp8_quant, ops.silu_mul_fp8_quant])
def test_all_zero_rows_and_inputs_give_finite_scales(fn):
    x = torch.zeros(6, 64, dtype=torch.bfloat16, device="cuda")
    x[2] = torch.linspace(-5, 5, 64)
    q, s = fn(x, per_token=True)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert s[0].item() == pytest.approx(MIN_SCALE, rel=1e-6, abs=0)
    assert (q.float()[0] == 0).all()
    q, s = fn(torch.zeros(3, 32, dtype=torch.float16, device="cuda"))
    assert s.item() == pytest.approx(MIN_SCALE, rel=1e-6, abs=0) and (q.float() == 0).all()
    q, s = fn(torch.zeros(0, 32, dtype=torch.float16, device="cuda"))
    assert q.shape[0] == 0 and torch.isfinite(s).all()


@pytest.mark.parametrize("fn", [ops.fp8_quant, ops.silu_mul_fp8_quant])
@pytest.mark.parametrize("mode", MODES)
def test_num_rows_limits_the_work(fn, mode, seeded):
    x = _x((50, 256), torch.bfloat16, seeded)
    x[30:] *= 100  # larger values beyond num_rows must not affect a per-tensor scale
    valid = 30
    num_rows = torch.tensor([valid], dtype=torch.int32, device="cuda")
    static = (x[:valid].float().abs().amax() / 448).reshape(1) if mode == "static" else None
    q, s = fn(x, static, per_token=(mode == "token"), num_rows=num_rows)
    q_all, s_all = fn(x[:valid].contiguous(), static, per_token=(mode == "token"))
    assert torch.equal(_bytes(q[:valid]), _bytes(q_all))
    assert torch.equal(s[:valid] if mode == "token" else s, s_all)


def test_quant_captures_in_cuda_graph(seeded):
    x = _x((64, 512), torch.bfloat16, seeded)
    decode = _x((8, 2 * 14336), torch.float32, seeded)  # per token: the cluster split (a cluster launch)
    static = torch.tensor([0.02], device="cuda")

    def step():
        return (ops.fp8_quant(x), ops.fp8_quant(x, per_token=True), ops.fp8_quant(x, static),
                ops.silu_mul_fp8_quant(x), ops.silu_mul_fp8_quant(x, per_token=True),
                ops.fp8_quant(decode, per_token=True),
                ops.silu_mul_fp8_quant(decode, per_token=True, round_dtype=torch.bfloat16))

    step()
    graph, captured = capture(step)
    x.copy_(_x((64, 512), torch.bfloat16, seeded, scale=7.0))  # new data: the replay must recompute the scales
    decode.copy_(_x((8, 2 * 14336), torch.float32, seeded, scale=7.0))
    graph.replay()
    torch.cuda.synchronize()
    for (q, s), (q_e, s_e) in zip(captured, step()):
        assert torch.equal(_bytes(q), _bytes(q_e)) and torch.equal(s, s_e)


def test_quant_rejects_bad_input():
    x = torch.randn(4, 32, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(MoejitInputError, match="x must have dtype"):
        ops.fp8_quant(x.double())
    with pytest.raises(MoejitInputError, match="round_dtype"):
        ops.silu_mul_fp8_quant(x.float())
    with pytest.raises(MoejitInputError, match="round_dtype"):
        ops.silu_mul_fp8_quant(x, round_dtype=torch.float16)
    with pytest.raises(MoejitInputError, match="contiguous"):
        ops.fp8_quant(torch.randn(32, 4, device="cuda", dtype=torch.bfloat16).t())
    with pytest.raises(MoejitInputError, match="CUDA"):
        ops.fp8_quant(x.cpu())
    with pytest.raises(MoejitInputError, match="one element"):
        ops.fp8_quant(x, torch.ones(2, device="cuda"))
    with pytest.raises(MoejitInputError, match="exclusive"):
        ops.fp8_quant(x, torch.ones(1, device="cuda"), per_token=True)
    with pytest.raises(MoejitInputError, match="even"):
        ops.silu_mul_fp8_quant(torch.randn(4, 30, device="cuda", dtype=torch.bfloat16)[:, :15].contiguous())
    with pytest.raises(MoejitInputError, match="num_rows"):
        ops.fp8_quant(x, num_rows=torch.ones(1, device="cuda"))


@pytest.mark.parametrize("amax", [5.25, 3.5, 4.6875])  # 5.25 = 7 · 3/4 and 3.5 make amax / 448 exact; 4.6875 not
def test_reference_on_cuda_equals_the_kernel_where_quotients_tie(amax, seeded):
    """A bf16 amax whose significand is a multiple of 7 makes ``amax / 448`` exact, and then many quotients ``x / s``
    are exact rounding ties. The kernel divides (IEEE), and so must the reference on every device: torch on CUDA
    multiplies by the rounded reciprocal of a Python scalar, a scale one ulp off that flipped 1.2% of the e4m3 values
    (a 3% layer error against the kernel, seen on an H200)."""
    x = torch.randn(256, 1024, generator=seeded).clamp(-3.4, 3.4).bfloat16()
    x[7, 11] = -amax
    for kwargs in ({}, {"per_token": True}):
        q_cpu, s_cpu = fp8_quant_ref(x, **kwargs)
        q_ref, s_ref = fp8_quant_ref(x.cuda(), **kwargs)
        q_k, s_k = ops.fp8_quant(x.cuda(), **kwargs)
        assert torch.equal(s_ref.cpu(), s_cpu) and torch.equal(s_k.cpu().reshape(s_cpu.shape), s_cpu)
        assert torch.equal(q_ref.cpu().float(), q_cpu.float()) and torch.equal(q_k.cpu().float(), q_cpu.float())


# fp8_permute_quant: (M, K, E, topk) at decode sizes of the three models, one token, repeated and dropped experts,
# the slot limit (1024), a K that is not a multiple of 8 (the scalar path) and thousands of experts; rows split over
# several CTAs with an uneven last slice, vectorized (5 × 4104: 8 slices of 65 vectors, the last 58) and scalar
# (2 × 1028: 3 slices of 343 columns)
PERMUTE_CASES = [(1, 4096, 8, 2), (4, 4096, 8, 2), (64, 4096, 8, 2), (4, 7168, 256, 8), (64, 2048, 256, 8),
                 (128, 2048, 256, 8), (512, 64, 8, 2), (1, 16, 1, 1), (3, 100, 5, 3), (7, 7168, 3000, 6),
                 (5, 4104, 8, 2), (2, 1028, 4, 2)]


def _routing(m, topk, e, gen, dropped=True):
    ids = torch.randint(0, e, (m, topk), generator=gen)
    if dropped and m * topk > 2:
        flat = ids.view(-1)
        flat[torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 10)]] = -1
        flat[0] = e  # out of range too: dropped
    return ids.int().cuda()


@pytest.mark.parametrize("m, k, e, topk", PERMUTE_CASES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("mode", ["static", "token"])
def test_permute_quant_is_quant_then_permute(m, k, e, topk, dtype, mode, seeded):
    """fp8_permute_quant equals fp8_quant followed by moe_permute (and the per-token scale gather) bit for bit:
    the same stable permutation, offsets and inverse as the reference, the reference's bytes and scales."""
    x = _x((m, k), dtype, seeded)
    ids = _routing(m, topk, e, seeded)
    static = (x.float().abs().amax() / 300).reshape(1) if mode == "static" else None
    q, s, offsets, sort_idx, inv_idx = ops.fp8_permute_quant(x, ids, e, static, per_token=(mode == "token"))
    _, off_ref, sort_ref, inv_ref = moe_permute_ref(x, ids, e)
    assert torch.equal(offsets, off_ref) and torch.equal(sort_idx, sort_ref) and torch.equal(inv_idx, inv_ref)
    q_ref, s_ref = fp8_quant_ref(x.cpu(), scale=None if static is None else static.cpu(), per_token=(mode == "token"))
    tokens = sort_ref.long().cpu() // topk
    assert q.shape == (m * topk, k) and q.dtype == torch.float8_e4m3fn
    assert torch.equal(_bytes(q).cpu(), _bytes(q_ref)[tokens])  # every row, dropped slots' included
    if mode == "token":
        assert s.shape == (m * topk, 1) and torch.equal(s.cpu(), s_ref[tokens])
    else:
        assert s.shape == (1,) and torch.equal(s, static)


def test_permute_quant_int64_ids_repeats_and_no_kept_slot(seeded):
    x = _x((5, 256), torch.bfloat16, seeded)
    ids = torch.tensor([[3, 3], [0, 3], [-1, 7], [3, 0], [2, 2]], dtype=torch.int64, device="cuda")
    for t in (ids, ids.int()):
        got = ops.fp8_permute_quant(x, t, 4, per_token=True)
        want = moe_permute_ref(x, t, 4)
        for g, w in zip(got[2:], want[1:]):
            assert torch.equal(g, w)
    none = torch.full((5, 2), -1, dtype=torch.int32, device="cuda")
    q, s, offsets, sort_idx, inv_idx = ops.fp8_permute_quant(x, none, 4, per_token=True)
    assert offsets.tolist() == [0] * 5 and inv_idx.tolist() == [-1] * 10 and sort_idx.tolist() == list(range(10))
    q0, s0, off0, *_ = ops.fp8_permute_quant(x[:0], none[:0], 4, per_token=True)
    assert q0.shape == (0, 256) and s0.shape == (0, 1) and off0.tolist() == [0] * 5


def test_permute_quant_captures_in_cuda_graph(seeded):
    m, k, e, topk = 16, 4096, 8, 2
    x = _x((m, k), torch.bfloat16, seeded)
    ids = _routing(m, topk, e, seeded)
    step = lambda: ops.fp8_permute_quant(x, ids, e, per_token=True)  # noqa: E731
    step()
    graph, captured = capture(step)
    for out in captured:
        out.view(torch.uint8).fill_(0x7f) if out.dtype == torch.float8_e4m3fn else out.fill_(-7)  # poison
    x.copy_(_x((m, k), torch.bfloat16, seeded, scale=7.0))  # new data and new routing
    ids.copy_(_routing(m, topk, e, seeded))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, step()):
        assert torch.equal(got.view(torch.uint8) if got.dtype == torch.float8_e4m3fn else got,
                           want.view(torch.uint8) if want.dtype == torch.float8_e4m3fn else want)


def test_permute_quant_rejects_bad_input():
    x = torch.randn(4, 32, device="cuda", dtype=torch.bfloat16)
    ids = torch.zeros(4, 2, dtype=torch.int32, device="cuda")
    with pytest.raises(MoejitInputError, match="exactly one"):
        ops.fp8_permute_quant(x, ids, 8)  # dynamic per-tensor
    with pytest.raises(MoejitInputError, match="exactly one"):
        ops.fp8_permute_quant(x, ids, 8, torch.ones(1, device="cuda"), per_token=True)
    with pytest.raises(MoejitInputError, match="1024"):
        ops.fp8_permute_quant(torch.randn(513, 32, device="cuda"), torch.zeros(513, 2, dtype=torch.int32,
                                                                               device="cuda"), 8, per_token=True)
    with pytest.raises(MoejitInputError, match="rows"):
        ops.fp8_permute_quant(x, ids[:3], 8, per_token=True)
    with pytest.raises(MoejitInputError, match="topk_ids must have dtype"):
        ops.fp8_permute_quant(x, ids.float(), 8, per_token=True)
    with pytest.raises(MoejitInputError, match="num_experts"):
        ops.fp8_permute_quant(x, ids, 0, per_token=True)
    with pytest.raises(MoejitInputError, match="CUDA"):
        ops.fp8_permute_quant(x.cpu(), ids.cpu(), 8, per_token=True)


def test_permute_quant_split_override(monkeypatch, seeded):
    """MOEJIT_FP8_PERMUTE_SPLITS changes only how a row is spread over CTAs (the bytes are the same); a value that
    is not an integer from 1 to 8 is an error naming the variable, not a silent 1."""
    m, k, e, topk = 4, 7168, 256, 8
    x = _x((m, k), torch.bfloat16, seeded)
    ids = _routing(m, topk, e, seeded)
    want = ops.fp8_permute_quant(x, ids, e, per_token=True)
    for value in ("1", "3", "8"):
        monkeypatch.setenv("MOEJIT_FP8_PERMUTE_SPLITS", value)
        got = ops.fp8_permute_quant(x, ids, e, per_token=True)
        assert torch.equal(_bytes(got[0]), _bytes(want[0]))
        assert all(torch.equal(g, w) for g, w in zip(got[1:], want[1:]))
    for value in ("abc", "0", "9", "2x", "-1"):
        monkeypatch.setenv("MOEJIT_FP8_PERMUTE_SPLITS", value)
        with pytest.raises(RuntimeError, match="MOEJIT_FP8_PERMUTE_SPLITS must be an integer from 1 to 8"):
            ops.fp8_permute_quant(x, ids, e, per_token=True)
