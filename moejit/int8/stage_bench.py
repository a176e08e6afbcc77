"""Per-stage timing of the INT8 hybrid MoE layer on a GPU — superseded by ``moejit bench-int8``.

``python -m moejit.int8.stage_bench [--model qwen|mixtral] [--m 64,512,2048,8192]`` now runs
``moejit bench-int8 --models <model> --batch-sizes <m...>`` (the hybrid runner's stages timed inside one captured
forward, side by side with the other INT8/FP8 layers; see docs/bench_int8.md). ``--ops`` keeps the old behaviour:
each op timed alone in its own CUDA graph (median µs per call, p10–p90 spread) — permute, the Q/F quantizers (plain /
fused permute / fused SiLU), silu_and_mul, both hybrid GEMMs and the per-tensor INT8 GEMM on the same shapes,
unpermute — and the whole layer in its four fused / unfused combinations.
"""

from __future__ import annotations

import argparse

import torch

MODELS = {"qwen": dict(e=256, topk=8, k=2048, n=512), "mixtral": dict(e=8, topk=2, k=4096, n=14336)}


def run(model: str, ms: list[int]) -> None:
    from moejit import ops
    from moejit.bench.timing import time_cuda_graph
    from moejit.int8.format import effective_super_group

    shape = MODELS[model]
    e, topk, k, n = shape["e"], shape["topk"], shape["k"], shape["n"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    w13_q, w13_s = ops.quantize_weights_int8((torch.randn(e, 2 * n, k, device="cuda", generator=gen) / 40).bfloat16())
    w2_q, w2_s = ops.quantize_weights_int8((torch.randn(e, k, n, device="cuda", generator=gen) / 20).bfloat16())
    s_eff = effective_super_group(128, 256, 16)
    print(f"## {model}: E={e} topk={topk} K={k} N={n} on {torch.cuda.get_device_name()}  (µs, median [p10-p90])")
    for m in ms:
        hidden = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
        ids = torch.rand(m, e, device="cuda", generator=gen).topk(topk, dim=1).indices.int()
        tw = torch.softmax(torch.randn(m, topk, device="cuda", generator=gen), dim=1)
        rows, offsets, sort_idx, inv_idx = ops.moe_permute(hidden, ids, e)
        a1, q1, f1 = ops.int8_hybrid_quant(rows)
        h = ops.int8_hybrid_grouped_mm(a1, q1, f1, w13_q, w13_s, offsets, 128, s_eff, 16, torch.bfloat16)
        a2, q2, f2 = ops.int8_hybrid_silu_quant(h)
        y = ops.int8_hybrid_grouped_mm(a2, q2, f2, w2_q, w2_s, offsets, 128, s_eff, 16, torch.bfloat16)
        one = torch.ones(1, device="cuda")
        stages = {
            "permute": lambda: ops.moe_permute(hidden, ids, e),
            "permute (zero-width)": lambda: ops.moe_permute(hidden.new_empty((m, 0)), ids, e),
            "quant rows": lambda: ops.int8_hybrid_quant(rows),
            "permute+quant (fused)": lambda: ops.int8_hybrid_permute_quant(hidden, sort_idx, topk),
            "GEMM1 hybrid": lambda: ops.int8_hybrid_grouped_mm(a1, q1, f1, w13_q, w13_s, offsets, 128, s_eff, 16,
                                                               torch.bfloat16),
            "GEMM1 per-tensor int8": lambda: ops.int8_grouped_mm(a1, one, w13_q, w13_s, offsets, torch.bfloat16),
            "silu+quant (fused)": lambda: ops.int8_hybrid_silu_quant(h),
            "silu_and_mul": lambda: ops.silu_and_mul(h),
            "GEMM2 hybrid": lambda: ops.int8_hybrid_grouped_mm(a2, q2, f2, w2_q, w2_s, offsets, 128, s_eff, 16,
                                                               torch.bfloat16),
            "GEMM2 per-tensor int8": lambda: ops.int8_grouped_mm(a2, one, w2_q, w2_s, offsets, torch.bfloat16),
            "unpermute": lambda: ops.moe_unpermute(y, tw, inv_idx),
        }
        for silu in (True, False):
            for perm in (False, True):
                stages[f"layer silu_fused={int(silu)} perm_fused={int(perm)}"] = (
                    lambda s=silu, p=perm: ops.cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids,
                                                                       fused_silu_quant=s, fused_permute_quant=p))
        for name, fn in stages.items():
            try:
                t = time_cuda_graph(fn, ops_per_graph=10, warmup=3, iters=20)
                print(f"M={m:5d} {name:34s} {t.median_us:9.1f} [{t.p10_us:.1f}-{t.p90_us:.1f}]")
            except Exception as exc:  # a benchmark reports what failed and goes on
                print(f"M={m:5d} {name:34s} FAILED: {type(exc).__name__}: {str(exc)[:200]}")


MODEL_NAMES = {"qwen": "qwen3.6-35b-a3b", "mixtral": "mixtral-8x7b"}


def bench_int8_args(model: str, ms: list[int]) -> list[str]:
    """The ``moejit bench-int8`` arguments equivalent to ``--model``/``--m``."""
    return ["--models", MODEL_NAMES[model], "--batch-sizes", *[str(m) for m in ms]]


def main(argv=None) -> None:
    """Forward to ``moejit bench-int8`` (or, with ``--ops``, time every op alone as before)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="qwen")
    p.add_argument("--m", default="64,512,2048,8192")
    p.add_argument("--ops", action="store_true", help="time each op alone (the old per-op table)")
    args = p.parse_args(argv)
    ms = [int(v) for v in args.m.split(",")]
    if args.ops:
        run(args.model, ms)
        return
    from moejit.bench.int8.cli import bench_int8

    bench_int8.main(bench_int8_args(args.model, ms), prog_name="moejit bench-int8", standalone_mode=True)


if __name__ == "__main__":
    main()
