"""Benchmarking: CUDA-graph timing, model registry, roofline, the ``moejit bench`` sweep."""
