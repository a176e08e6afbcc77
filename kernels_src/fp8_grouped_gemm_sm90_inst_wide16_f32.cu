// Instantiation of one FP8 grouped-GEMM tile configuration with float32 output (the MoE layer's GEMM1, whose
// output feeds SiLU unrounded); see fp8_grouped_gemm_sm90.cuh.
#include "fp8_grouped_gemm_sm90.cuh"

MOEJIT_FP8_GG_INSTANTIATE(moejit::sm90_fp8::GemmConfig::kWide16, moejit::sm90_fp8::OutType::kF32)
