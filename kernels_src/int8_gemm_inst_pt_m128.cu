// Instantiation: INT8 grouped GEMM, 128-row tiles, per-tensor / per-token x per-channel (bf16 and fp16 outputs).
#include "int8_grouped_gemm_sm80.cuh"

MOEJIT_INT8_GEMM_INSTANTIATE(128, false, false)
