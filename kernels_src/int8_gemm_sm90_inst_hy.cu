// Instantiation: SM90 (TMA + wgmma) INT8 grouped GEMM, hybrid blockwise, one super group (bf16 and fp16 outputs).
#include "int8_grouped_gemm_sm90.cuh"

MOEJIT_INT8_GEMM_SM90_INSTANTIATE(true, false)
