#!/usr/bin/env python3
"""Times the whole cutlass_moe_fp8 layer (per-token activations × per-channel weights) on the issue's shapes and
prints µs per call (median of a 10-call CUDA graph, p10–p90) beside the vLLM Triton fused_moe figures from issue 3
(H200), the ratio, and an HBM floor (bytes of expert weights the routed tokens touch, plus activations, over the
copy bandwidth measured on this GPU).

    python scripts/bench_cutlass_fp8.py [--shapes mixtral,qwen,deepseek] [--iters 50] [--json out.json]
    python scripts/bench_cutlass_fp8.py --shapes deepseek --m 512 2048 --gemm-configs swap64,swap96,coop128

``--m`` replaces each shape's batch sizes (vLLM's figure shown where the issue has one). ``--gemm-configs`` also
times GEMM1 (float32 out, as the layer runs it) and GEMM2 (bf16) alone on the routed rows with each listed tile
configuration, and the whole layer with both GEMMs forced to it, so a heuristic change can be judged in one run.
``--variants`` times the layer under each set of environment switches (read when the graph is captured), in
alternating rounds so that drift of the GPU's clock hits every variant alike:

    python scripts/bench_cutlass_fp8.py --variants MOEJIT_FP8_FUSED_PERMUTE_QUANT=0 MOEJIT_FP8_FUSED_PERMUTE_QUANT=1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moejit import ops  # noqa: E402
from moejit.bench.profile import profile_report  # noqa: E402
from moejit.bench.roofline import measure_copy_gbps  # noqa: E402
from moejit.bench.timing import spin_gpu, time_cuda_graph  # noqa: E402
from moejit.reference import moe_fp8_ref, rel_error  # noqa: E402

# name: (E, topk, K, N, {M: vLLM µs on H200})
SHAPES = {
    "mixtral": ("Mixtral-8x7B", 8, 2, 4096, 14336, {4: 360, 64: 480, 256: 634, 2048: 2564}),
    "qwen": ("Qwen3.6-35B-A3B", 256, 8, 2048, 512, {64: 320, 1024: 508, 8192: 1638}),
    "deepseek": ("DeepSeek-V3 TP1", 256, 8, 7168, 2048, {4: 435, 2048: 4248}),
}


def make_weights(e, k, n):
    """Per-channel e4m3 weights built expert by expert (the float copies of DeepSeek-V3's would not fit)."""
    w1_q = torch.empty(e, 2 * n, k, dtype=torch.float8_e4m3fn, device="cuda")
    w2_q = torch.empty(e, k, n, dtype=torch.float8_e4m3fn, device="cuda")
    w1_s = torch.empty(e, 2 * n, device="cuda")
    w2_s = torch.empty(e, k, device="cuda")
    for i in range(e):
        for w, q, s, fan_in in ((torch.randn(2 * n, k, device="cuda"), w1_q, w1_s, k),
                                (torch.randn(k, n, device="cuda"), w2_q, w2_s, n)):
            w /= math.sqrt(fan_in)
            amax = w.abs().amax(dim=1).clamp(min=1e-12)
            s[i] = amax / 448
            q[i] = (w / s[i][:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    return w1_q, w2_q, w1_s, w2_s


def time_gemms(a, topk_ids, weights, iters, config=None):
    """GEMM1 (float32 out, as the layer runs it) and GEMM2 (bf16) alone on the routed rows of ``a``, with the tile
    configuration ``config`` (None: the heuristic's); µs, medians of graph replays."""
    w1_q, w2_q, w1_s, w2_s = weights
    rows, offsets, _, _ = ops.moe_permute(a.to(torch.float8_e4m3fn), topk_ids, w1_q.shape[0])
    a_s = torch.ones(rows.shape[0], device="cuda")
    inter = torch.randn(rows.shape[0], w2_q.shape[2], device="cuda").to(torch.float8_e4m3fn)
    g1 = time_cuda_graph(lambda: ops.cutlass_fp8_grouped_mm(rows, w1_q, offsets, a_s, w1_s, out_dtype=torch.float32,
                                                            config=config), iters=iters).median_us
    g2 = time_cuda_graph(lambda: ops.cutlass_fp8_grouped_mm(inter, w2_q, offsets, a_s, w2_s, out_dtype=torch.bfloat16,
                                                            config=config), iters=iters).median_us
    return g1, g2


def time_configs(configs, a, topk_ids, weights, layer, iters):
    """GEMM1 / GEMM2 alone (time_gemms) and the whole layer with each tile configuration forced (µs, medians);
    prints a line per configuration and returns {config: {gemm1_us, gemm2_us, layer_us}}. The layer is forced by
    replacing moejit.ops.fp8.grouped_mm_config, which cutlass_moe_fp8 looks up on every call."""
    import moejit.ops.fp8 as fp8_ops

    out = {}
    default = fp8_ops.grouped_mm_config
    for cfg in configs:
        g1, g2 = time_gemms(a, topk_ids, weights, iters, cfg)
        fp8_ops.grouped_mm_config = lambda *_args, cfg=cfg: cfg
        try:
            lay = time_cuda_graph(layer, ops_per_graph=10, iters=iters).median_us
        finally:
            fp8_ops.grouped_mm_config = default
        out[cfg] = dict(gemm1_us=g1, gemm2_us=g2, layer_us=lay)
        print(f"    {cfg:>8s}: GEMM1 {g1:8.1f}  GEMM2 {g2:8.1f}  layer {lay:8.1f} µs", flush=True)
    return out


def time_variants(variants, layer, iters, rounds=3):
    """The layer under each environment variant ("A=1,B=2"), ``rounds`` alternating rounds; prints and returns
    {variant: median of the rounds' medians (µs)}."""
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            pairs = [kv.split("=", 1) for kv in variant.split(",") if kv]
            saved = {k_: os.environ.get(k_) for k_, _ in pairs}
            os.environ.update(dict(pairs))
            try:
                times[variant].append(time_cuda_graph(layer, ops_per_graph=10, iters=iters).median_us)
            finally:
                for k_, old in saved.items():
                    if old is None:
                        os.environ.pop(k_, None)
                    else:
                        os.environ[k_] = old
    out = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
    for v, t in times.items():
        print(f"    {v or '(default)':>48s}: {out[v]:8.1f} µs  (rounds: {', '.join(f'{x:.1f}' for x in t)})",
              flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="mixtral,qwen,deepseek")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", default=None)
    parser.add_argument("--check", action="store_true", help="also compare one call with moe_fp8_ref")
    parser.add_argument("--breakdown", action="store_true", help="also time GEMM1 and GEMM2 alone")
    parser.add_argument("--m", type=int, nargs="+", default=None, help="batch sizes (default: the issue's)")
    parser.add_argument("--gemm-configs", default=None,
                        help="comma-separated tile configurations to time GEMM1, GEMM2 and the layer with")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="environment variants (NAME=VALUE[,NAME=VALUE]) to time the layer under, alternating")
    parser.add_argument("--warmup-s", type=float, default=2.0,
                        help="seconds of GPU work before the first timing (clocks up)")
    parser.add_argument("--profile", action="store_true",
                        help="also list every kernel of one call with its device time (torch.profiler)")
    args = parser.parse_args()

    gpu = torch.cuda.get_device_name()
    # 4 GiB device-to-device copy, read + write bytes counted: 4.25 TB/s on an H200 (a 1 GiB graph-timed copy read
    # only 2.7 TB/s there, and a max-reduction 3.5, which made the floor too high)
    bw = measure_copy_gbps(nbytes=4 << 30, iters=10)
    print(f"GPU: {gpu}; torch {torch.__version__}; copy bandwidth {bw:.0f} GB/s (read+write; the HBM floor's)")
    print("cutlass_moe_fp8, per-token activations × per-channel weights, bf16, µs per call "
          "(median of 10-call CUDA graphs; vLLM = Triton fused_moe on H200 from issue 3)")
    header = (f"{'model':18s} {'M':>5s} {'moejit µs':>10s} {'p10-p90':>13s} {'vLLM µs':>8s} {'vLLM/ours':>9s} "
              f"{'HBM floor':>9s} {'ours/floor':>10s} {'GEMM cfg':>8s}")
    print(header)
    print("-" * len(header))
    results = []
    spin_gpu(args.warmup_s)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for key in args.shapes.split(","):
        name, e, topk, k, n, vllm = SHAPES[key]
        weights = make_weights(e, k, n)
        for m in sorted(args.m or vllm):
            a = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
            logits = torch.randn(m, e, device="cuda", generator=gen)
            topk_weights, topk_ids = ops.fused_topk(a, logits, topk, renormalize=True)

            def layer(a=a, topk_weights=topk_weights, topk_ids=topk_ids, weights=weights):
                w1_q, w2_q, w1_s, w2_s = weights
                return ops.cutlass_moe_fp8(a, w1_q, w2_q, topk_weights, topk_ids, w1_s, w2_s,
                                           per_act_token=True, per_out_ch=True)

            if args.check:
                w1_q, w2_q, w1_s, w2_s = weights
                err = rel_error(layer(), moe_fp8_ref(a, w1_q, w2_q, topk_weights, topk_ids, w1_s, w2_s,
                                                      per_act_token=True))
                print(f"  check {name} M={m}: rel err vs moe_fp8_ref {err:.2e}")
            t = time_cuda_graph(layer, ops_per_graph=10, iters=args.iters)
            touched = int(torch.unique(topk_ids).numel())
            bytes_moved = touched * 3 * n * k + m * k * 2 * 2 + m * topk * (2 * n * 2 + k * 2) * 2
            floor_us = bytes_moved / (bw * 1e9) * 1e6
            cfg = ops.grouped_mm_config(m * topk, e, 2 * n, k)
            extra = {}
            if args.breakdown:
                extra["gemm1_us"], extra["gemm2_us"] = time_gemms(a, topk_ids, weights, args.iters)
            row = dict(model=name, m=m, median_us=t.median_us, p10_us=t.p10_us, p90_us=t.p90_us,
                       vllm_us=vllm.get(m), speedup=vllm[m] / t.median_us if m in vllm else None, floor_us=floor_us,
                       experts_touched=touched, config=cfg, gpu=gpu, **extra)
            results.append(row)
            ref = f"{vllm[m]:8d} {vllm[m] / t.median_us:8.2f}x" if m in vllm else f"{'-':>8s} {'-':>9s}"
            print(f"{name:18s} {m:5d} {t.median_us:10.1f} {t.p10_us:6.1f}-{t.p90_us:6.1f} {ref} "
                  f"{floor_us:9.1f} {t.median_us / floor_us:9.2f}x {cfg:>8s}"
                  + "".join(f"  {k_}={v:.1f}" for k_, v in extra.items()), flush=True)
            if args.gemm_configs:
                row["configs"] = time_configs(args.gemm_configs.split(","), a, topk_ids, weights, layer, args.iters)
            if args.variants:
                row["variants"] = time_variants(args.variants, layer, args.iters)
            if args.profile:
                row["kernels"], text = profile_report(layer, t.median_us)
                print(text, flush=True)
        del weights, layer
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(dict(gpu=gpu, copy_bw_gbs=bw, results=results),
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
