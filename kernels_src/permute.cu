// MoE token routing: expert-sorted permutation (CUB radix sort), row expansion, weighted unpermute, and the
// per-expert problem sizes that grouped GEMMs read. Everything stays on the device; nothing syncs with the host.
//
// Conventions (flat index i = m * topk + j):
//   sort_idx[p]       flat index of the (token, slot) pair at sorted position p (stable: ties keep token order)
//   inv_idx[i]        sorted position of flat index i, or -1 when topk_ids[i] is outside [0, E) (a dropped slot)
//   expert_offsets[e] first sorted position of expert e; expert_offsets[E] = number of valid (kept) slots
//   rows[p]           hidden[sort_idx[p] / topk]

#include <cub/cub.cuh>

#include <type_traits>

#include "common.h"
#include "ops.h"

namespace moejit {
namespace {

template <typename IdT>
__global__ void make_sort_keys_kernel(const IdT* __restrict__ topk_ids, int32_t* __restrict__ keys,
                                      int32_t* __restrict__ values, int64_t n, int32_t num_experts) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = static_cast<int64_t>(topk_ids[i]);
    keys[i] = (e >= 0 && e < num_experts) ? static_cast<int32_t>(e) : num_experts;
    values[i] = static_cast<int32_t>(i);
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

// One block per sorted position: copy the source token's row and record the inverse map.
template <typename VecT>
__global__ void expand_rows_kernel(const VecT* __restrict__ hidden, VecT* __restrict__ rows,
                                   const int32_t* __restrict__ sorted_keys, const int32_t* __restrict__ sort_idx,
                                   int32_t* __restrict__ inv_idx, int64_t vecs_per_row, int32_t topk,
                                   int32_t num_experts) {
  const int64_t p = blockIdx.x;
  const int32_t src = sort_idx[p];
  if (threadIdx.x == 0) inv_idx[src] = sorted_keys[p] < num_experts ? static_cast<int32_t>(p) : -1;
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

template <typename VecT>
void launch_expand(const at::Tensor& hidden, at::Tensor& rows, const int32_t* keys, const int32_t* sort_idx,
                   int32_t* inv_idx, int64_t n, int64_t row_bytes, int32_t topk, int32_t num_experts,
                   cudaStream_t stream) {
  const int64_t vecs = row_bytes / static_cast<int64_t>(sizeof(VecT));
  const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, vecs)));
  expand_rows_kernel<VecT><<<n, threads, 0, stream>>>(reinterpret_cast<const VecT*>(hidden.data_ptr()),
                                                      reinterpret_cast<VecT*>(rows.data_ptr()), keys, sort_idx,
                                                      inv_idx, vecs, topk, num_experts);
  MOEJIT_CUDA_LAUNCH_CHECK();
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

  at::Tensor keys_in = at::empty({n}, i32), keys_out = at::empty({n}, i32), values_in = at::empty({n}, i32);
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(n, threads), 4096));
  if (topk_ids.scalar_type() == at::kInt) {
    make_sort_keys_kernel<int32_t><<<blocks, threads, 0, stream>>>(
        topk_ids.data_ptr<int32_t>(), keys_in.data_ptr<int32_t>(), values_in.data_ptr<int32_t>(), n,
        static_cast<int32_t>(num_experts));
  } else {
    make_sort_keys_kernel<int64_t><<<blocks, threads, 0, stream>>>(
        topk_ids.data_ptr<int64_t>(), keys_in.data_ptr<int32_t>(), values_in.data_ptr<int32_t>(), n,
        static_cast<int32_t>(num_experts));
  }
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

  const int64_t row_bytes = k * hidden.element_size();
  const uintptr_t align = reinterpret_cast<uintptr_t>(hidden.data_ptr()) | reinterpret_cast<uintptr_t>(rows.data_ptr());
  auto fits = [&](int64_t w) { return row_bytes % w == 0 && align % w == 0; };
  const int32_t* keys = keys_out.data_ptr<int32_t>();
  const int32_t* sidx = sort_idx.data_ptr<int32_t>();
  int32_t* inv = inv_idx.data_ptr<int32_t>();
  const auto t = static_cast<int32_t>(topk);
  const auto e = static_cast<int32_t>(num_experts);
  if (fits(16)) launch_expand<uint4>(hidden, rows, keys, sidx, inv, n, row_bytes, t, e, stream);
  else if (fits(8)) launch_expand<uint2>(hidden, rows, keys, sidx, inv, n, row_bytes, t, e, stream);
  else if (fits(4)) launch_expand<uint32_t>(hidden, rows, keys, sidx, inv, n, row_bytes, t, e, stream);
  else if (fits(2)) launch_expand<uint16_t>(hidden, rows, keys, sidx, inv, n, row_bytes, t, e, stream);
  else launch_expand<uint8_t>(hidden, rows, keys, sidx, inv, n, row_bytes, t, e, stream);
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
