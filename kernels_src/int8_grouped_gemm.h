// Host-side helpers shared by the two INT8 grouped GEMM entry points (int8_grouped_gemm.cu,
// int8_hybrid_grouped_gemm.cu).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <tuple>

#include "int8_grouped_gemm_sm80.h"
#include "int8_grouped_gemm_sm90.h"

namespace moejit {

// Checks a [rows, K] int8, b [E, N, K] int8, expert_offsets int32 [E+1] (CUDA, contiguous, same device, 16-byte
// aligned, K % 16 == 0) and the output dtype (bf16 / fp16). Returns (rows, E, N, K).
std::tuple<int64_t, int64_t, int64_t, int64_t> check_int8_grouped_operands(const char* op, const at::Tensor& a,
                                                                            const at::Tensor& b,
                                                                            const at::Tensor& expert_offsets,
                                                                            at::ScalarType out_dtype);

namespace int8_gemm {
// Which kernel family runs a launch: the SM80 mma.sync kernels (every arch) or the SM90 TMA + wgmma kernels (only in
// the module's sm_90a build).
enum class Kernel : int { kSm80 = 0, kSm90 = 1 };

// The kernel for a launch in an sm_90a build, from shapes only: the 128 x 128 wgmma tiles from 32 rows per expert
// on; below, the SM80 kernels' 64-row tiles (more CTAs per SM, less padding) were faster on an H200
// (docs/int8_gemm.md). The SM90 kernels take at most sm90::kMaxExperts experts.
inline Kernel choose_kernel(int64_t rows, int64_t num_experts) {
  return rows >= 32 * num_experts && num_experts <= sm90::kMaxExperts ? Kernel::kSm90 : Kernel::kSm80;
}

// kernel_for: Kernel::kSm80 unless the module is built for sm_90a; there choose_kernel(rows, E), unless the
// environment variable MOEJIT_INT8_GEMM_KERNEL is sm80 or sm90 (a benchmarking and testing override, read on
// every call; sm90 with more than sm90::kMaxExperts experts is an error naming `op`).
Kernel kernel_for(const char* op, int64_t rows, int64_t num_experts);
// The SM80 threadblock tile rows for a launch: choose_tile_m(rows, E) from shapes only, unless the environment
// variable MOEJIT_INT8_GEMM_TILE_M is 64 or 128 (a benchmarking override, read on every call).
int tile_m_for(int64_t rows, int64_t num_experts);
// max_tiles_bound, checked to fit the int32 tile schedule.
int checked_max_tiles(const char* op, int64_t rows, int64_t num_experts, int tile_m, int tile_n, int64_t n);

// A row gather of the GEMM's A operand: row r is a[min(rows[r] / div, a.size(0) - 1)] (int32 rows [R], div >= 1,
// checked by the caller).
struct RowGather {
  const at::Tensor& rows;
  int64_t div;
};

// What both entry points do before their own fields: pick the kernel and its tile, launch the device-side tile
// schedule into `tile_offsets` (allocated here, on the launch's stream), and fill the operand, size and schedule
// fields of `params` (a [rows, K], b [E, N, K], out [rows, N], expert_offsets [E+1], all checked by the caller).
// With `gather`, the GEMM has gather->rows.size(0) rows read through it: the SM90 kernels gather in their producer,
// for the SM80 ones the rows are copied here first (into `gathered`, on the stream).
struct PreparedLaunch {
  GroupedGemmParams params;
  at::Tensor tile_offsets;
  at::Tensor gathered;
  Kernel kernel;
  int tile_m;
};
PreparedLaunch prepare_launch(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out,
                              const at::Tensor& expert_offsets, cudaStream_t stream,
                              const RowGather* gather = nullptr);

// The launch for the prepared kernel / tile and the output dtype (bf16 or fp16; checked by
// check_int8_grouped_operands).
template <bool kHybrid, bool kMultiGroup, typename OutT>
void launch_prepared(const PreparedLaunch& launch, cudaStream_t stream) {
#if defined(MOEJIT_ARCH_90A)
  if (launch.kernel == Kernel::kSm90) return launch_grouped_gemm_sm90<kHybrid, kMultiGroup, OutT>(launch.params, stream);
#endif
  if (launch.tile_m == 64) {
    launch_grouped_gemm<64, kHybrid, kMultiGroup, OutT>(launch.params, stream);
  } else {
    launch_grouped_gemm<128, kHybrid, kMultiGroup, OutT>(launch.params, stream);
  }
}
template <bool kHybrid, bool kMultiGroup>
void launch_for_dtype(const PreparedLaunch& launch, at::ScalarType out_dtype, cudaStream_t stream) {
  if (out_dtype == at::kBFloat16) {
    launch_prepared<kHybrid, kMultiGroup, __nv_bfloat16>(launch, stream);
  } else {
    launch_prepared<kHybrid, kMultiGroup, __half>(launch, stream);
  }
}
}  // namespace int8_gemm

}  // namespace moejit
