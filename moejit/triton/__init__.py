"""moejit's Triton kernels: block alignment, the fused MoE GEMM (FP8 and INT8 W8A8), activation quantization,
and the per-GPU config tables with ``moejit tune``. Importing this package imports triton but compiles nothing."""
