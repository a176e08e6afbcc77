// INT8 grouped GEMMs for Hopper (sm_90a, TMA + wgmma): the launches the host entry points dispatch to on sm_90 when
// the module is built for sm_90a (MOEJIT_ARCH_90A). Same GroupedGemmParams as the SM80 kernels; the kernel is in
// int8_grouped_gemm_sm90.cuh, compiled only in the int8_gemm_sm90_inst_*.cu translation units.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "int8_grouped_gemm_sm80.h"

namespace moejit {
namespace int8_gemm {
namespace sm90 {
// Output tile of the SM90 kernels (two consumer warp groups of 64 rows); the K tile is kTileK (one block).
constexpr int kTileM = 128;
constexpr int kTileN = 128;
// Experts the SM90 kernels take (their schedule lives in shared memory); more run the SM80 kernels.
constexpr int kMaxExperts = 1024;
}  // namespace sm90

// params.tile_offsets must come from launch_tile_schedule(..., sm90::kTileM, sm90::kTileN) and params.max_tiles
// from max_tiles_bound with the same tile. kHybrid / kMultiGroup as for launch_grouped_gemm.
template <bool kHybrid, bool kMultiGroup, typename OutT>
void launch_grouped_gemm_sm90(const GroupedGemmParams& params, cudaStream_t stream);
}  // namespace int8_gemm
}  // namespace moejit
