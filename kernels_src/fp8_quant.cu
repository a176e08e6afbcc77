// FP8 (e4m3) activation quantization, exactly as moejit/reference/fp8.py `fp8_quant_ref` defines it:
//   q = e4m3(clamp(x / s, -448, 448)) (round to nearest even),  real ≈ q · s,
//   static per-tensor: s given; dynamic per-tensor: s = max(amax(x) / 448, 1e-12); per-token: the same per row.
// The gated variant quantizes silu(x[:, :N]) · x[:, N:] rounded to a 16-bit activation dtype (x's own, or the
// given one when x is the float32 GEMM1 output of the MoE layer), fused, recomputing the activation instead of
// storing it. Everything runs on the device (dynamic per-tensor amax is an
// atomicMax reduction), so every op captures into CUDA graphs.
//
// An optional `num_rows` (int32 [1], device) limits the work to the first num_rows rows (the valid rows of a
// permuted MoE buffer); the remaining rows of q (and of per-token scales) are left unwritten.
//
// fp8_permute_quant is the MoE layer's front end for few slots (decode) in one launch: moe_permute's stable
// expert sort (permute.cu) and this file's static or per-token quantization, writing the permuted e4m3 rows.

#include <cooperative_groups.h>
#include <cstdlib>
#include <cub/block/block_radix_sort.cuh>
#include <cuda_fp8.h>

#include "common.h"
#include "ops.h"

namespace moejit {
namespace {

constexpr float kFp8Max = 448.0f;
constexpr float kMinScale = 1e-12f;
constexpr int kThreads = 256;
constexpr int kSplitThreads = 128;  // token_quant_split_kernel's CTA

template <typename T>
struct alignas(8 * sizeof(T)) Vec8 {
  T v[8];
};

// Reads element `c` of row `row` as the float value being quantized. R: the type the gated value is rounded to.
template <typename T, typename R, bool kGated>
struct RowReader {
  const T* row;
  int64_t cols;  // columns of the quantized value (N for the gated variant, whose input has 2N)

  __device__ __forceinline__ float at(int64_t c) const {
    if constexpr (kGated) {
      const float g = static_cast<float>(row[c]);
      const float u = static_cast<float>(row[c + cols]);
      return static_cast<float>(static_cast<R>(g / (1.0f + expf(-g)) * u));
    } else {
      return static_cast<float>(row[c]);
    }
  }

  // Eight consecutive values starting at c (c % 8 == 0; requires rows aligned to 8 elements).
  __device__ __forceinline__ void at8(int64_t c, float (&out)[8]) const {
    const Vec8<T> x = *reinterpret_cast<const Vec8<T>*>(row + c);
    if constexpr (kGated) {
      const Vec8<T> y = *reinterpret_cast<const Vec8<T>*>(row + c + cols);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float g = static_cast<float>(x.v[i]);
        out[i] = static_cast<float>(static_cast<R>(g / (1.0f + expf(-g)) * static_cast<float>(y.v[i])));
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) out[i] = static_cast<float>(x.v[i]);
    }
  }
};

template <typename T, typename R, bool kGated>
__device__ __forceinline__ RowReader<T, R, kGated> reader(const T* x, int64_t r, int64_t cols) {
  return {x + r * (kGated ? 2 * cols : cols), cols};
}

// max that lets NaN win (fmaxf would drop it): a NaN input must give a NaN scale, as the reference's amax does.
__device__ __forceinline__ float max_nan(float m, float v) { return (v > m || isnan(v)) ? v : m; }

// |x| max over this thread's share of one row.
template <typename T, typename R, bool kGated, bool kVec>
__device__ float thread_row_amax(const RowReader<T, R, kGated>& rd) {
  float m = 0.0f;
  if constexpr (kVec) {
    for (int64_t c = threadIdx.x * 8; c < rd.cols; c += blockDim.x * 8) {
      float v[8];
      rd.at8(c, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) m = max_nan(m, fabsf(v[i]));
    }
  } else {
    for (int64_t c = threadIdx.x; c < rd.cols; c += blockDim.x) m = max_nan(m, fabsf(rd.at(c)));
  }
  return m;
}

__device__ float block_max(float v) {
  __shared__ float warp_max[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < blockDim.x / 32 ? warp_max[threadIdx.x] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) warp_max[0] = v;
  }
  __syncthreads();
  const float r = warp_max[0];
  __syncthreads();  // warp_max may be reused by the caller's next reduction
  return r;
}

__device__ __forceinline__ int64_t row_limit(int64_t rows, const int32_t* num_rows) {
  return num_rows ? min(rows, static_cast<int64_t>(max(*num_rows, 0))) : rows;
}

// NaN stays NaN (fmaxf would turn it into the minimum scale).
__device__ __forceinline__ float scale_from_amax(float amax) {
  return isnan(amax) ? amax : fmaxf(amax / kFp8Max, kMinScale);
}

__device__ __forceinline__ __nv_fp8_e4m3 to_fp8(float v, float s) {
  // Division (not a reciprocal multiply) to round exactly like the reference; the clamp maps ±inf/overflow to ±448
  // and leaves NaN alone (it converts to the e4m3 NaN, as the reference's clamp + conversion does).
  const float y = v / s;
  return __nv_fp8_e4m3(isnan(y) ? y : fminf(fmaxf(y, -kFp8Max), kFp8Max));
}

template <typename T, typename R, bool kGated, bool kVec>
__device__ void quantize_row(const RowReader<T, R, kGated>& rd, __nv_fp8_e4m3* q, float s) {
  if constexpr (kVec) {
    for (int64_t c = threadIdx.x * 8; c < rd.cols; c += blockDim.x * 8) {
      float v[8];
      rd.at8(c, v);
      union { __nv_fp8_e4m3 f[8]; uint2 u; } o;  // 8-byte aligned: __nv_fp8_e4m3 alone is 1-byte aligned
#pragma unroll
      for (int i = 0; i < 8; ++i) o.f[i] = to_fp8(v[i], s);
      *reinterpret_cast<uint2*>(q + c) = o.u;
    }
  } else {
    for (int64_t c = threadIdx.x; c < rd.cols; c += blockDim.x) q[c] = to_fp8(rd.at(c), s);
  }
}

// Dynamic per-tensor, pass 1: amax over the (valid) rows, as float bits in *amax_bits (zeroed before; |x| >= 0 so
// the unsigned order of the bits is the float order).
template <typename T, typename R, bool kGated, bool kVec>
__global__ void tensor_amax_kernel(const T* __restrict__ x, int64_t rows, int64_t cols,
                                   const int32_t* __restrict__ num_rows, unsigned int* __restrict__ amax_bits) {
  const int64_t limit = row_limit(rows, num_rows);
  float m = 0.0f;
  for (int64_t r = blockIdx.x; r < limit; r += gridDim.x) m = max_nan(m, thread_row_amax<T, R, kGated, kVec>(reader<T, R, kGated>(x, r, cols)));
  m = block_max(m);
  // |x| >= 0, and a NaN's bits (0x7fc00000 and up) exceed every finite or infinite value's: NaN wins, as it should
  if (threadIdx.x == 0 && (m > 0.0f || isnan(m))) atomicMax(amax_bits, __float_as_uint(fabsf(m)));
}

// Per-tensor quantization with a static scale (amax_bits == nullptr) or the scale from pass 1 (also written to
// scale_out[0] by block 0).
template <typename T, typename R, bool kGated, bool kVec>
__global__ void tensor_quant_kernel(const T* __restrict__ x, __nv_fp8_e4m3* __restrict__ q, int64_t rows,
                                    int64_t cols, const int32_t* __restrict__ num_rows,
                                    const float* __restrict__ static_scale,
                                    const unsigned int* __restrict__ amax_bits, float* __restrict__ scale_out) {
  const float s = amax_bits ? scale_from_amax(__uint_as_float(*amax_bits)) : *static_scale;
  if (amax_bits && blockIdx.x == 0 && threadIdx.x == 0) *scale_out = s;
  const int64_t limit = row_limit(rows, num_rows);
  for (int64_t r = blockIdx.x; r < limit; r += gridDim.x) {
    quantize_row<T, R, kGated, kVec>(reader<T, R, kGated>(x, r, cols), q + r * cols, s);
  }
}

// Dynamic per-token: one block per row (grid-stride), amax then quantize (the second read hits L1/L2).
template <typename T, typename R, bool kGated, bool kVec>
__global__ void token_quant_kernel(const T* __restrict__ x, __nv_fp8_e4m3* __restrict__ q, int64_t rows,
                                   int64_t cols, const int32_t* __restrict__ num_rows, float* __restrict__ scales) {
  const int64_t limit = row_limit(rows, num_rows);
  for (int64_t r = blockIdx.x; r < limit; r += gridDim.x) {
    const auto rd = reader<T, R, kGated>(x, r, cols);
    const float s = scale_from_amax(block_max(thread_row_amax<T, R, kGated, kVec>(rd)));
    if (threadIdx.x == 0) scales[r] = s;
    quantize_row<T, R, kGated, kVec>(rd, q + r * cols, s);
  }
}

// A thread's register slice of a row: vectors i < kMaxVec of 8 values at columns col(i) (those below cols).
// load_slice reads them (applying SiLU·mul when gated) and returns their |x| maximum; store_slice writes them
// quantized with the row's scale. Shared by the row-cached and the cluster-split per-token kernels below.
template <int kMaxVec, typename Reader, typename Col>
__device__ __forceinline__ float load_slice(const Reader& rd, int64_t cols, Col col, float (&v)[kMaxVec][8]) {
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxVec; ++i) {
    const int64_t c = col(i);
    if (c < cols) {
      rd.at8(c, v[i]);
#pragma unroll
      for (int j = 0; j < 8; ++j) m = max_nan(m, fabsf(v[i][j]));
    }
  }
  return m;
}

template <int kMaxVec, typename Col>
__device__ __forceinline__ void store_slice(__nv_fp8_e4m3* qr, int64_t cols, Col col, const float (&v)[kMaxVec][8],
                                            float s) {
#pragma unroll
  for (int i = 0; i < kMaxVec; ++i) {
    const int64_t c = col(i);
    if (c < cols) {
      union { __nv_fp8_e4m3 f[8]; uint2 u; } o;
#pragma unroll
      for (int j = 0; j < 8; ++j) o.f[j] = to_fp8(v[i][j], s);
      *reinterpret_cast<uint2*>(qr + c) = o.u;
    }
  }
}

// Dynamic per-token with the row kept in registers: a group of kTpr threads (a warp's lanes, or the whole block)
// owns a row; each thread holds up to kMaxVec vectors of 8 values, so the row is read once and SiLU computed once.
// The kernel above reads each row twice, and once the rows in flight outgrow L2 (Mixtral's 114 KB float32 GEMM1
// rows) the second read goes to HBM as well. Needs cols % 8 == 0, 8-element-aligned rows and
// cols <= kTpr * kMaxVec * 8.
template <typename T, typename R, bool kGated, int kTpr, int kMaxVec>
__global__ void __launch_bounds__(kThreads) token_quant_cached_kernel(const T* __restrict__ x,
                                                                      __nv_fp8_e4m3* __restrict__ q, int64_t rows,
                                                                      int64_t cols,
                                                                      const int32_t* __restrict__ num_rows,
                                                                      float* __restrict__ scales) {
  static_assert(kTpr == kThreads || (kTpr <= 32 && 32 % kTpr == 0), "a row's threads: a warp's part or the block");
  constexpr int kRowsPerBlock = kThreads / kTpr;
  const int lane = static_cast<int>(threadIdx.x) % kTpr;
  const int64_t limit = row_limit(rows, num_rows);
  // kTpr == kThreads: every thread runs the same rows (block_max synchronizes); else each group its own rows,
  // with no block-wide synchronization
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kTpr; r < limit;
       r += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const auto col = [lane](int i) { return (static_cast<int64_t>(i) * kTpr + lane) * 8; };
    float v[kMaxVec][8];
    float m = load_slice<kMaxVec>(reader<T, R, kGated>(x, r, cols), cols, col, v);
    if constexpr (kTpr == kThreads) {
      m = block_max(m);
    } else {
#pragma unroll
      for (int o = kTpr / 2; o > 0; o >>= 1) m = max_nan(m, __shfl_xor_sync(0xffffffffu, m, o, kTpr));
    }
    const float s = scale_from_amax(m);
    if (lane == 0) scales[r] = s;
    store_slice<kMaxVec>(q + r * cols, cols, col, v, s);
  }
}

// Dynamic per-token for few rows (decode), the row split over a thread-block cluster of C CTAs (C = 2, 4 or 8, the
// launch's cluster dimension). With a row per block (or eight per block for a warp a row) a decode step of 8 to 32
// rows runs on 4 to 32 of the GPU's 132 multiprocessors. Here each CTA of a row's cluster keeps its slice in
// registers, kMaxVec vectors of 8 a thread (vector i of CTA `rank`: columns ((i · C + rank) · kSplitThreads + t) · 8,
// so a warp's loads are contiguous); each warp's |x| max goes to its CTA's shared memory, every warp reads all C ×
// kSplitThreads / 32 partial maxima through distributed shared memory, and so every thread of the cluster computes
// the same scale (the maximum is order-independent; NaN wins as everywhere) and quantizes its slice. The same
// reader, max_nan, scale_from_amax and to_fp8 as the kernels above: the bytes and scales are theirs. Needs cols % 8
// == 0, 8-element-aligned rows and cols <= C · kSplitThreads · kMaxVec · 8; the grid is rows · C CTAs (no grid
// stride), and a cluster whose row is past num_rows leaves as a whole (its CTAs share the row, so none waits).
template <typename T, typename R, bool kGated, int kMaxVec>
__global__ void __launch_bounds__(kSplitThreads) token_quant_split_kernel(const T* __restrict__ x,
                                                                          __nv_fp8_e4m3* __restrict__ q,
                                                                          int64_t rows, int64_t cols,
                                                                          const int32_t* __restrict__ num_rows,
                                                                          float* __restrict__ scales) {
  namespace cg = cooperative_groups;
  constexpr int kWarps = kSplitThreads / 32;
  __shared__ float warp_max[kWarps];
  const cg::cluster_group cluster = cg::this_cluster();
  const int csize = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t r = blockIdx.x / csize;
  if (r >= row_limit(rows, num_rows)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const auto col = [csize, rank](int i) {
    return ((static_cast<int64_t>(i) * csize + rank) * kSplitThreads + threadIdx.x) * 8;
  };
  float v[kMaxVec][8];
  float m = load_slice<kMaxVec>(reader<T, R, kGated>(x, r, cols), cols, col, v);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = max_nan(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) warp_max[threadIdx.x >> 5] = m;
  cluster.sync();  // every CTA has started and written its partial maxima
  m = 0.0f;
  for (int j = lane; j < csize * kWarps; j += 32) {
    m = max_nan(m, *cluster.map_shared_rank(&warp_max[j % kWarps], j / kWarps));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = max_nan(m, __shfl_xor_sync(0xffffffffu, m, o));
  cluster.barrier_arrive();  // this CTA is done with the others' shared memory
  const float s = scale_from_amax(m);
  if (rank == 0 && threadIdx.x == 0) scales[r] = s;
  store_slice<kMaxVec>(q + r * cols, cols, col, v, s);
  cluster.barrier_wait();  // no CTA leaves (freeing its shared memory) while another may still read it
}

int grid_for(int64_t rows) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, static_cast<int64_t>(sm_count()) * 8)));
}

// The split kernel's cluster size for `rows` rows (the tensor's, an upper bound on num_rows) of `cols` columns, or 0
// for the row-cached kernels: the largest C of 8, 4, 2 with the CTA's slice in registers (kMaxVec <= 8) and
//  - few rows: rows · C CTAs fit in one CTA per multiprocessor, at least 32 vectors (256 columns) each. That is
//    where the row-cached kernels leave most multiprocessors idle; Mixtral's 8 decode rows of 14336 get C = 8 (64
//    CTAs), DeepSeek-V3's 32 of 2048 C = 4 (128 CTAs);
//  - or, for rows wider than 2048, up to 4 CTAs per multiprocessor (2 when C = 2), each with a vector for at least
//    7/8 of its threads: Mixtral's 128 intermediate rows of 14336 (M=64) get C = 4.
// Measured on an H200 (docs/cutlass_fp8.md, run 7): the second case took 64 × 14336 from 10.1 to 6.1 µs and
// 128 × 7168 from 6.5 to 5.8; wider caps were slower at 128-256 rows, and at 2048 columns or fewer the block-a-row
// kernel is as fast.
int split_cluster_size(int64_t rows, int64_t cols) {
  const int64_t sms = sm_count();
  for (const int c : {8, 4, 2}) {
    if (ceil_div(cols, 8 * c) > kSplitThreads * 8) continue;  // the slice must fit in registers
    if (rows * c <= sms && cols >= 256 * c) return c;
    if (cols > 2048 && cols >= 896 * c && rows * c <= (c == 2 ? 2 : 4) * sms) return c;
  }
  return 0;
}

template <typename T, typename R, bool kGated>
bool launch_token_quant_split(const T* x, __nv_fp8_e4m3* q, int64_t rows, int64_t cols, const int32_t* num_rows,
                              float* scales, cudaStream_t stream) {
  const int cluster = split_cluster_size(rows, cols);
  if (cluster == 0) return false;
  const int64_t vecs_per_cta = ceil_div(cols, 8 * cluster);
  auto go = [&](auto kernel) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(cluster);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(rows * cluster));
    config.blockDim = dim3(kSplitThreads);
    config.dynamicSmemBytes = 0;
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, x, q, rows, cols, num_rows, scales));
    return true;
  };
  if (vecs_per_cta <= kSplitThreads * 1) return go(token_quant_split_kernel<T, R, kGated, 1>);
  if (vecs_per_cta <= kSplitThreads * 2) return go(token_quant_split_kernel<T, R, kGated, 2>);
  if (vecs_per_cta <= kSplitThreads * 4) return go(token_quant_split_kernel<T, R, kGated, 4>);
  return go(token_quant_split_kernel<T, R, kGated, 8>);
}

// The row-split kernel for few rows, else the row-cached one for rows that fit in registers (false: the caller
// launches the two-pass one).
template <typename T, typename R, bool kGated, bool kVec>
bool launch_token_quant_cached(const T* x, __nv_fp8_e4m3* q, int64_t rows, int64_t cols, const int32_t* num_rows,
                               float* scales, cudaStream_t stream) {
  if constexpr (!kVec) {
    return false;
  } else {
    if (launch_token_quant_split<T, R, kGated>(x, q, rows, cols, num_rows, scales, stream)) return true;
    auto go = [&](auto kernel, int rows_per_block) {
      const int grid = grid_for(ceil_div(rows, static_cast<int64_t>(rows_per_block)));
      kernel<<<grid, kThreads, 0, stream>>>(x, q, rows, cols, num_rows, scales);
      return true;
    };
    // a warp per row up to 512 columns (Qwen3.6's 512, DeepSeek-V3 TP8's 256), else the block (up to 2048
    // columns one vector a thread: a warp a row there gave 8 rows a CTA, too few CTAs below ~2000 rows, and
    // 116.6 µs against 94.9 for DeepSeek-V3's 16384 rows of 2048 on an H200)
    if (cols <= 32 * 2 * 8) return go(token_quant_cached_kernel<T, R, kGated, 32, 2>, kThreads / 32);
    if (cols <= kThreads * 1 * 8) return go(token_quant_cached_kernel<T, R, kGated, kThreads, 1>, 1);
    if (cols <= kThreads * 4 * 8) return go(token_quant_cached_kernel<T, R, kGated, kThreads, 4>, 1);
    if (cols <= kThreads * 8 * 8) return go(token_quant_cached_kernel<T, R, kGated, kThreads, 8>, 1);
    return false;
  }
}

// ---- fp8_permute_quant: the expert sort and the quantization of the permuted rows in one launch.
//
// With n = M · topk <= kPermuteMaxSlots the sort is one block's work, so every CTA sorts all n slots itself in
// shared memory (a stable block radix sort of the keys: the expert, E for a dropped slot, E + 1 past n) and no
// CTA waits for another. Block 0 writes the permutation (moe_permute's contract, and its counting sort's stable
// order); then the CTAs take (token, column slice) items in turn, each writing its slice of the token's row
// quantized to the token's topk sorted positions (per token: with the row's scale as token_quant_kernel computes
// it, every slice's CTA reducing the whole row; static: the given one). With few tokens a row is split into up to
// 8 slices, so the topk copies are written by 8 times the CTAs. Per-token scales are written per permuted row, as GEMM1 reads them. At decode this is one launch
// where the unfused front end takes seven (quantize, the sort's three kernels, the row copy, the scale gather's
// two), each a few µs of a step that streams the experts' weights for ~250 µs.
constexpr int kPermuteItems = 4;
constexpr int kPermuteMaxSlots = kThreads * kPermuteItems;

// The sort key of slot i: its expert, or E for a dropped slot (an id outside [0, E)), as permute.cu's slot_key.
template <typename IdT>
__device__ __forceinline__ int32_t permute_key(const IdT* __restrict__ topk_ids, int64_t i, int32_t num_experts) {
  const int64_t e = static_cast<int64_t>(topk_ids[i]);
  return (e >= 0 && e < num_experts) ? static_cast<int32_t>(e) : num_experts;
}

template <typename T, typename IdT, bool kVec, bool kPerToken>
__global__ void __launch_bounds__(kThreads) permute_quant_kernel(
    const T* __restrict__ x, const IdT* __restrict__ topk_ids, int64_t m, int32_t topk, int32_t num_experts,
    int32_t key_bits, int64_t cols, int32_t col_splits, const float* __restrict__ static_scale,
    __nv_fp8_e4m3* __restrict__ q, float* __restrict__ scales, int32_t* __restrict__ offsets,
    int32_t* __restrict__ sort_idx, int32_t* __restrict__ inv_idx) {
  using Sort = cub::BlockRadixSort<int32_t, kThreads, kPermuteItems, int32_t>;
  __shared__ typename Sort::TempStorage sort_storage;
  __shared__ int32_t sorted_key[kPermuteMaxSlots];
  __shared__ int32_t position[kPermuteMaxSlots];  // position[i]: the sorted position of slot i
  const int32_t n = static_cast<int32_t>(m) * topk;
  int32_t keys[kPermuteItems], slots[kPermuteItems];
#pragma unroll
  for (int j = 0; j < kPermuteItems; ++j) {
    const int32_t i = static_cast<int32_t>(threadIdx.x) * kPermuteItems + j;
    keys[j] = i < n ? permute_key(topk_ids, i, num_experts) : num_experts + 1;
    slots[j] = i;
  }
  Sort(sort_storage).Sort(keys, slots, 0, key_bits);  // stable: equal keys keep slot order
#pragma unroll
  for (int j = 0; j < kPermuteItems; ++j) {
    const int32_t p = static_cast<int32_t>(threadIdx.x) * kPermuteItems + j;  // blocked: thread t holds t·items + j
    sorted_key[p] = keys[j];
    position[slots[j]] = p;
    if (blockIdx.x == 0 && p < n) sort_idx[p] = slots[j];
  }
  __syncthreads();
  if (blockIdx.x == 0) {
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
      inv_idx[i] = sorted_key[position[i]] < num_experts ? position[i] : -1;
    }
    // offsets[e] = the first sorted position whose key is >= e: position p starts buckets (key[p-1], key[p]]
    for (int32_t p = threadIdx.x; p < n; p += blockDim.x) {
      for (int32_t e = p == 0 ? 0 : sorted_key[p - 1] + 1; e <= sorted_key[p]; ++e) offsets[e] = p;
    }
    for (int32_t e = sorted_key[n - 1] + 1 + static_cast<int32_t>(threadIdx.x); e <= num_experts; e += blockDim.x) {
      offsets[e] = n;
    }
  }
  // work item w: token w / col_splits, its column slice w % col_splits (whole 8-vectors when kVec)
  const int64_t unit = kVec ? 8 : 1;
  const int64_t slice = ((cols + unit - 1) / unit + col_splits - 1) / col_splits * unit;
  for (int64_t w = blockIdx.x; w < m * col_splits; w += gridDim.x) {
    const int64_t t = w / col_splits;
    const int64_t c_begin = (w % col_splits) * slice;
    const int64_t c_end = min(cols, c_begin + slice);
    const auto rd = reader<T, T, false>(x, t, cols);
    float s;
    if constexpr (kPerToken) {
      // every slice's CTA reduces the whole row (L2 hits after the first): the same scale everywhere
      s = scale_from_amax(block_max(thread_row_amax<T, T, false, kVec>(rd)));
      if (c_begin == 0) {
        for (int32_t j = threadIdx.x; j < topk; j += blockDim.x) scales[position[t * topk + j]] = s;
      }
    } else {
      s = *static_scale;
    }
    const int32_t* dst = position + t * topk;
    if constexpr (kVec) {
      for (int64_t c = c_begin + threadIdx.x * 8; c < c_end; c += blockDim.x * 8) {
        float v[8];
        rd.at8(c, v);
        union { __nv_fp8_e4m3 f[8]; uint2 u; } o;
#pragma unroll
        for (int i = 0; i < 8; ++i) o.f[i] = to_fp8(v[i], s);
        for (int32_t j = 0; j < topk; ++j) *reinterpret_cast<uint2*>(q + dst[j] * cols + c) = o.u;
      }
    } else {
      for (int64_t c = c_begin + threadIdx.x; c < c_end; c += blockDim.x) {
        const __nv_fp8_e4m3 o = to_fp8(rd.at(c), s);
        for (int32_t j = 0; j < topk; ++j) q[dst[j] * cols + c] = o;
      }
    }
  }
}

// Calls fn(T*, R*) for the input type T (bf16, fp16, fp32) and the rounding type R of the gated value (bf16 or
// fp16: the input's own when it is 16-bit, else `round_dtype`).
template <typename Fn>
void dispatch_quant_types(at::ScalarType in, at::ScalarType round, const char* op, Fn&& fn) {
  const bool bf16_round = round == at::kBFloat16;
  switch (in) {
    case at::kBFloat16: fn(static_cast<__nv_bfloat16*>(nullptr), static_cast<__nv_bfloat16*>(nullptr)); break;
    case at::kHalf: fn(static_cast<__half*>(nullptr), static_cast<__half*>(nullptr)); break;
    case at::kFloat:
      if (bf16_round) fn(static_cast<float*>(nullptr), static_cast<__nv_bfloat16*>(nullptr));
      else fn(static_cast<float*>(nullptr), static_cast<__half*>(nullptr));
      break;
    default: TORCH_CHECK(false, "moejit: ", op, ": x must be bfloat16, float16 or float32, got ", in);
  }
}

template <bool kGated>
std::tuple<at::Tensor, at::Tensor> quantize_impl(const at::Tensor& x, const std::optional<at::Tensor>& scale,
                                                 bool per_token, const std::optional<at::Tensor>& num_rows,
                                                 std::optional<at::ScalarType> round_dtype, const char* op) {
  MOEJIT_CHECK_CUDA(x);
  MOEJIT_CHECK(x.dim() == 2, op, ": x must be 2-D, got ", x.sizes());
  MOEJIT_CHECK_CONTIGUOUS(x);
  const int64_t rows = x.size(0);
  MOEJIT_CHECK(!kGated || x.size(1) % 2 == 0, op, ": x's last dimension must be even (gate ‖ up)");
  const int64_t cols = kGated ? x.size(1) / 2 : x.size(1);
  const bool is_static = scale.has_value();
  MOEJIT_CHECK(!(is_static && per_token), op, ": a static scale and per_token are exclusive");
  if (is_static) {
    MOEJIT_CHECK_CUDA(*scale);
    MOEJIT_CHECK_DTYPE(*scale, at::kFloat);
    MOEJIT_CHECK(scale->numel() == 1, op, ": a static scale must have one element");
  }
  const int32_t* nr = nullptr;
  if (num_rows.has_value()) {
    MOEJIT_CHECK_CUDA(*num_rows);
    MOEJIT_CHECK_DTYPE(*num_rows, at::kInt);
    MOEJIT_CHECK(num_rows->numel() >= 1, op, ": num_rows must have one element");
    nr = num_rows->data_ptr<int32_t>();
  }

  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = current_stream();
  at::Tensor q = at::empty({rows, cols}, x.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor s_out = per_token ? at::empty({rows, 1}, x.options().dtype(at::kFloat))
                               : (is_static ? scale->reshape({1}).clone() : at::empty({1}, x.options().dtype(at::kFloat)));
  // no columns: dynamic scales of an empty scope are the minimum scale (per token: every row's)
  if (!is_static && (rows == 0 || cols == 0)) s_out.fill_(kMinScale);
  if (rows == 0 || cols == 0) return {q, s_out};

  const int grid = grid_for(rows);
  // The gated value is rounded to a 16-bit type (x's own, or round_dtype for float32 x); plain quantization never
  // rounds, so its R is a placeholder.
  at::ScalarType round = at::kBFloat16;
  if constexpr (kGated) {
    round = round_dtype.value_or(x.scalar_type());
    MOEJIT_CHECK(round == at::kBFloat16 || round == at::kHalf, op,
                 ": float32 x needs round_dtype bfloat16 or float16 (the activation dtype)");
    MOEJIT_CHECK(x.scalar_type() == at::kFloat || round == x.scalar_type(), op,
                 ": round_dtype applies to float32 input only");
  }
  dispatch_quant_types(x.scalar_type(), round, op, [&](auto* tag, auto* round_tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using R = std::remove_pointer_t<decltype(round_tag)>;
    const T* xp = reinterpret_cast<const T*>(x.data_ptr());
    auto* qp = reinterpret_cast<__nv_fp8_e4m3*>(q.data_ptr());
    const bool vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(xp) % (8 * sizeof(T)) == 0;
    auto launch = [&](auto vec_tag) {
      constexpr bool kVec = decltype(vec_tag)::value;
      if (per_token) {
        float* sp = s_out.data_ptr<float>();
        if (!launch_token_quant_cached<T, R, kGated, kVec>(xp, qp, rows, cols, nr, sp, stream)) {
          token_quant_kernel<T, R, kGated, kVec><<<grid, kThreads, 0, stream>>>(xp, qp, rows, cols, nr, sp);
        }
        MOEJIT_CUDA_LAUNCH_CHECK();
      } else if (is_static) {
        tensor_quant_kernel<T, R, kGated, kVec><<<grid, kThreads, 0, stream>>>(
            xp, qp, rows, cols, nr, scale->data_ptr<float>(), nullptr, nullptr);
        MOEJIT_CUDA_LAUNCH_CHECK();
      } else {
        at::Tensor amax = at::zeros({1}, x.options().dtype(at::kInt));
        auto* bits = reinterpret_cast<unsigned int*>(amax.data_ptr<int32_t>());
        tensor_amax_kernel<T, R, kGated, kVec><<<grid, kThreads, 0, stream>>>(xp, rows, cols, nr, bits);
        MOEJIT_CUDA_LAUNCH_CHECK();
        tensor_quant_kernel<T, R, kGated, kVec><<<grid, kThreads, 0, stream>>>(xp, qp, rows, cols, nr, nullptr, bits,
                                                                           s_out.data_ptr<float>());
        MOEJIT_CUDA_LAUNCH_CHECK();
      }
    };
    if (vec) launch(std::true_type{});
    else launch(std::false_type{});
  });
  return {q, s_out};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fp8_quant(const at::Tensor& x, const std::optional<at::Tensor>& scale,
                                             bool per_token, const std::optional<at::Tensor>& num_rows) {
  return quantize_impl<false>(x, scale, per_token, num_rows, std::nullopt, "fp8_quant");
}

std::tuple<at::Tensor, at::Tensor> silu_mul_fp8_quant(const at::Tensor& x,
                                                      const std::optional<at::Tensor>& scale, bool per_token,
                                                      const std::optional<at::Tensor>& num_rows,
                                                      std::optional<at::ScalarType> round_dtype) {
  return quantize_impl<true>(x, scale, per_token, num_rows, round_dtype, "silu_mul_fp8_quant");
}


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fp8_permute_quant(
    const at::Tensor& hidden, const at::Tensor& topk_ids, int64_t num_experts, const std::optional<at::Tensor>& scale,
    bool per_token) {
  constexpr const char* op = "fp8_permute_quant";
  MOEJIT_CHECK_CUDA(hidden);
  MOEJIT_CHECK_CUDA(topk_ids);
  MOEJIT_CHECK(hidden.dim() == 2, op, ": hidden must be 2-D [M, K], got ", hidden.sizes());
  MOEJIT_CHECK(topk_ids.dim() == 2, op, ": topk_ids must be 2-D [M, topk], got ", topk_ids.sizes());
  MOEJIT_CHECK(topk_ids.size(0) == hidden.size(0), op, ": topk_ids has ", topk_ids.size(0), " rows but hidden has ",
               hidden.size(0));
  MOEJIT_CHECK(topk_ids.scalar_type() == at::kInt || topk_ids.scalar_type() == at::kLong, op,
               ": topk_ids must be int32 or int64, got ", topk_ids.scalar_type());
  MOEJIT_CHECK_CONTIGUOUS(hidden);
  MOEJIT_CHECK_CONTIGUOUS(topk_ids);
  MOEJIT_CHECK(num_experts > 0 && num_experts < (int64_t{1} << 30), op, ": bad num_experts ", num_experts);
  MOEJIT_CHECK(scale.has_value() != per_token, op, ": needs a static scale or per_token (exactly one; dynamic "
               "per-tensor scales need the whole input's maximum first)");
  if (scale.has_value()) {
    MOEJIT_CHECK_CUDA(*scale);
    MOEJIT_CHECK_DTYPE(*scale, at::kFloat);
    MOEJIT_CHECK(scale->numel() == 1, op, ": a static scale must have one element");
  }
  const int64_t m = hidden.size(0), cols = hidden.size(1), topk = topk_ids.size(1);
  const int64_t n = m * topk;
  MOEJIT_CHECK(n <= kPermuteMaxSlots, op, ": M * topk = ", n, " slots, more than the ", kPermuteMaxSlots,
               " one block sorts (use moe_permute and fp8_quant)");

  const c10::cuda::CUDAGuard guard(hidden.device());
  cudaStream_t stream = current_stream();
  auto i32 = hidden.options().dtype(at::kInt);
  at::Tensor q = at::empty({n, cols}, hidden.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor s_out = per_token ? at::empty({n, 1}, hidden.options().dtype(at::kFloat)) : scale->reshape({1}).clone();
  at::Tensor offsets = at::empty({num_experts + 1}, i32);
  at::Tensor sort_idx = at::empty({n}, i32);
  at::Tensor inv_idx = at::empty({n}, i32);
  if (n == 0) {
    offsets.zero_();
    return {q, s_out, offsets, sort_idx, inv_idx};
  }
  // keys go up to E + 1 (the padding past n)
  int32_t key_bits = 1;
  while ((int64_t{1} << key_bits) <= num_experts + 1) ++key_bits;
  // Few tokens (decode) leave most multiprocessors idle with a CTA a token, and the writes (topk copies of each row)
  // are the bulk of the work: split each row's columns over up to 8 CTAs, at least 64 vectors of 8 each.
  // MOEJIT_FP8_PERMUTE_SPLITS=1 keeps a CTA a token (a benchmarking override, read on every call).
  const int64_t sms = sm_count();
  int64_t max_splits = 8;
  if (const char* env = std::getenv("MOEJIT_FP8_PERMUTE_SPLITS"); env && *env) {
    char* end = nullptr;
    const long long value = std::strtoll(env, &end, 10);
    MOEJIT_CHECK(end != env && *end == '\0' && value >= 1 && value <= 8, op,
                 ": MOEJIT_FP8_PERMUTE_SPLITS must be an integer from 1 to 8, got '", env, "'");
    max_splits = value;
  }
  const int32_t col_splits = static_cast<int32_t>(
      std::max<int64_t>(1, std::min<int64_t>({max_splits, sms / m, ceil_div(cols, 8 * 64)})));
  const int grid = static_cast<int>(std::min<int64_t>(m * col_splits, sms));
  const auto e = static_cast<int32_t>(num_experts);
  const auto t = static_cast<int32_t>(topk);
  dispatch_quant_types(hidden.scalar_type(), at::kBFloat16, op, [&](auto* tag, auto*) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = reinterpret_cast<const T*>(hidden.data_ptr());
    const bool vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(xp) % (8 * sizeof(T)) == 0;
    auto launch = [&](auto ids, auto vec_tag, auto token_tag) {
      using IdT = std::remove_const_t<std::remove_pointer_t<decltype(ids)>>;
      permute_quant_kernel<T, IdT, decltype(vec_tag)::value, decltype(token_tag)::value>
          <<<grid, kThreads, 0, stream>>>(xp, ids, m, t, e, key_bits, cols, col_splits,
                                          per_token ? nullptr : s_out.data_ptr<float>(),
                                          reinterpret_cast<__nv_fp8_e4m3*>(q.data_ptr()),
                                          per_token ? s_out.data_ptr<float>() : nullptr, offsets.data_ptr<int32_t>(),
                                          sort_idx.data_ptr<int32_t>(), inv_idx.data_ptr<int32_t>());
      MOEJIT_CUDA_LAUNCH_CHECK();
    };
    auto with_token = [&](auto ids, auto vec_tag) {
      if (per_token) launch(ids, vec_tag, std::true_type{});
      else launch(ids, vec_tag, std::false_type{});
    };
    auto with_vec = [&](auto ids) {
      if (vec) with_token(ids, std::true_type{});
      else with_token(ids, std::false_type{});
    };
    if (topk_ids.scalar_type() == at::kInt) with_vec(topk_ids.data_ptr<int32_t>());
    else with_vec(topk_ids.data_ptr<int64_t>());
  });
  return {q, s_out, offsets, sort_idx, inv_idx};
}

}  // namespace moejit
