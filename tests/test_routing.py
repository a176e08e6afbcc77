"""Routers (moejit.routing, torch code) against the per-token loop references, on the CPU (and the GPU if present)."""

import pytest
import torch

from moejit import ops
from moejit.errors import MoejitInputError
from moejit.reference import fused_topk_ref, grouped_topk_ref

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _logits(m, e, gen, dtype=torch.float32):
    # Distinct values (ties would make the order of equal scores implementation-defined).
    return (torch.randn(m, e, generator=gen, dtype=torch.float64) * 2).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m, e, topk", [(1, 8, 2), (33, 8, 1), (64, 256, 8), (5, 60, 6)])
@pytest.mark.parametrize("renormalize", [False, True])
def test_fused_topk(device, m, e, topk, renormalize, seeded):
    logits = _logits(m, e, seeded)
    hidden = torch.empty(m, 16, device=device)
    w, ids = ops.fused_topk(hidden, logits.to(device), topk, renormalize)
    w_ref, ids_ref = fused_topk_ref(logits, topk, renormalize)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32 and w.shape == ids.shape == (m, topk)
    assert torch.equal(ids.cpu(), ids_ref)
    # float32 softmax vs float64: a few ulps.
    torch.testing.assert_close(w.cpu(), w_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m, e, groups, topk_group, topk", [(7, 256, 8, 4, 8), (1, 64, 8, 3, 6), (40, 16, 4, 1, 2)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("renormalize", [False, True])
def test_grouped_topk(device, m, e, groups, topk_group, topk, with_bias, renormalize, seeded):
    logits = _logits(m, e, seeded)
    bias = (torch.randn(e, generator=seeded) * 0.5) if with_bias else None
    hidden = torch.empty(m, 16, device=device)
    kwargs = dict(num_expert_group=groups, topk_group=topk_group, scoring_func="sigmoid",
                  e_score_correction_bias=None if bias is None else bias.to(device), routed_scaling_factor=2.5)
    w, ids = ops.grouped_topk(hidden, logits.to(device), topk, renormalize, **kwargs)
    w_ref, ids_ref = grouped_topk_ref(logits, topk, renormalize, **kwargs | {"e_score_correction_bias": bias})
    assert w.shape == ids.shape == (m, topk) and w.dtype == torch.float32 and ids.dtype == torch.int32
    # Same experts (the order among chosen experts is by choice score in both).
    assert torch.equal(ids.cpu(), ids_ref)
    torch.testing.assert_close(w.cpu(), w_ref, rtol=1e-5, atol=1e-6)
    # Every chosen expert lies in one of at most topk_group groups.
    per_group = e // groups
    assert int((ids.cpu() // per_group).unique(dim=None).numel()) <= groups
    for row in ids.cpu():
        assert len(set((row // per_group).tolist())) <= topk_group


def test_grouped_topk_softmax_matches_reference(seeded):
    logits = _logits(9, 32, seeded)
    w, ids = ops.grouped_topk(torch.empty(9, 4), logits, 4, True, 4, 2, scoring_func="softmax")
    w_ref, ids_ref = grouped_topk_ref(logits, 4, True, 4, 2, scoring_func="softmax")
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)


def test_bias_steers_choice_but_not_weights(seeded):
    logits = _logits(4, 16, seeded)
    bias = torch.zeros(16)
    bias[3] = 100.0  # expert 3 always chosen, its weight still sigmoid(logit)
    w, ids = ops.grouped_topk(torch.empty(4, 8), logits, 2, False, 4, 2, e_score_correction_bias=bias)
    assert (ids == 3).any(dim=1).all()
    pos = (ids == 3).int().argmax(dim=1)
    torch.testing.assert_close(w[torch.arange(4), pos], torch.sigmoid(logits[:, 3]))


def test_routing_rejects_bad_arguments():
    h = torch.empty(4, 8)
    with pytest.raises(MoejitInputError, match="topk"):
        ops.fused_topk(h, torch.randn(4, 8), 9, False)
    with pytest.raises(MoejitInputError, match="rows"):
        ops.fused_topk(h, torch.randn(5, 8), 2, False)
    with pytest.raises(MoejitInputError, match="gating_output must have dtype"):
        ops.fused_topk(h, torch.zeros(4, 8, dtype=torch.int32), 2, False)
    with pytest.raises(MoejitInputError, match="num_expert_group"):
        ops.grouped_topk(h, torch.randn(4, 12), 2, False, 5, 2)
    with pytest.raises(MoejitInputError, match="topk_group"):
        ops.grouped_topk(h, torch.randn(4, 16), 2, False, 4, 5)
    with pytest.raises(MoejitInputError, match="exceeds"):
        ops.grouped_topk(h, torch.randn(4, 16), 9, False, 4, 2)
    with pytest.raises(MoejitInputError, match="e_score_correction_bias"):
        ops.grouped_topk(h, torch.randn(4, 16), 2, False, 4, 2, e_score_correction_bias=torch.zeros(15))
    with pytest.raises(MoejitInputError, match="scoring_func"):
        ops.grouped_topk(h, torch.randn(4, 16), 2, False, 4, 2, scoring_func="relu")


def test_routing_traces_under_torch_compile(seeded):
    logits = _logits(16, 64, seeded)
    h = torch.empty(16, 8)
    # backend="eager": checks that dynamo traces it whole (fullgraph) without paying for inductor's C++ compile.
    fn = torch.compile(lambda h, g: ops.grouped_topk(h, g, 6, True, 8, 3, routed_scaling_factor=2.0),
                       fullgraph=True, backend="eager")
    w, ids = fn(h, logits)
    w_e, ids_e = ops.grouped_topk(h, logits, 6, True, 8, 3, routed_scaling_factor=2.0)
    assert torch.equal(ids, ids_e)
    torch.testing.assert_close(w, w_e)
