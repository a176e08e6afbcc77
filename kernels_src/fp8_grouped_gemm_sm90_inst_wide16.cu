// Instantiations of one FP8 grouped-GEMM tile configuration, bf16 and fp16 outputs (fp8_grouped_gemm_sm90.cuh).
#include "fp8_grouped_gemm_sm90.cuh"

MOEJIT_FP8_GG_INSTANTIATE(moejit::sm90_fp8::GemmConfig::kWide16, moejit::sm90_fp8::OutType::kBF16)
MOEJIT_FP8_GG_INSTANTIATE(moejit::sm90_fp8::GemmConfig::kWide16, moejit::sm90_fp8::OutType::kFP16)
