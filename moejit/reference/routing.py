"""Plain per-token references of the routers in :mod:`moejit.routing` (loops and sorts, float64), written
independently of the vectorized versions so that tests compare two different derivations."""

from __future__ import annotations

import math

import torch


def fused_topk_ref(gating_output: torch.Tensor, topk: int, renormalize: bool):
    """Softmax top-k, one token at a time. Returns ``(weights float32 [M, topk], ids int32 [M, topk])``."""
    g = gating_output.double().cpu()
    weights, ids = [], []
    for row in g:
        p = torch.exp(row - row.max())
        p = p / p.sum()
        order = sorted(range(len(p)), key=lambda i: (-float(p[i]), i))[:topk]
        w = [float(p[i]) for i in order]
        if renormalize:
            s = sum(w)
            w = [x / s for x in w]
        weights.append(w)
        ids.append(order)
    return (torch.tensor(weights, dtype=torch.float32).reshape(len(g), topk),
            torch.tensor(ids, dtype=torch.int32).reshape(len(g), topk))


def grouped_topk_ref(gating_output: torch.Tensor, topk: int, renormalize: bool, num_expert_group: int,
                     topk_group: int, scoring_func: str = "sigmoid", e_score_correction_bias=None,
                     routed_scaling_factor: float = 1.0):
    """DeepSeek-V3 grouped top-k, one token at a time (see :func:`moejit.routing.grouped_topk`)."""
    g = gating_output.double().cpu()
    num_experts = g.shape[1]
    per_group = num_experts // num_expert_group
    bias = None if e_score_correction_bias is None else e_score_correction_bias.double().cpu().reshape(-1)
    weights, ids = [], []
    for row in g:
        if scoring_func == "sigmoid":
            s = [1.0 / (1.0 + math.exp(-float(x))) for x in row]
        else:
            p = torch.exp(row - row.max())
            s = [float(x) for x in p / p.sum()]
        c = [s[i] + (float(bias[i]) if bias is not None else 0.0) for i in range(num_experts)]
        group_score = []
        for grp in range(num_expert_group):
            members = sorted((c[i] for i in range(grp * per_group, (grp + 1) * per_group)), reverse=True)
            group_score.append(members[0] + members[1] if bias is not None else members[0])
        kept = sorted(range(num_expert_group), key=lambda j: (-group_score[j], j))[:topk_group]
        candidates = [i for grp in kept for i in range(grp * per_group, (grp + 1) * per_group)]
        order = sorted(candidates, key=lambda i: (-c[i], i))[:topk]
        w = [s[i] for i in order]
        if renormalize:
            total = sum(w)
            w = [x / total for x in w]
        weights.append([x * routed_scaling_factor for x in w])
        ids.append(order)
    return (torch.tensor(weights, dtype=torch.float32).reshape(len(g), topk),
            torch.tensor(ids, dtype=torch.int32).reshape(len(g), topk))
