// INT8 grouped GEMMs for SM80+ (sm80_int8 module): the launch parameters and the kernel instantiations that the host
// entry points (int8_grouped_gemm.cu, int8_hybrid_grouped_gemm.cu) dispatch to. Light on purpose: the CUTLASS-heavy
// kernel lives in int8_grouped_gemm_sm80.cuh and is compiled only in the int8_gemm_inst_*.cu translation units.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace moejit {
namespace int8_gemm {

// The K tile of every instantiation (bytes of int8 per row and stage). The hybrid GEMM requires block_size == kTileK,
// so each mainloop step is exactly one quantization block.
constexpr int kTileK = 128;

// Threadblock tiles (M x 64 x 128). kTileM64 serves experts with few rows (decode, many experts); kTileM128 the rest.
enum class TileM : int { kM64 = 64, kM128 = 128 };

// Everything a launch needs. Rows of expert e are a[expert_offsets[e] : expert_offsets[e+1]]; the kernel reads
// expert_offsets (clamped to [0, rows]) and tile_offsets (from launch_tile_schedule) on the device only.
struct GroupedGemmParams {
  const int8_t* a = nullptr;          // [rows, k]
  const int8_t* b = nullptr;          // [num_experts, n, k]
  void* out = nullptr;                // [rows, n] bf16 / fp16
  const int32_t* expert_offsets = nullptr;  // [num_experts + 1]
  const int32_t* tile_offsets = nullptr;    // [num_experts + 1] exclusive prefix of per-expert tiles
  int num_experts = 0;
  int rows = 0;
  int n = 0;
  int k = 0;
  // Per-tensor GEMM scales: a_scale[0] or a_scale[row]; b_scale[e] or b_scale[e * n + col].
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  bool a_scale_per_row = false;
  bool b_scale_per_channel = false;
  // Hybrid GEMM: a_q [rows, num_blocks] int32, a_f [rows, num_groups] float32, b_scale [E, n] (per channel).
  const int32_t* a_q = nullptr;
  const float* a_f = nullptr;
  int num_blocks = 0;   // k / kTileK
  int num_groups = 0;   // ceil(num_blocks / super_group)
  int super_group = 0;  // blocks per (effective) super group
  int max_tiles = 0;    // host upper bound on the number of tiles (limits the grid)
  // Row gather (SM90 kernels only; the host copies the rows for the SM80 ones): with a_rows set, row r of the GEMM
  // is a[min(a_rows[r] / a_rows_div, a_src_rows - 1)] of an [a_src_rows, k] matrix a, while a_q, a_f, a_scale and
  // out stay indexed by r. With moe_permute's sort_idx and topk, GEMM1 reads the token rows and no permuted copy
  // of them is written (the hybrid layer's MOEJIT_INT8_HYBRID_GATHER=1).
  const int32_t* a_rows = nullptr;
  int a_rows_div = 1;
  int a_src_rows = 0;
};

// The output tile columns of the SM80 kernels.
constexpr int kTileN = 64;

// Writes tile_offsets[e] = sum_{e' < e} ceil(m_e' / tile_m) * ceil(n / tile_n) (e in [0, E]) on `stream`.
void launch_tile_schedule(const int32_t* expert_offsets, int32_t* tile_offsets, int num_experts, int rows,
                          int tile_m, int tile_n, int n, cudaStream_t stream);

// The grouped GEMM kernel launch for one tile shape / mode / output type (explicitly instantiated in
// int8_gemm_inst_*.cu). kHybrid selects the Q/F mainloop; kMultiGroup (hybrid only) keeps a float accumulator across
// several super groups (num_groups > 1).
template <int kTileMRows, bool kHybrid, bool kMultiGroup, typename OutT>
void launch_grouped_gemm(const GroupedGemmParams& params, cudaStream_t stream);

// Upper bound of the tiles of a launch, from shapes only: sum_e ceil(m_e / tile_m) <= ceil(rows / tile_m) + min(E, rows).
inline int64_t max_tiles_bound(int64_t rows, int64_t num_experts, int tile_m, int tile_n, int64_t n) {
  const int64_t tiles_n = (n + tile_n - 1) / tile_n;
  const int64_t m_tiles = (rows + tile_m - 1) / tile_m + (rows < num_experts ? rows : num_experts);
  return m_tiles * tiles_n;
}

// Tile choice from shapes only (never device data). On an H200 the 64-row tile (3 CTAs of 4 warps per SM) was as
// fast or faster than the 128-row tile for every Qwen3.6-35B-A3B shape up to 256 rows per expert, and much faster
// for the hybrid GEMM (docs/int8_gemm.md), so the 128-row tile is kept for very large experts only.
inline int choose_tile_m(int64_t rows, int64_t num_experts) {
  return rows <= 1024 * num_experts ? 64 : 128;
}

}  // namespace int8_gemm
}  // namespace moejit
