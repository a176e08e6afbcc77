#!/usr/bin/env python3
"""Benchmark the INT8 grouped GEMMs (module sm80_int8: SM80 mma.sync, and SM90 TMA + wgmma) on MoE layer shapes.

Default: the Qwen3.6-35B-A3B layer (E=256, topk=8, hidden K=2048, intermediate N=512):
  GEMM1 [M*8, 2048] x [256, 1024, 2048]   GEMM2 [M*8, 512] x [256, 2048, 512]
for M in {64, 512, 2048, 8192}, with realistic random routing (top-k of Gaussian logits). Each GEMM is timed with
moejit.bench.timing.time_cuda_graph (10 calls per graph, median of the replays) as
  per-tensor   int8_grouped_mm, one activation scale and one scale per expert
  per-token    int8_grouped_mm, per-token x per-channel scales
  hybrid       int8_hybrid_grouped_mm, Q/F activations (B=128, effective super group 65, q_max=16)
and the hybrid / per-tensor ratio is printed (target <= 1.15). The weights (256-512 MiB) are far larger than L2,
so every replay streams them from HBM. `--kernel sm80|sm90` forces the kernel family (MOEJIT_INT8_GEMM_KERNEL),
`--tile-m 64|128` the SM80 tile (MOEJIT_INT8_GEMM_TILE_M).

Usage: python3 scripts/bench_int8_gemm.py [--m 64 512 2048 8192] [--json out.json] [--kernel auto|sm80|sm90 ...]
       [--tile-m auto|64|128 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from moejit.bench.timing import time_cuda_graph  # noqa: E402
from moejit.ops import int8 as int8_ops  # noqa: E402


def routed_offsets(m: int, e: int, topk: int, gen: torch.Generator) -> torch.Tensor:
    ids = torch.randn(m, e, generator=gen).topk(topk, dim=1).indices.flatten()
    counts = torch.bincount(ids, minlength=e)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).to(torch.int32)


def measure_ceilings() -> dict:
    """Copy bandwidth (GB/s) and the int8 matmul rate of torch._int_mm (TOPS, 8192^3): the ceilings `moejit bench`
    measures and caches per device (moejit.bench.roofline)."""
    from moejit.bench.roofline import get_ceilings

    c = get_ceilings(("int8",))
    return {"copy_GBps": c.copy_gbps, "int8_mm_TOPS": c.rate("int8")}


def bench_gemm(rows: int, offsets: torch.Tensor, e: int, n: int, k: int, gen: torch.Generator, out_dtype) -> dict:
    """Times the three GEMM variants on fresh random device data (``gen`` is a CUDA generator)."""
    dev = "cuda"
    a = torch.randint(-127, 128, (rows, k), generator=gen, dtype=torch.int8, device=dev)
    b = torch.randint(-127, 128, (e, n, k), generator=gen, dtype=torch.int8, device=dev)
    nb, s, q_max = k // 128, 65, 16
    groups = -(-nb // s)
    a_q = torch.randint(1, q_max + 1, (rows, nb), generator=gen, dtype=torch.int32, device=dev)
    a_f = (0.5 + torch.rand(rows, groups, generator=gen, device=dev)) / (127 * q_max)
    b_chan = (0.5 + torch.rand(e, n, generator=gen, device=dev)) / (127 * k**0.5)
    b_tensor = (0.5 + torch.rand(e, generator=gen, device=dev)) / (127 * k**0.5)
    a_tok = (0.5 + torch.rand(rows, generator=gen, device=dev)) / 127
    a_one = torch.full((1,), 1 / 127, device=dev)
    off = offsets.to(dev)
    fns = {
        "per_tensor": lambda: int8_ops.int8_grouped_mm(a, a_one, b, b_tensor, off, out_dtype),
        "per_token": lambda: int8_ops.int8_grouped_mm(a, a_tok, b, b_chan, off, out_dtype),
        "hybrid": lambda: int8_ops.int8_hybrid_grouped_mm(a, a_q, a_f, b, b_chan, off, 128, s, q_max, out_dtype),
    }
    res = {}
    for name, fn in fns.items():
        t = time_cuda_graph(fn, ops_per_graph=10, warmup=5, iters=30)
        res[name] = t.as_dict()
    experts_hit = int(((offsets[1:] - offsets[:-1]) > 0).sum())
    res["experts_hit"] = experts_hit
    res["weight_bytes"] = experts_hit * n * k
    res["ops"] = 2 * rows * n * k
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, nargs="+", default=[64, 512, 2048, 8192])
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--kernel", nargs="+", default=["auto"], choices=["auto", "sm80", "sm90"])
    p.add_argument("--tile-m", nargs="+", default=["auto"], choices=["auto", "64", "128"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--no-ceilings", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    out_dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)  # routing
    dgen = torch.Generator(device="cuda").manual_seed(1)  # data
    e, topk, hk, ni = args.experts, args.topk, args.hidden, args.intermediate
    gpu = torch.cuda.get_device_name()
    print(f"GPU: {gpu}; E={e} topk={topk} K={hk} N={ni}; out {args.dtype}; µs per call (median of CUDA-graph "
          f"replays, 10 calls per graph)")
    report = {"gpu": gpu, "shape": dict(E=e, topk=topk, hidden=hk, intermediate=ni), "results": []}
    if not args.no_ceilings:
        report["ceilings"] = measure_ceilings()
        print(f"ceilings: copy {report['ceilings']['copy_GBps']:.0f} GB/s, torch._int_mm 8192^3 "
              f"{report['ceilings']['int8_mm_TOPS']:.0f} TOPS")
    header = (f"{'kernel':>9} {'M':>5} {'gemm':>5} {'rows':>6} {'hit':>4} {'per-tensor':>11} {'per-token':>10} "
              f"{'hybrid':>9} {'hyb/pt':>6} {'hyb TOPS':>8} {'hyb GB/s':>8}")
    print(header)
    variants = [(kern, tile) for kern in args.kernel for tile in (["auto"] if kern == "sm90" else args.tile_m)]
    for kern, tile in variants:
        for name, value in (("MOEJIT_INT8_GEMM_KERNEL", kern), ("MOEJIT_INT8_GEMM_TILE_M", tile)):
            if value == "auto":
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        label = kern if tile == "auto" else f"{kern}/{tile}"
        for m in args.m:
            offsets = routed_offsets(m, e, topk, gen)
            rows = m * topk
            for gemm, (n, k) in (("gemm1", (2 * ni, hk)), ("gemm2", (hk, ni))):
                r = bench_gemm(rows, offsets, e, n, k, dgen, out_dtype)
                pt, tok, hy = (r[x]["median_us"] for x in ("per_tensor", "per_token", "hybrid"))
                tops = r["ops"] / (hy * 1e-6) / 1e12
                gbps = (r["weight_bytes"] + rows * k + rows * n * 2) / (hy * 1e-6) / 1e9
                print(f"{label:>9} {m:>5} {gemm:>5} {rows:>6} {r['experts_hit']:>4} {pt:>11.1f} {tok:>10.1f} "
                      f"{hy:>9.1f} {hy / pt:>6.3f} {tops:>8.0f} {gbps:>8.0f}", flush=True)
                report["results"].append(dict(kernel=kern, tile=tile, m=m, gemm=gemm, rows=rows, n=n, k=k, **r))
                torch.cuda.empty_cache()
    os.environ.pop("MOEJIT_INT8_GEMM_TILE_M", None)
    os.environ.pop("MOEJIT_INT8_GEMM_KERNEL", None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
