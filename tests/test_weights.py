"""Expert-weight preparation (moejit.moe.weights): FP8 bit-identical to its reference in every scale layout, ragged
blocks checked block by block, round-trip error within half an e4m3 step, zeros, errors, CPU == CUDA."""

import pytest
import torch

import moejit.ops as ops
from moejit.errors import MoejitInputError
from moejit.reference import FP8_DTYPE, quantize_weights_fp8_ref

E4M3_MANTISSA_BITS = 3
E4M3_MIN_SUBNORMAL = 2.0 ** -9


def random_weights(gen, e=3, n=64, k=256, dtype=torch.bfloat16):
    # experts and channels of very different magnitudes, so a wrong scale group shows
    w = torch.randn(e, n, k, generator=gen)
    w *= torch.logspace(-3, 1, e)[:, None, None] * torch.rand(1, n, 1, generator=gen).add(0.1)
    return w.to(dtype)


LAYOUTS = [(False, None), (True, None), (False, (32, 64)), (True, (128, 128))]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("per_out_ch, block", LAYOUTS)
def test_fp8_bit_identical_to_the_reference(seeded, dtype, per_out_ch, block):
    n, k = (128, 256) if block == (128, 128) else (64, 256)
    w = random_weights(seeded, n=n, k=k, dtype=dtype)
    q, s = ops.quantize_weights_fp8(w, per_out_ch=per_out_ch, block_shape=block)
    q_ref, s_ref = quantize_weights_fp8_ref(w, per_out_ch=per_out_ch, block_shape=block)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
    assert s.shape == s_ref.shape and torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


@pytest.mark.parametrize("per_out_ch, block", LAYOUTS + [(False, (48, 80))])
def test_fp8_round_trip_within_half_a_step(seeded, per_out_ch, block):
    w = random_weights(seeded, n=100, k=240, dtype=torch.float32)  # 100 and 240: ragged for every block shape
    q, s = ops.quantize_weights_fp8(w, per_out_ch=per_out_ch, block_shape=block)
    if block is not None:
        bn, bk = block
        assert s.shape == (3, -(-100 // bn), -(-240 // bk))
        full = s.repeat_interleave(bn, 1).repeat_interleave(bk, 2)[:, :100, :240]
    else:
        assert s.shape == ((3, 100) if per_out_ch else (3,))
        full = s[..., None] if per_out_ch else s[:, None, None]
    err = (q.float() * full - w).abs()
    # e4m3 keeps 3 mantissa bits: a normal value is off by at most 2^-4 of itself, a subnormal one by half the
    # smallest step (2^-10 of the scale); float32 slack for the product q·s
    bound = torch.maximum(w.abs() * 2.0 ** -(E4M3_MANTISSA_BITS + 1), full * E4M3_MIN_SUBNORMAL / 2)
    assert (err <= bound * (1 + 1e-5)).all()
    # every scale group's largest element lands on ±448 (the scale is its amax / 448)
    assert q.float().abs().amax() == 448.0


def test_fp8_ragged_block_scales_are_each_blocks_own(seeded):
    w = random_weights(seeded, e=2, n=100, k=240, dtype=torch.float32)
    bn, bk = 48, 80
    _, s = ops.quantize_weights_fp8(w, block_shape=(bn, bk))
    for e in range(2):
        for i in range(s.shape[1]):
            for j in range(s.shape[2]):
                amax = w[e, i * bn:(i + 1) * bn, j * bk:(j + 1) * bk].abs().amax()
                assert s[e, i, j] == (amax / torch.tensor(448.0)).clamp(min=1e-12)


def test_fp8_zero_expert_and_channel_are_finite_zeros(seeded):
    w = random_weights(seeded, dtype=torch.float32)
    w[0] = 0
    w[1, 5] = 0
    for per_out_ch in (False, True):
        q, s = ops.quantize_weights_fp8(w, per_out_ch=per_out_ch)
        assert torch.isfinite(s).all() and (s > 0).all()
        assert (q[0].float() == 0).all() and (q[1, 5].float() == 0).all()
    q, s = ops.quantize_weights_fp8(w, per_out_ch=True)
    assert s[1, 5] == 1e-12 and (s[0] == torch.tensor(1e-12)).all()


def test_w8a8_matches_its_rule(seeded):
    w = random_weights(seeded, dtype=torch.float32)
    q, s = ops.quantize_weights_int8_w8a8(w)  # per output channel by default
    want_s = (w.abs().amax(dim=-1) / torch.full_like(w[..., 0], 127.0)).clamp(min=1e-12)  # IEEE
    assert torch.equal(s, want_s)
    assert torch.equal(q, torch.round((w / want_s[..., None]).clamp(-127, 127)).to(torch.int8))


@pytest.mark.parametrize("quantize", [ops.quantize_weights_fp8, ops.quantize_weights_int8_w8a8])
@pytest.mark.parametrize("bad, kwargs, needle", [
    (torch.randn(4, 8), {}, "[E, N_out, K]"),
    (torch.randint(-3, 3, (2, 4, 8)), {}, "bf16/fp16/fp32"),
    (torch.randn(2, 0, 8), {}, "non-empty"),
    (torch.randn(2, 4, 8), {"block_shape": (0, 128)}, "positive"),
    (torch.randn(2, 4, 8), {"block_shape": 128}, "pair"),
    ([[1.0]], {}, "torch.Tensor"),
])
def test_bad_input_raises_a_named_error(quantize, bad, kwargs, needle):
    with pytest.raises(MoejitInputError, match=None) as err:
        quantize(bad, **kwargs)
    assert needle in str(err.value)


@pytest.mark.gpu
@pytest.mark.parametrize("per_out_ch, block", LAYOUTS)
def test_fp8_on_cuda_is_bit_identical_to_cpu(seeded, per_out_ch, block):
    w = random_weights(seeded, n=128, k=256)
    q, s = ops.quantize_weights_fp8(w, per_out_ch=per_out_ch, block_shape=block)
    qc, sc = ops.quantize_weights_fp8(w.cuda(), per_out_ch=per_out_ch, block_shape=block)
    assert torch.equal(sc.cpu(), s) and torch.equal(qc.cpu().view(torch.uint8), q.view(torch.uint8))
