// Instantiation: SM90 (TMA + wgmma) INT8 grouped GEMM, per-tensor / per-token x per-channel (bf16 and fp16 outputs).
#include "int8_grouped_gemm_sm90.cuh"

MOEJIT_INT8_GEMM_SM90_INSTANTIATE(false, false)
