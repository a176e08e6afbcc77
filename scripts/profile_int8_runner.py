#!/usr/bin/env python3
"""Per-kernel device times of the INT8 hybrid runner (``cutlass_moe_int8_hybrid``) on a GPU machine.

For each M and each fused-permute setting, one layer call is profiled (torch.profiler, CUPTI; see
:mod:`moejit.bench.profile`) and its kernels are printed slowest first: what the graph-timed stages of
``moejit bench-int8`` are made of (the routing sort's kernels, the quantizers, the GEMMs, the unpermute).
Default shape: Qwen3.6-35B-A3B (E=256, topk=8, K=2048, N=512), random routing (top-k of Gaussian logits).

Usage: python3 scripts/profile_int8_runner.py [--m 2048 8192] [--experts 256 --topk 8 --k 2048 --n 512]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from moejit.bench.profile import format_breakdown, kernel_breakdown  # noqa: E402
from moejit.moe.int8_hybrid import cutlass_moe_int8_hybrid  # noqa: E402
from moejit.moe.weights import quantize_weights_int8  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--k", type=int, default=2048, help="hidden size")
    ap.add_argument("--n", type=int, default=512, help="intermediate size")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    dev, e, k, n = "cuda", args.experts, args.k, args.n
    gen = torch.Generator(device=dev).manual_seed(0)
    w13_q, w13_s = quantize_weights_int8(torch.randn(e, 2 * n, k, device=dev, generator=gen, dtype=torch.bfloat16))
    w2_q, w2_s = quantize_weights_int8(torch.randn(e, k, n, device=dev, generator=gen, dtype=torch.bfloat16))
    print(f"{torch.cuda.get_device_name()}: E={e} topk={args.topk} K={k} N={n}")
    for m in args.m:
        hidden = torch.randn(m, k, device=dev, generator=gen, dtype=torch.bfloat16)
        logits = torch.randn(m, e, device=dev, generator=gen)
        tw, ids = torch.softmax(logits, dim=1).topk(args.topk, dim=1)
        ids = ids.to(torch.int32)
        for perm in (True, False):
            def call():
                return cutlass_moe_int8_hybrid(hidden, w13_q, w2_q, w13_s, w2_s, tw, ids, fused_permute_quant=perm)
            print(f"\nM={m} fused_permute_quant={perm}")
            print(format_breakdown(kernel_breakdown(call, iters=args.iters)))


if __name__ == "__main__":
    main()
