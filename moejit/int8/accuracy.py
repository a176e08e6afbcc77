"""Accuracy of INT8 activation schemes in a whole MoE layer, against the unquantized float32 layer.

``python -m moejit.int8.accuracy [--m 256 --k 2048 --n 512 --experts 16 --topk 4 --seeds 3]`` prints a markdown
table (it runs on the CPU with the float32 references, no GPU needed). Every scheme shares the same INT8
per-output-channel weights; only the activation quantization (both GEMM inputs) differs:

- ``hybrid``: the Q/F format (B=128, S=256 → S_eff=65, q_max=16), as ``cutlass_moe_int8_hybrid`` computes it;
- ``per_tensor`` / ``per_token``: one dynamic scale per tensor / per row;
- ``per_block``: plain float32 scale per 1×128 block (no integer Q);
- ``none``: activations unquantized (the weight quantization's share of the error).

Inputs: ``plain`` is N(0, 1) hidden states; ``outliers`` multiplies 1% of the hidden channels (the same channels
for every token, as activation outliers appear in LLMs) by 50.
"""

from __future__ import annotations

import argparse

import torch

from moejit.reference import moe_int8_ref, moe_ref, quantize_weights_int8_ref, rel_error

SCHEMES = ("hybrid", "per_tensor", "per_token", "per_block", "none")


def layer_errors(m: int, k: int, n: int, experts: int, topk: int, seed: int, outliers: bool) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen)
    if outliers:
        a[:, torch.randperm(k, generator=gen)[: max(1, k // 100)]] *= 50
    a = a.bfloat16()
    w13 = (torch.randn(experts, 2 * n, k, generator=gen) / k ** 0.5).bfloat16()
    w2 = (torch.randn(experts, k, n, generator=gen) / n ** 0.5).bfloat16()
    ids = torch.rand(m, experts, generator=gen).topk(topk, dim=1).indices.int()
    tw = torch.softmax(torch.randn(m, topk, generator=gen), dim=1)
    w13_q, w13_s = quantize_weights_int8_ref(w13)
    w2_q, w2_s = quantize_weights_int8_ref(w2)
    ref = moe_ref(a, w13.float(), w2.float(), tw, ids)
    outs = {s: moe_int8_ref(a, w13_q, w2_q, w13_s, w2_s, tw, ids, s) for s in SCHEMES}
    errs = {s: rel_error(o, ref) for s, o in outs.items()}
    # the activation quantization alone: against the layer with the same INT8 weights and float activations
    errs.update({f"act:{s}": rel_error(o, outs["none"]) for s, o in outs.items() if s != "none"})
    return errs


def table(m=256, k=2048, n=512, experts=16, topk=4, seeds=3) -> str:
    lines = [f"Shape M={m}, K={k}, N={n}, E={experts}, topk={topk}; relative Frobenius error vs the float32 layer, "
             f"mean over {seeds} seeds.", "",
             "| inputs | " + " | ".join(SCHEMES) + " | hybrid / per_block |",
             "|---|" + "---:|" * (len(SCHEMES) + 1)]
    verdicts = []
    for outliers in (False, True):
        runs = [layer_errors(m, k, n, experts, topk, seed, outliers) for seed in range(seeds)]
        mean = {s: sum(r[s] for r in runs) / seeds for s in SCHEMES}
        name = "outliers (1% ch ×50)" if outliers else "plain N(0,1)"
        ratio = mean["hybrid"] / mean["per_block"]
        lines.append(f"| {name} | " + " | ".join(f"{mean[s]:.4f}" for s in SCHEMES) + f" | {ratio:.3f} |")
        verdicts.append((name, mean, ratio, runs))
    acts = [s for s in SCHEMES if s != "none"]
    lines += ["", "Activation quantization alone (vs the layer with the same INT8 weights and unquantized "
              "activations):", "", "| inputs | " + " | ".join(acts) + " | hybrid / per_block |",
              "|---|" + "---:|" * (len(acts) + 1)]
    for name, _, _, runs in verdicts:
        mean = {s: sum(r[f"act:{s}"] for r in runs) / seeds for s in acts}
        lines.append(f"| {name} | " + " | ".join(f"{mean[s]:.4f}" for s in acts)
                     + f" | {mean['hybrid'] / mean['per_block']:.3f} |")
    lines.append("")
    for name, mean, ratio, runs in verdicts:
        below_pt = all(r["hybrid"] < r["per_tensor"] for r in runs)
        le_tok = all(r["hybrid"] <= r["per_token"] for r in runs)
        lines.append(f"- {name}: hybrid < per-tensor in every seed: {'met' if below_pt else 'NOT met'}; "
                     f"hybrid ≤ per-token in every seed: {'met' if le_tok else 'NOT met'}; "
                     f"hybrid / per-block = {ratio:.3f}"
                     + ("" if "outliers" in name else f" ({'met' if ratio <= 1.05 else 'NOT met'}: ≤ 1.05)"))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("m", 256), ("k", 2048), ("n", 512), ("experts", 16), ("topk", 4), ("seeds", 3)):
        p.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(table(args.m, args.k, args.n, args.experts, args.topk, args.seeds))


if __name__ == "__main__":
    main()
