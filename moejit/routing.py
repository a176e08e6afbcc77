"""MoE routers: softmax top-k and DeepSeek-style grouped top-k. Torch code (runs on CPU or GPU, captures into CUDA
graphs, traces under torch.compile); both return ``(topk_weights float32 [M, topk], topk_ids int32 [M, topk])``,
the layout every moejit MoE layer takes."""

from __future__ import annotations

import torch

from moejit.errors import MoejitInputError

_LOGIT_TYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_gating(hidden: torch.Tensor, gating_output: torch.Tensor, topk: int) -> int:
    from moejit.ops._validate import check_tensor  # here: moejit.ops re-exports this module

    check_tensor("gating_output", gating_output, dtypes=_LOGIT_TYPES, ndim=2, cuda=False)
    check_tensor("hidden", hidden, ndim=2, cuda=False)
    if hidden.shape[0] != gating_output.shape[0]:
        raise MoejitInputError(f"gating_output has {gating_output.shape[0]} rows but hidden has {hidden.shape[0]}")
    if hidden.device != gating_output.device:
        raise MoejitInputError(f"hidden is on {hidden.device} but gating_output on {gating_output.device}")
    num_experts = gating_output.shape[1]
    if not isinstance(topk, int) or not 1 <= topk <= num_experts:
        raise MoejitInputError(f"topk must be an int in [1, {num_experts}], got {topk!r}")
    return num_experts


def fused_topk(hidden: torch.Tensor, gating_output: torch.Tensor, topk: int,
               renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax router: ``p = softmax(gating_output)`` in float32, the ``topk`` largest per token, divided by their
    sum when ``renormalize``. ``hidden [M, K]`` only fixes M (and the device)."""
    _check_gating(hidden, gating_output, topk)
    scores = torch.softmax(gating_output.float(), dim=-1)
    weights, ids = torch.topk(scores, topk, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def grouped_topk(hidden: torch.Tensor, gating_output: torch.Tensor, topk: int, renormalize: bool,
                 num_expert_group: int, topk_group: int, scoring_func: str = "sigmoid",
                 e_score_correction_bias: torch.Tensor | None = None,
                 routed_scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 grouped router.

    1. ``s = sigmoid(logits)`` (or softmax), float32.
    2. Choice scores ``c = s + e_score_correction_bias`` (bias only steers the choice, never the weights).
    3. The E experts form ``num_expert_group`` equal groups; a group's score is the sum of its two best ``c``
       (with a bias, as DeepSeek-V3) or its best ``c`` (without). Keep the ``topk_group`` best groups.
    4. Pick the ``topk`` best ``c`` among the kept groups' experts; their weights are the unbiased ``s``,
       divided by their sum when ``renormalize``, then multiplied by ``routed_scaling_factor``.
    """
    num_experts = _check_gating(hidden, gating_output, topk)
    if not isinstance(num_expert_group, int) or num_expert_group < 1 or num_experts % num_expert_group:
        raise MoejitInputError(f"num_expert_group must divide the {num_experts} experts, got {num_expert_group!r}")
    per_group = num_experts // num_expert_group
    if not isinstance(topk_group, int) or not 1 <= topk_group <= num_expert_group:
        raise MoejitInputError(f"topk_group must be an int in [1, {num_expert_group}], got {topk_group!r}")
    if topk > topk_group * per_group:
        raise MoejitInputError(f"topk = {topk} exceeds the {topk_group * per_group} experts of {topk_group} groups")
    if scoring_func == "sigmoid":
        scores = torch.sigmoid(gating_output.float())
    elif scoring_func == "softmax":
        scores = torch.softmax(gating_output.float(), dim=-1)
    else:
        raise MoejitInputError(f"scoring_func must be 'sigmoid' or 'softmax', got {scoring_func!r}")
    m = scores.shape[0]
    if e_score_correction_bias is not None:
        from moejit.ops._validate import check_tensor

        check_tensor("e_score_correction_bias", e_score_correction_bias, dtypes=_LOGIT_TYPES, cuda=False)
        if e_score_correction_bias.numel() != num_experts:
            raise MoejitInputError(f"e_score_correction_bias must have E = {num_experts} elements, got shape "
                                   f"{tuple(e_score_correction_bias.shape)}")
        choice = scores + e_score_correction_bias.float().reshape(1, num_experts).to(scores.device)
        if per_group < 2:
            raise MoejitInputError("grouped top-k with a correction bias needs at least 2 experts per group")
        group_scores = choice.view(m, num_expert_group, per_group).topk(2, dim=-1).values.sum(dim=-1)
    else:
        choice = scores
        group_scores = choice.view(m, num_expert_group, per_group).amax(dim=-1)
    group_idx = torch.topk(group_scores, topk_group, dim=-1, sorted=False).indices
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
    expert_mask = group_mask.unsqueeze(-1).expand(m, num_expert_group, per_group).reshape(m, num_experts)
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    ids = torch.topk(masked, topk, dim=-1).indices
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if routed_scaling_factor != 1.0:
        weights = weights * routed_scaling_factor
    return weights, ids.to(torch.int32)
