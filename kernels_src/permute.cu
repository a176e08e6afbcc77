// MoE token routing: expert-sorted permutation (a stable counting sort up to 4095 experts; CUB's radix sort past
// that or with MOEJIT_PERMUTE_SORT=cub), row expansion, weighted unpermute, and the per-expert problem sizes that
// grouped GEMMs read.
// Everything stays on the device; nothing syncs with the host.
//
// Conventions (flat index i = m * topk + j):
//   sort_idx[p]       flat index of the (token, slot) pair at sorted position p (stable: ties keep token order)
//   inv_idx[i]        sorted position of flat index i, or -1 when topk_ids[i] is outside [0, E) (a dropped slot)
//   expert_offsets[e] first sorted position of expert e; expert_offsets[E] = number of valid (kept) slots
//   rows[p]           hidden[sort_idx[p] / topk]

#include <cub/cub.cuh>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "common.h"
#include "ops.h"

namespace moejit {
namespace {

// The sort key of slot i: its expert, or E for a dropped slot (an id outside [0, E)), which sorts last.
template <typename IdT>
__device__ __forceinline__ int32_t slot_key(const IdT* __restrict__ topk_ids, int64_t i, int32_t num_experts) {
  const int64_t e = static_cast<int64_t>(topk_ids[i]);
  return (e >= 0 && e < num_experts) ? static_cast<int32_t>(e) : num_experts;
}

template <typename IdT>
__global__ void make_sort_keys_kernel(const IdT* __restrict__ topk_ids, int32_t* __restrict__ keys,
                                      int32_t* __restrict__ values, int64_t n, int32_t num_experts) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[i] = slot_key(topk_ids, i, num_experts);
    values[i] = static_cast<int32_t>(i);
  }
}

// The counting sort (the default up to 4095 experts; see use_counting_sort): keys are experts, E + 1 buckets
// (bucket E holds the dropped slots, so they sort last), and the flat indices are cut into chunks of `chunk`. Three
// launches replace CUB's radix sort and the kernels around it (at Qwen3.6-35B-A3B M=8192, 65536 slots over 257
// buckets, the zero-width moe_permute took 74 µs of an H200 with CUB and 20 µs with these; docs/int8.md):
//   1. chunk_count_kernel:   counts[c][b], the slots of chunk c in bucket b;
//   2. chunk_scan_kernel:    one block turns counts into the first sorted position of each (chunk, bucket) and
//                            writes the expert offsets (the exclusive scan of the bucket totals);
//   3. chunk_scatter_kernel: a block per chunk, its warps each walking a consecutive part of the chunk's slots in
//                            order, 32 at a time: lanes with the same key (__match_any_sync) take consecutive
//                            positions in lane order, and each part starts after the earlier parts' slots of the
//                            bucket, so the sort is stable.
constexpr int kMaxSortBuckets = 4096;  // E + 1 up to this: counting sort (the scan block holds 4 buckets a thread)
constexpr int kScanThreads = 1024;
constexpr int kMaxSortChunk = 8192;    // chunk + buckets ints of shared memory in the scatter: at most 48 KiB

template <typename IdT>
__global__ void chunk_count_kernel(const IdT* __restrict__ topk_ids, int32_t* __restrict__ counts, int64_t n,
                                   int32_t num_experts, int32_t chunk) {
  extern __shared__ int32_t hist[];
  const int32_t buckets = num_experts + 1;
  for (int32_t b = threadIdx.x; b < buckets; b += blockDim.x) hist[b] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = min(begin + chunk, n);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    atomicAdd(&hist[slot_key(topk_ids, i, num_experts)], 1);
  }
  __syncthreads();
  int32_t* out = counts + static_cast<int64_t>(blockIdx.x) * buckets;
  for (int32_t b = threadIdx.x; b < buckets; b += blockDim.x) out[b] = hist[b];
}

// The chunk counts of one bucket (col[c * stride], c < chunks), summed (kWrite = false) or replaced in place by
// `base` + their exclusive prefix (kWrite = true). Loads go 16 chunks at a time so that their latencies overlap.
template <bool kWrite>
__device__ __forceinline__ int32_t walk_chunks(int32_t* __restrict__ col, int64_t stride, int32_t chunks,
                                               int32_t base) {
  constexpr int kBatch = 16;
  int32_t run = base;
  for (int32_t c0 = 0; c0 < chunks; c0 += kBatch) {
    int32_t v[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) v[j] = c0 + j < chunks ? col[(c0 + j) * stride] : 0;
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      if (kWrite && c0 + j < chunks) col[(c0 + j) * stride] = run;
      run += v[j];
    }
  }
  return run;
}

__global__ void __launch_bounds__(kScanThreads) chunk_scan_kernel(int32_t* __restrict__ counts,
                                                                  int32_t* __restrict__ offsets, int32_t chunks,
                                                                  int32_t num_experts) {
  constexpr int kItems = kMaxSortBuckets / kScanThreads;
  using Scan = cub::BlockScan<int32_t, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int32_t start[kMaxSortBuckets];
  const int32_t buckets = num_experts + 1;
  // Bucket totals, adjacent threads on adjacent buckets (coalesced); then their exclusive scan, blocked.
  for (int32_t b = threadIdx.x; b < kMaxSortBuckets; b += kScanThreads) {
    start[b] = b < buckets ? walk_chunks<false>(counts + b, buckets, chunks, 0) : 0;
  }
  __syncthreads();
  int32_t items[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) items[j] = start[threadIdx.x * kItems + j];
  __syncthreads();
  Scan(scan_storage).ExclusiveSum(items, items);
#pragma unroll
  for (int j = 0; j < kItems; ++j) start[threadIdx.x * kItems + j] = items[j];
  __syncthreads();
  for (int32_t b = threadIdx.x; b < buckets; b += kScanThreads) {
    offsets[b] = start[b];  // b = E: the number of kept slots
    walk_chunks<true>(counts + b, buckets, chunks, start[b]);
  }
}

template <typename IdT, int kWarps>
__global__ void __launch_bounds__(32 * kWarps) chunk_scatter_kernel(const IdT* __restrict__ topk_ids,
                                                                    const int32_t* __restrict__ first,
                                                                    int32_t* __restrict__ sort_idx,
                                                                    int32_t* __restrict__ inv_idx, int64_t n,
                                                                    int32_t num_experts, int32_t chunk) {
  extern __shared__ int32_t smem[];
  const int32_t buckets = num_experts + 1;
  int32_t* next = smem;                        // [kWarps][buckets] the next sorted position of each bucket, per warp
  int32_t* keys = smem + kWarps * buckets;     // [chunk] the chunk's keys, loaded at once
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int32_t len = static_cast<int32_t>(min(static_cast<int64_t>(chunk), n - begin));
  const int32_t* mine = first + static_cast<int64_t>(blockIdx.x) * buckets;
  for (int32_t j = threadIdx.x; j < len; j += blockDim.x) keys[j] = slot_key(topk_ids, begin + j, num_experts);
  // The chunk is cut into kWarps consecutive parts, warp w walking part w. With several warps each part's
  // bucket starts are the chunk's plus the earlier parts' counts of the bucket, so the order stays stable.
  const int32_t part = (len + 32 * kWarps - 1) / (32 * kWarps) * 32;
  const int32_t lo = min(warp * part, len), hi = min(lo + part, len);
  if constexpr (kWarps == 1) {
    for (int32_t b = lane; b < buckets; b += 32) next[b] = mine[b];
    __syncwarp();
  } else {
    for (int32_t i = threadIdx.x; i < kWarps * buckets; i += blockDim.x) next[i] = 0;
    __syncthreads();
    for (int32_t j = lo + lane; j < hi; j += 32) atomicAdd(&next[warp * buckets + keys[j]], 1);
    __syncthreads();
    for (int32_t b = threadIdx.x; b < buckets; b += blockDim.x) {
      int32_t run = mine[b];
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const int32_t c = next[w * buckets + b];
        next[w * buckets + b] = run;
        run += c;
      }
    }
    __syncthreads();
  }
  int32_t* my_next = next + warp * buckets;
  const unsigned below = (1u << lane) - 1u;
  for (int32_t j0 = lo; j0 < hi; j0 += 32) {
    const int32_t j = j0 + lane;
    const bool valid = j < hi;
    const int32_t key = valid ? keys[j] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    const int32_t pos = valid ? my_next[key] + __popc(peers & below) : 0;
    __syncwarp();
    if (valid && (peers & below) == 0) my_next[key] += __popc(peers);  // the group's lowest lane moves its bucket on
    __syncwarp();
    if (valid) {
      sort_idx[pos] = static_cast<int32_t>(begin + j);
      inv_idx[begin + j] = key < num_experts ? pos : -1;
    }
  }
}

// expert_offsets[e] = lower_bound(sorted_keys, e) for e in [0, E].
__global__ void expert_offsets_kernel(const int32_t* __restrict__ sorted_keys, int64_t n, int32_t num_experts,
                                      int32_t* __restrict__ offsets) {
  const int32_t e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e > num_experts) return;
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (sorted_keys[mid] < e) lo = mid + 1; else hi = mid;
  }
  offsets[e] = static_cast<int32_t>(lo);
}

// One block per sorted position: copy the source token's row and (kWriteInv: the CUB path) record the inverse map.
template <typename VecT, bool kWriteInv>
__global__ void expand_rows_kernel(const VecT* __restrict__ hidden, VecT* __restrict__ rows,
                                   const int32_t* __restrict__ sorted_keys, const int32_t* __restrict__ sort_idx,
                                   int32_t* __restrict__ inv_idx, int64_t vecs_per_row, int32_t topk,
                                   int32_t num_experts) {
  const int64_t p = blockIdx.x;
  const int32_t src = sort_idx[p];
  if (kWriteInv && threadIdx.x == 0) inv_idx[src] = sorted_keys[p] < num_experts ? static_cast<int32_t>(p) : -1;
  const VecT* from = hidden + static_cast<int64_t>(src / topk) * vecs_per_row;
  VecT* to = rows + p * vecs_per_row;
  for (int64_t v = threadIdx.x; v < vecs_per_row; v += blockDim.x) to[v] = from[v];
}

// Loads kVec consecutive elements of T (one 16-byte access when vectorized) as floats.
template <typename T, int kVec>
__device__ __forceinline__ void load_floats(const T* src, float (&v)[kVec]) {
  if constexpr (kVec == 1) {
    v[0] = static_cast<float>(src[0]);
  } else {
    static_assert(kVec * sizeof(T) == 16, "one 16-byte access");
    uint4 raw = *reinterpret_cast<const uint4*>(src);
    const T* vals = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = static_cast<float>(vals[i]);
  }
}

// Stores kVec floats as TOut in 16-byte accesses (8-byte for 4 bf16/fp16 values; the caller aligns dst) when
// kVec > 1.
template <typename TOut, int kVec>
__device__ __forceinline__ void store_floats(TOut* dst, const float (&v)[kVec]) {
  constexpr int kBytes = kVec * static_cast<int>(sizeof(TOut));
  if constexpr (kVec == 1) {
    dst[0] = static_cast<TOut>(v[0]);
  } else {
    static_assert(kBytes == 8 || kBytes % 16 == 0, "whole 8- or 16-byte accesses");
    using Vec = std::conditional_t<kBytes == 8, uint2, uint4>;
    constexpr int kPer = static_cast<int>(sizeof(Vec) / sizeof(TOut));
#pragma unroll
    for (int base = 0; base < kVec; base += kPer) {
      Vec raw;
      TOut* vals = reinterpret_cast<TOut*>(&raw);
#pragma unroll
      for (int i = 0; i < kPer; ++i) vals[i] = static_cast<TOut>(v[base + i]);
      *reinterpret_cast<Vec*>(dst + base) = raw;
    }
  }
}

// out[m, c] = Σ_j w[m, j] · Σ_s rows[s, inv_idx[m·topk + j], c]: the weighted sum over a token's slots of its
// expert rows, each row the sum of `splits` partial planes (split-K GEMM output; 1 plane otherwise). Accumulated in
// float32, rounded once to TOut. Block (m, y) does token m's columns from y · blockDim.x · kVec on (grid-stride
// over y): at decode (M = 4, K = 7168) one block per token left most of the GPU idle, 15 µs for a 0.5 MB gather on
// an H200. kPlanes = false (one plane) keeps the plane loop out of the code: with it the one-plane kernel ran
// 18-24% slower at large M (H200, Qwen3.6 M=2048/8192).
template <typename TIn, typename TOut, int kVec, bool kPlanes>
__global__ void unpermute_kernel(const TIn* __restrict__ rows, const float* __restrict__ weights,
                                 const int32_t* __restrict__ inv_idx, TOut* __restrict__ out, int64_t k,
                                 int32_t topk, int32_t splits, int64_t plane) {
  const int64_t m = blockIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.x * kVec;
  for (int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * kVec; c < k; c += step) {
    float acc[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) acc[v] = 0.0f;
    for (int32_t j = 0; j < topk; ++j) {
      const int32_t p = inv_idx[m * topk + j];
      if (p < 0) continue;
      const float w = weights[m * topk + j];
      const TIn* src = rows + static_cast<int64_t>(p) * k + c;
      float row[kVec];
      load_floats<TIn, kVec>(src, row);
      if constexpr (kPlanes) {
        for (int32_t s = 1; s < splits; ++s) {
          float part[kVec];
          load_floats<TIn, kVec>(src + s * plane, part);
#pragma unroll
          for (int v = 0; v < kVec; ++v) row[v] += part[v];
        }
      }
#pragma unroll
      for (int v = 0; v < kVec; ++v) acc[v] += w * row[v];
    }
    store_floats<TOut, kVec>(out + m * k + c, acc);
  }
}

__global__ void problem_sizes_kernel(const int32_t* __restrict__ offsets, int32_t* __restrict__ sizes,
                                     int32_t num_experts, int32_t n, int32_t k, bool swap_ab) {
  const int32_t e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= num_experts) return;
  const int32_t rows = offsets[e + 1] - offsets[e];
  sizes[3 * e + 0] = swap_ab ? n : rows;
  sizes[3 * e + 1] = swap_ab ? rows : n;
  sizes[3 * e + 2] = k;
}

int end_bit_for(int64_t max_key) {
  int bits = 1;
  while ((int64_t{1} << bits) <= max_key) ++bits;
  return bits;
}

template <typename VecT, bool kWriteInv>
void launch_expand(const at::Tensor& hidden, at::Tensor& rows, const int32_t* keys, const int32_t* sort_idx,
                   int32_t* inv_idx, int64_t n, int64_t row_bytes, int32_t topk, int32_t num_experts,
                   cudaStream_t stream) {
  const int64_t vecs = row_bytes / static_cast<int64_t>(sizeof(VecT));
  const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, vecs)));
  expand_rows_kernel<VecT, kWriteInv><<<n, threads, 0, stream>>>(
      reinterpret_cast<const VecT*>(hidden.data_ptr()), reinterpret_cast<VecT*>(rows.data_ptr()), keys, sort_idx,
      inv_idx, vecs, topk, num_experts);
  MOEJIT_CUDA_LAUNCH_CHECK();
}

// rows[p] = hidden[sort_idx[p] / topk] in the widest accesses the row size and alignment allow.
template <bool kWriteInv>
void expand(const at::Tensor& hidden, at::Tensor& rows, const int32_t* keys, const int32_t* sort_idx, int32_t* inv,
            int64_t n, int32_t topk, int32_t num_experts, cudaStream_t stream) {
  const int64_t row_bytes = hidden.size(1) * hidden.element_size();
  const uintptr_t align = reinterpret_cast<uintptr_t>(hidden.data_ptr()) | reinterpret_cast<uintptr_t>(rows.data_ptr());
  auto fits = [&](int64_t w) { return row_bytes % w == 0 && align % w == 0; };
  auto go = [&](auto* tag) {
    using VecT = std::remove_pointer_t<decltype(tag)>;
    launch_expand<VecT, kWriteInv>(hidden, rows, keys, sort_idx, inv, n, row_bytes, topk, num_experts, stream);
  };
  if (fits(16)) go(static_cast<uint4*>(nullptr));
  else if (fits(8)) go(static_cast<uint2*>(nullptr));
  else if (fits(4)) go(static_cast<uint32_t*>(nullptr));
  else if (fits(2)) go(static_cast<uint16_t*>(nullptr));
  else go(static_cast<uint8_t*>(nullptr));
}

// Sorted positions of the n = M * topk slots by expert (stable), their inverse and the expert offsets.
template <typename IdT>
void counting_sort(const IdT* ids, int64_t n, int32_t num_experts, const at::TensorOptions& i32, int32_t* sort_idx,
                   int32_t* inv_idx, int32_t* offsets, cudaStream_t stream) {
  const int32_t buckets = num_experts + 1;
  // 1024-slot chunks up to 256 of them, longer chunks past that (the scan walks every chunk of a bucket)
  const int64_t chunk64 =
      std::min<int64_t>(kMaxSortChunk, std::max<int64_t>(1024, ceil_div(ceil_div(n, 256), 32) * 32));
  const auto chunk = static_cast<int32_t>(chunk64);
  const auto chunks = static_cast<int32_t>(ceil_div(n, chunk64));
  at::Tensor counts = at::empty({static_cast<int64_t>(chunks) * buckets}, i32);
  int32_t* c = counts.data_ptr<int32_t>();
  const size_t hist_bytes = sizeof(int32_t) * buckets;
  chunk_count_kernel<IdT><<<chunks, 256, hist_bytes, stream>>>(ids, c, n, num_experts, chunk);
  MOEJIT_CUDA_LAUNCH_CHECK();
  chunk_scan_kernel<<<1, kScanThreads, 0, stream>>>(c, offsets, chunks, num_experts);
  MOEJIT_CUDA_LAUNCH_CHECK();
  // Four warps a chunk where their bucket starts fit the default 48 KiB of shared memory, else one.
  const size_t keys_bytes = sizeof(int32_t) * chunk;
  if (4 * hist_bytes + keys_bytes <= 48 * 1024) {
    chunk_scatter_kernel<IdT, 4><<<chunks, 128, 4 * hist_bytes + keys_bytes, stream>>>(
        ids, c, sort_idx, inv_idx, n, num_experts, chunk);
  } else {
    chunk_scatter_kernel<IdT, 1><<<chunks, 32, hist_bytes + keys_bytes, stream>>>(
        ids, c, sort_idx, inv_idx, n, num_experts, chunk);
  }
  MOEJIT_CUDA_LAUNCH_CHECK();
}

// fn(ids) with topk_ids' data as const int32_t* or const int64_t* (the two id types moe_permute takes).
template <typename Fn>
void with_ids(const at::Tensor& topk_ids, Fn&& fn) {
  if (topk_ids.scalar_type() == at::kInt) fn(topk_ids.data_ptr<int32_t>());
  else fn(topk_ids.data_ptr<int64_t>());
}

// The counting sort for E + 1 <= kMaxSortBuckets, CUB's radix sort past that. MOEJIT_PERMUTE_SORT=cub (read on
// every call) forces CUB's sort, for comparison and tests.
bool use_counting_sort(int64_t num_experts) {
  const char* env = std::getenv("MOEJIT_PERMUTE_SORT");
  const bool force_cub = env != nullptr && std::strcmp(env, "cub") == 0;
  return !force_cub && num_experts + 1 <= kMaxSortBuckets;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_permute(const at::Tensor& hidden,
                                                                       const at::Tensor& topk_ids,
                                                                       int64_t num_experts) {
  MOEJIT_CHECK_CUDA(hidden);
  MOEJIT_CHECK_CUDA(topk_ids);
  MOEJIT_CHECK(hidden.dim() == 2, "moe_permute: hidden must be 2-D [M, K], got ", hidden.sizes());
  MOEJIT_CHECK(topk_ids.dim() == 2, "moe_permute: topk_ids must be 2-D [M, topk], got ", topk_ids.sizes());
  MOEJIT_CHECK(topk_ids.size(0) == hidden.size(0), "moe_permute: topk_ids has ", topk_ids.size(0),
               " rows but hidden has ", hidden.size(0));
  MOEJIT_CHECK(topk_ids.scalar_type() == at::kInt || topk_ids.scalar_type() == at::kLong,
               "moe_permute: topk_ids must be int32 or int64, got ", topk_ids.scalar_type());
  MOEJIT_CHECK(num_experts > 0 && num_experts < (int64_t{1} << 30), "moe_permute: bad num_experts ", num_experts);
  MOEJIT_CHECK_CONTIGUOUS(hidden);
  MOEJIT_CHECK_CONTIGUOUS(topk_ids);
  const int64_t m = hidden.size(0), k = hidden.size(1), topk = topk_ids.size(1);
  const int64_t n = m * topk;
  MOEJIT_CHECK(n < (int64_t{1} << 31), "moe_permute: M * topk must fit in int32");

  const c10::cuda::CUDAGuard guard(hidden.device());
  cudaStream_t stream = current_stream();
  auto i32 = hidden.options().dtype(at::kInt);
  at::Tensor rows = at::empty({n, k}, hidden.options());
  at::Tensor offsets = at::empty({num_experts + 1}, i32);
  at::Tensor sort_idx = at::empty({n}, i32);
  at::Tensor inv_idx = at::empty({n}, i32);
  if (n == 0) {
    offsets.zero_();
    return {rows, offsets, sort_idx, inv_idx};
  }

  const auto t = static_cast<int32_t>(topk);
  const auto e = static_cast<int32_t>(num_experts);
  if (use_counting_sort(num_experts)) {
    with_ids(topk_ids, [&](const auto* ids) {
      counting_sort(ids, n, e, i32, sort_idx.data_ptr<int32_t>(), inv_idx.data_ptr<int32_t>(),
                    offsets.data_ptr<int32_t>(), stream);
    });
    // K = 0 (the permutation only): no copy kernel
    if (k > 0) expand<false>(hidden, rows, nullptr, sort_idx.data_ptr<int32_t>(), nullptr, n, t, e, stream);
  } else {
    at::Tensor keys_in = at::empty({n}, i32), keys_out = at::empty({n}, i32), values_in = at::empty({n}, i32);
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(n, threads), 4096));
    with_ids(topk_ids, [&](const auto* ids) {
      make_sort_keys_kernel<<<blocks, threads, 0, stream>>>(ids, keys_in.data_ptr<int32_t>(),
                                                            values_in.data_ptr<int32_t>(), n, e);
    });
    MOEJIT_CUDA_LAUNCH_CHECK();

    const int end_bit = end_bit_for(num_experts);
    size_t temp_bytes = 0;
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in.data_ptr<int32_t>(),
                                                   keys_out.data_ptr<int32_t>(), values_in.data_ptr<int32_t>(),
                                                   sort_idx.data_ptr<int32_t>(), static_cast<int>(n), 0, end_bit,
                                                   stream));
    at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, hidden.options().dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, keys_in.data_ptr<int32_t>(),
                                                   keys_out.data_ptr<int32_t>(), values_in.data_ptr<int32_t>(),
                                                   sort_idx.data_ptr<int32_t>(), static_cast<int>(n), 0, end_bit,
                                                   stream));

    expert_offsets_kernel<<<ceil_div(num_experts + 1, 256), 256, 0, stream>>>(
        keys_out.data_ptr<int32_t>(), n, static_cast<int32_t>(num_experts), offsets.data_ptr<int32_t>());
    MOEJIT_CUDA_LAUNCH_CHECK();

    expand<true>(hidden, rows, keys_out.data_ptr<int32_t>(), sort_idx.data_ptr<int32_t>(),
                 inv_idx.data_ptr<int32_t>(), n, t, e, stream);
  }
  return {rows, offsets, sort_idx, inv_idx};
}

at::Tensor moe_unpermute(const at::Tensor& rows, const at::Tensor& topk_weights, const at::Tensor& inv_idx,
                         std::optional<at::ScalarType> out_dtype) {
  MOEJIT_CHECK_CUDA(rows);
  MOEJIT_CHECK_CUDA(topk_weights);
  MOEJIT_CHECK_CUDA(inv_idx);
  MOEJIT_CHECK(rows.dim() == 2 || rows.dim() == 3, "moe_unpermute: rows must be [R, K] or [S, R, K] (split-K "
               "partials), got ", rows.sizes());
  MOEJIT_CHECK(topk_weights.dim() == 2, "moe_unpermute: topk_weights must be 2-D [M, topk]");
  MOEJIT_CHECK_DTYPE(inv_idx, at::kInt);
  MOEJIT_CHECK(inv_idx.numel() == topk_weights.numel(), "moe_unpermute: inv_idx has ", inv_idx.numel(),
               " entries, expected M * topk = ", topk_weights.numel());
  const int64_t splits = rows.dim() == 3 ? rows.size(0) : 1;
  const int64_t r = rows.size(rows.dim() - 2), k = rows.size(rows.dim() - 1);
  MOEJIT_CHECK(splits >= 1, "moe_unpermute: rows has no planes");
  MOEJIT_CHECK(r >= topk_weights.numel(), "moe_unpermute: rows has ", r, " rows, fewer than M * topk = ",
               topk_weights.numel());
  MOEJIT_CHECK_CONTIGUOUS(rows);
  MOEJIT_CHECK_CONTIGUOUS(inv_idx);
  const at::ScalarType in_type = rows.scalar_type();
  const at::ScalarType out_type = out_dtype.value_or(in_type);
  for (const at::ScalarType t : {in_type, out_type}) {  // checked here: empty inputs return before the dispatch
    MOEJIT_CHECK(t == at::kBFloat16 || t == at::kHalf || t == at::kFloat,
                 "moe_unpermute: rows and out_dtype must be bfloat16, float16 or float32, got ", t);
  }
  const int64_t m = topk_weights.size(0), topk = topk_weights.size(1);
  at::Tensor out = at::empty({m, k}, rows.options().dtype(out_type));
  if (m == 0 || k == 0) return out;
  const c10::cuda::CUDAGuard guard(rows.device());
  cudaStream_t stream = current_stream();
  at::Tensor weights = topk_weights.to(at::kFloat).contiguous();
  auto run = [&](auto* in_tag, auto* out_tag) {
    using TIn = std::remove_pointer_t<decltype(in_tag)>;
    using TOut = std::remove_pointer_t<decltype(out_tag)>;
    constexpr int kVec = 16 / sizeof(TIn);
    const auto* src = reinterpret_cast<const TIn*>(rows.data_ptr());
    auto* dst = reinterpret_cast<TOut*>(out.data_ptr());
    // every plane's row starts must stay 16-byte aligned: k % kVec == 0 gives it for the planes too
    const bool vectorized = k % kVec == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
    const int64_t per_thread = vectorized ? kVec : 1;
    const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, ceil_div(k, per_thread))));
    const dim3 grid(static_cast<unsigned>(m),
                    static_cast<unsigned>(std::min<int64_t>(65535, ceil_div(k, threads * per_thread))));
    const float* w = weights.data_ptr<float>();
    const int32_t* idx = inv_idx.data_ptr<int32_t>();
    const auto t = static_cast<int32_t>(topk);
    const auto planes = static_cast<int32_t>(splits);
    auto go = [&](auto kernel) { kernel<<<grid, threads, 0, stream>>>(src, w, idx, dst, k, t, planes, r * k); };
    if (vectorized) {
      splits > 1 ? go(unpermute_kernel<TIn, TOut, kVec, true>) : go(unpermute_kernel<TIn, TOut, kVec, false>);
    } else {
      splits > 1 ? go(unpermute_kernel<TIn, TOut, 1, true>) : go(unpermute_kernel<TIn, TOut, 1, false>);
    }
    MOEJIT_CUDA_LAUNCH_CHECK();
  };
  dispatch_float(in_type, "moe_unpermute rows", [&](auto* in_tag) {
    dispatch_float(out_type, "moe_unpermute out_dtype", [&](auto* out_tag) { run(in_tag, out_tag); });
  });
  return out;
}

at::Tensor moe_problem_sizes(const at::Tensor& expert_offsets, int64_t n, int64_t k, bool swap_ab) {
  MOEJIT_CHECK_CUDA(expert_offsets);
  MOEJIT_CHECK_DTYPE(expert_offsets, at::kInt);
  MOEJIT_CHECK(expert_offsets.dim() == 1 && expert_offsets.numel() >= 2,
               "moe_problem_sizes: expert_offsets must be 1-D [E + 1]");
  MOEJIT_CHECK_CONTIGUOUS(expert_offsets);
  const int64_t e = expert_offsets.numel() - 1;
  at::Tensor sizes = at::empty({e, 3}, expert_offsets.options());
  const c10::cuda::CUDAGuard guard(expert_offsets.device());
  problem_sizes_kernel<<<ceil_div(e, 256), 256, 0, current_stream()>>>(
      expert_offsets.data_ptr<int32_t>(), sizes.data_ptr<int32_t>(), static_cast<int32_t>(e),
      static_cast<int32_t>(n), static_cast<int32_t>(k), swap_ab);
  MOEJIT_CUDA_LAUNCH_CHECK();
  return sizes;
}

}  // namespace moejit
