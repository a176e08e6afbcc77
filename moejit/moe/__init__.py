"""Whole MoE layers built from moejit's kernels (CUTLASS FP8, Triton FP8, INT8 hybrid). Public entry points are
re-exported by :mod:`moejit.ops`."""
