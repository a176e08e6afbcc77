"""The references themselves, against naive loops (CPU)."""

import torch

from moejit.reference import (fp8_dequant_ref, fp8_quant_ref, moe_permute_ref, moe_ref, moe_unpermute_ref,
                              rel_error)


def test_permute_ref_against_loop(seeded):
    m, topk, e, k = 20, 3, 5, 4
    ids = torch.randint(-1, e + 1, (m, topk), generator=seeded)
    hidden = torch.randn(m, k, generator=seeded)
    rows, offsets, sort_idx, inv_idx = moe_permute_ref(hidden, ids, e)
    order = [(ids[i // topk, i % topk].item() if 0 <= ids[i // topk, i % topk] < e else e, i)
             for i in range(m * topk)]
    order.sort()  # stable by (expert, flat index)
    assert sort_idx.tolist() == [i for _, i in order]
    for ex in range(e + 1):
        assert offsets[ex] == sum(1 for key, _ in order if key < ex)
    for p, (key, i) in enumerate(order):
        assert inv_idx[i] == (p if key < e else -1)
        assert torch.equal(rows[p], hidden[i // topk])


def test_moe_ref_against_loop(seeded):
    m, k, n, e, topk = 6, 16, 8, 4, 2
    a = torch.randn(m, k, generator=seeded)
    w1 = torch.randn(e, 2 * n, k, generator=seeded)
    w2 = torch.randn(e, k, n, generator=seeded)
    ids = torch.stack([torch.randperm(e, generator=seeded)[:topk] for _ in range(m)])
    w = torch.rand(m, topk, generator=seeded)
    out = moe_ref(a, w1, w2, w, ids)
    for i in range(m):
        acc = torch.zeros(k)
        for j in range(topk):
            h = w1[ids[i, j]] @ a[i]
            acc += w[i, j] * (w2[ids[i, j]] @ (torch.nn.functional.silu(h[:n]) * h[n:]))
        torch.testing.assert_close(out[i], acc, rtol=1e-4, atol=1e-4)
    _, _, _, inv = moe_permute_ref(a, ids, e)
    rows = torch.randn(m * topk, k, generator=seeded)
    expect = torch.stack([sum(w[i, j] * rows[inv[i * topk + j]] for j in range(topk)) for i in range(m)])
    torch.testing.assert_close(moe_unpermute_ref(rows, w, inv), expect)


def test_fp8_quant_ref_modes(seeded):
    x = torch.randn(16, 256, generator=seeded) * 5
    x[3] = 0  # an all-zero row stays finite
    for kwargs in ({}, {"per_token": True}, {"group_size": 128}, {"scale": torch.tensor(0.05)}):
        q, s = fp8_quant_ref(x, **kwargs)
        assert q.dtype == torch.float8_e4m3fn and torch.isfinite(s).all()
        back = fp8_dequant_ref(q, s, kwargs.get("group_size"))
        assert torch.isfinite(back).all()
        if "scale" not in kwargs:
            assert rel_error(back, x) < 0.05  # e4m3 keeps 3 mantissa bits: ~2-3% rms error
    q, s = fp8_quant_ref(torch.zeros(4, 8))
    assert torch.isfinite(s).all() and (q.float() == 0).all()


def test_moe_fp8_ref_every_slot_dropped(seeded):
    """Every topk id out of range (all slots dropped, e.g. under expert parallelism): the per-token intermediate
    has zero rows and the output is zero, for every activation mode (first seen failing on an H200 run)."""
    from moejit.reference import moe_fp8_ref, quantize_weights_fp8_ref

    m, k, n, e, topk = 5, 32, 16, 4, 1
    a = torch.randn(m, k, generator=seeded)
    w1_q, s1 = quantize_weights_fp8_ref(torch.randn(e, 2 * n, k, generator=seeded), per_out_ch=True)
    w2_q, s2 = quantize_weights_fp8_ref(torch.randn(e, k, n, generator=seeded), per_out_ch=True)
    ids = torch.full((m, topk), -1, dtype=torch.int32)
    w = torch.rand(m, topk, generator=seeded)
    for per_token in (False, True):
        out = moe_fp8_ref(a, w1_q, w2_q, w, ids, s1, s2, per_act_token=per_token)
        assert out.shape == (m, k) and (out == 0).all()


def test_stepped_amax_scale_and_the_references_at_a_neighbouring_amax(seeded):
    """``inter_amax_steps``: the intermediate's dynamic per-tensor scale from its amax moved by whole bf16 values.
    0 is the plain reference; ±1 is the scale of the neighbouring bf16 amax (what a kernel computes when its amax
    rounds one value away) and moves the output, a little; per-token and static modes ignore it."""
    from moejit.reference import moe_fp8_ref, moe_int8_w8a8_ref, quantize_weights_fp8_ref
    from moejit.reference.core import stepped_amax_scale

    x = (torch.randn(64, 32, generator=seeded) * 3).bfloat16().float()
    amax = x.abs().amax().bfloat16()
    up = (amax.reshape(1).view(torch.int16) + 1).view(torch.bfloat16).float()
    assert torch.equal(stepped_amax_scale(x, 0, torch.bfloat16, 448.0, 1e-12), (amax.float() / 448.0).reshape(1))
    assert torch.equal(stepped_amax_scale(x, 1, torch.bfloat16, 448.0, 1e-12), up / 448.0)
    assert stepped_amax_scale(x, -1, torch.bfloat16, 448.0, 1e-12) < amax.float() / 448.0
    assert stepped_amax_scale(torch.zeros(3, 4), -1, torch.bfloat16, 448.0, 1e-12) == 1e-12  # finite at zero

    m, k, n, e, topk = 24, 64, 32, 4, 2
    a = torch.randn(m, k, generator=seeded).bfloat16()
    w1_q, s1 = quantize_weights_fp8_ref(torch.randn(e, 2 * n, k, generator=seeded) / 8, per_out_ch=True)
    w2_q, s2 = quantize_weights_fp8_ref(torch.randn(e, k, n, generator=seeded) / 6, per_out_ch=True)
    ids = torch.stack([torch.randperm(e, generator=seeded)[:topk] for _ in range(m)]).int()
    w = torch.rand(m, topk, generator=seeded)
    for ref in (moe_fp8_ref, moe_int8_w8a8_ref):
        plain = ref(a, w1_q, w2_q, w, ids, s1, s2)
        assert torch.equal(ref(a, w1_q, w2_q, w, ids, s1, s2, inter_amax_steps=0), plain)
        moved = [ref(a, w1_q, w2_q, w, ids, s1, s2, inter_amax_steps=s) for s in (-1, 1)]
        assert all(not torch.equal(mv, plain) for mv in moved) and all(rel_error(mv, plain) < 0.05 for mv in moved)
        for kw in ({"per_act_token": True}, {"a2_scale": torch.tensor([0.01])}):
            assert torch.equal(ref(a, w1_q, w2_q, w, ids, s1, s2, inter_amax_steps=1, **kw),
                               ref(a, w1_q, w2_q, w, ids, s1, s2, **kw))
