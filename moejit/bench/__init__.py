"""Benchmarking: the ``moejit bench`` sweep and the pieces other benchmarks reuse.

- :mod:`moejit.bench.models`   MoE layer shapes by name, TP sharding, Hugging Face config.json parsing
- :mod:`moejit.bench.timing`   CUDA-graph timing (the seed's method), NVTX / cudaProfilerStart-Stop helpers
- :mod:`moejit.bench.roofline` bytes/FLOPs of a MoE layer call, the floor, measured per-device ceilings (cached)
- :mod:`moejit.bench.backends` the Backend interface (available / prepare → callable) and the FP8 backends
- :mod:`moejit.bench.sweep`    plan, data (FP8 weights one expert at a time, routing, calibrated scales), the Sweep
                               (check vs the float32 reference, timing, ok / n/a / error / OOM cells)
- :mod:`moejit.bench.report`   environment, rich tables and summary, JSON/CSV records, the plot
- :mod:`moejit.bench.options`  click options taking several values after one flag (the seed's nargs="+")
- :mod:`moejit.bench.cli`      the ``moejit bench`` command (``run_bench`` drives a sweep end to end)

Importing this package imports no torch; the submodules import it when they run.
"""
