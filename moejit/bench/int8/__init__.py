"""``moejit bench-int8``: the INT8 seed's benchmark (seed 003), rebuilt on the ``moejit bench`` machinery.

- :mod:`moejit.bench.int8.backends` the layers it compares (CUTLASS INT8 hybrid Q/F, CUTLASS INT8 per-tensor,
                                    Triton INT8 per-token × per-channel and 128×128 blocks, the FP8 layers) as
                                    :class:`~moejit.bench.backends.Backend` objects, and the option/shape plan
- :mod:`moejit.bench.int8.layers`   GPU pipelines only the benchmark needs: the CUTLASS per-tensor INT8 layer, the
                                    hybrid runner split into stages, per-stage timing inside one CUDA graph
- :mod:`moejit.bench.int8.sweep`    :class:`~moejit.bench.sweep.Sweep` with INT8 data hooks (weights in every
                                    layout from one set of float weights, the float32 layer as reference) and the
                                    per-stage breakdown of the hybrid runner per batch size
- :mod:`moejit.bench.int8.report`   the side-by-side table, summary and stage table; JSON/CSV via
                                    :mod:`moejit.bench.report`
- :mod:`moejit.bench.int8.cli`      the click command

Importing this package imports no torch.
"""
