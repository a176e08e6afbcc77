#!/usr/bin/env python3
"""GEMM1 of the INT8 hybrid runner on copied rows against the same GEMM gathering its rows (``a_rows``), and the
``moe_permute`` the gather saves (int8 rows / zero-width), on a GPU machine. Qwen3.6-35B-A3B shape (E=256, topk 8,
K=2048, N=512), routed rows; µs per call from CUDA graphs, best of three rounds; also checks that the two GEMM1
outputs are bit-identical.

Usage: python3 scripts/bench_int8_gather.py [M ...]      (default 512 2048 8192)
Results: docs/int8_gemm.md ("Fifteenth session").
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from moejit import ops  # noqa: E402
from moejit.bench.timing import time_cuda_graph  # noqa: E402
from moejit.int8.format import effective_super_group  # noqa: E402


def main(argv: list[str]) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    e, topk, k, n = 256, 8, 2048, 512
    gen = torch.Generator(device="cuda").manual_seed(0)
    w13_q, w13_s = ops.quantize_weights_int8((torch.randn(e, 2 * n, k, device="cuda", generator=gen) / 40).bfloat16())
    s_eff = effective_super_group(128, 256, 16)
    print(torch.cuda.get_device_name())
    for m in [int(x) for x in argv] or [512, 2048, 8192]:
        hidden = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
        ids = torch.randn(m, e, device="cuda", generator=gen).topk(topk, dim=1).indices.int()
        xq, q, f = ops.int8_hybrid_quant(hidden)
        rows, off, sort_idx, _ = ops.moe_permute(xq, ids, e)
        qp, fp = ops.int8_hybrid_permute_scales(q, f, sort_idx, topk)

        def copied():
            return ops.int8_hybrid_grouped_mm(rows, qp, fp, w13_q, w13_s, off, 128, s_eff, 16, torch.bfloat16)

        def gathered():
            return ops.int8_hybrid_grouped_mm(xq, qp, fp, w13_q, w13_s, off, 128, s_eff, 16, torch.bfloat16,
                                              a_rows=sort_idx, a_rows_div=topk)

        valid = int(off[-1])
        same = torch.equal(copied()[:valid], gathered()[:valid])
        runs: dict[str, list[float]] = {}
        for _ in range(3):
            for name, fn in (("GEMM1 copied rows", copied), ("GEMM1 gathered", gathered),
                             ("moe_permute int8", lambda: ops.moe_permute(xq, ids, e)),
                             ("moe_permute zero-width", lambda: ops.moe_permute(hidden.new_empty((m, 0)), ids, e))):
                runs.setdefault(name, []).append(time_cuda_graph(fn, ops_per_graph=10, warmup=3, iters=20).median_us)
        print(f"M={m} bit-identical={same} " + "  ".join(f"{name}: {min(v):.1f}" for name, v in runs.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
