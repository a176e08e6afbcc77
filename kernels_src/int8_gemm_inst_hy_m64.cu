// Instantiation: INT8 grouped GEMM, 64-row tiles, hybrid blockwise, one super group (bf16 and fp16 outputs).
#include "int8_grouped_gemm_sm80.cuh"

MOEJIT_INT8_GEMM_INSTANTIATE(64, true, false)
