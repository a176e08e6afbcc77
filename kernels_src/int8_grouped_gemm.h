// Host-side helpers shared by the two INT8 grouped GEMM entry points (int8_grouped_gemm.cu,
// int8_hybrid_grouped_gemm.cu).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <tuple>

#include "int8_grouped_gemm_sm80.h"

namespace moejit {

// Checks a [rows, K] int8, b [E, N, K] int8, expert_offsets int32 [E+1] (CUDA, contiguous, same device, 16-byte
// aligned, K % 16 == 0) and the output dtype (bf16 / fp16). Returns (rows, E, N, K).
std::tuple<int64_t, int64_t, int64_t, int64_t> check_int8_grouped_operands(const char* op, const at::Tensor& a,
                                                                            const at::Tensor& b,
                                                                            const at::Tensor& expert_offsets,
                                                                            at::ScalarType out_dtype);

namespace int8_gemm {
// The threadblock tile rows for a launch: choose_tile_m(rows, E) from shapes only, unless the environment variable
// MOEJIT_INT8_GEMM_TILE_M is 64 or 128 (a benchmarking override, read on every call).
int tile_m_for(int64_t rows, int64_t num_experts);
// max_tiles_bound, checked to fit the int32 tile schedule.
int checked_max_tiles(const char* op, int64_t rows, int64_t num_experts, int tile_m, int64_t n);

// What both entry points do before their own fields: pick the tile rows, launch the device-side tile schedule into
// `tile_offsets` (allocated here, on the launch's stream), and fill the operand, size and schedule fields of
// `params` (a [rows, K], b [E, N, K], out [rows, N], expert_offsets [E+1], all checked by the caller).
struct PreparedLaunch {
  GroupedGemmParams params;
  at::Tensor tile_offsets;
  int tile_m;
};
PreparedLaunch prepare_launch(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out,
                              const at::Tensor& expert_offsets, cudaStream_t stream);

// launch_grouped_gemm for the output dtype (bf16 or fp16; checked by check_int8_grouped_operands).
template <int kTileM, bool kHybrid, bool kMultiGroup>
void launch_for_dtype(const GroupedGemmParams& params, at::ScalarType out_dtype, cudaStream_t stream) {
  if (out_dtype == at::kBFloat16) {
    launch_grouped_gemm<kTileM, kHybrid, kMultiGroup, __nv_bfloat16>(params, stream);
  } else {
    launch_grouped_gemm<kTileM, kHybrid, kMultiGroup, __half>(params, stream);
  }
}
}  // namespace int8_gemm

}  // namespace moejit
