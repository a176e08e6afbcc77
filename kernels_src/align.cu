// Block alignment for the fused MoE GEMM: the CUDA twin of moejit/triton/align.py, with the same outputs, so the
// two can be measured against each other (issue 4) and the faster one used.
//
// From topk_ids [M, topk] (int32/int64; ids outside [0, E) are dropped slots):
//   sorted_ids   [max_padded] int32: slot indices m*topk + j grouped by expert, each expert's run padded to a
//                multiple of block_m with the sentinel M*topk;
//   expert_ids   [max_padded / block_m] int32: the expert of each block (-1 past the padded total);
//   num_post_pad [1] int32: the padded total (a multiple of block_m).
// max_padded = round_up(M*topk + E*(block_m - 1), block_m), so nothing depends on the data and nothing syncs with
// the host. Within one expert the slot order is unspecified (warp-aggregated atomics).
//
// Three launches and a memset:
//   1. count: every thread pre-fills its share of sorted_ids with the sentinel; a per-block shared-memory
//      histogram of the ids is added to counts[E] (global atomics only for the block's non-zero bins);
//   2. scan (one block): padded starts of every expert (cub::BlockScan over chunks of E), num_post_pad, and the
//      block → expert map (binary search of each block's first position in the starts);
//   3. scatter: each warp groups its lanes by expert (__match_any_sync), one atomicAdd per group on the expert's
//      cursor claims the group's positions.

#include <cub/block/block_scan.cuh>

#include "common.h"
#include "ops.h"

namespace moejit {
namespace {

constexpr int kThreads = 256;
constexpr int kScanThreads = 1024;
constexpr int kMaxSharedExperts = 8192;  // 32 KB of shared counts; more experts count with global atomics

template <typename IdT>
__global__ void align_count_kernel(const IdT* __restrict__ ids, int64_t num_slots, int num_experts,
                                   int64_t max_padded, int32_t* __restrict__ counts,
                                   int32_t* __restrict__ sorted_ids) {
  extern __shared__ int32_t hist[];
  const bool shared = num_experts <= kMaxSharedExperts;
  if (shared) {
    for (int e = threadIdx.x; e < num_experts; e += blockDim.x) hist[e] = 0;
    __syncthreads();
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < max_padded; i += stride) {
    sorted_ids[i] = static_cast<int32_t>(num_slots);
    if (i < num_slots) {
      const int64_t e = static_cast<int64_t>(ids[i]);
      if (e >= 0 && e < num_experts) atomicAdd(shared ? &hist[e] : &counts[e], 1);
    }
  }
  if (shared) {
    __syncthreads();
    for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
      if (hist[e]) atomicAdd(&counts[e], hist[e]);
    }
  }
}

// One block. cursors[e] = padded start of expert e (the scatter's atomic cursors).
__global__ void __launch_bounds__(kScanThreads) align_scan_kernel(const int32_t* __restrict__ counts, int num_experts, int block_m,
                                  int64_t max_blocks, int32_t* __restrict__ cursors,
                                  int32_t* __restrict__ expert_ids, int32_t* __restrict__ num_post_pad) {
  using BlockScan = cub::BlockScan<int32_t, kScanThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ int32_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < num_experts; base += kScanThreads) {
    const int e = base + threadIdx.x;
    const int32_t padded = e < num_experts ? (counts[e] + block_m - 1) / block_m * block_m : 0;
    int32_t start = 0, chunk_total = 0;
    BlockScan(scan_storage).ExclusiveSum(padded, start, chunk_total);
    if (e < num_experts) cursors[e] = carry + start;
    __syncthreads();  // every thread has read carry; scan_storage may be reused
    if (threadIdx.x == 0) carry += chunk_total;
    __syncthreads();
  }
  const int64_t total = carry;
  if (threadIdx.x == 0) *num_post_pad = static_cast<int32_t>(total);
  // cursors (global) were written by this block before the last __syncthreads: visible to all its threads.
  for (int64_t b = threadIdx.x; b < max_blocks; b += blockDim.x) {
    const int64_t pos = b * block_m;
    int32_t expert = -1;
    if (pos < total) {
      // the last expert whose start is <= pos: empty experts share the start of the next non-empty one, so the
      // last such index is the non-empty expert that owns pos
      int lo = 0, hi = num_experts - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (cursors[mid] <= pos) lo = mid;
        else hi = mid - 1;
      }
      expert = lo;
    }
    expert_ids[b] = expert;
  }
}

template <typename IdT>
__global__ void align_scatter_kernel(const IdT* __restrict__ ids, int64_t num_slots, int num_experts,
                                     int32_t* __restrict__ cursors, int32_t* __restrict__ sorted_ids) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // base is the same for the whole warp (blockDim is a multiple of 32), so all 32 lanes take part in every step
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < num_slots; base += stride) {
    const int64_t i = base + threadIdx.x;
    int64_t e = i < num_slots ? static_cast<int64_t>(ids[i]) : -1;
    const bool valid = e >= 0 && e < num_experts;
    const int key = valid ? static_cast<int>(e) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    const int leader = __ffs(peers) - 1;
    int32_t pos = 0;
    if (lane == leader && valid) pos = atomicAdd(&cursors[key], __popc(peers));
    pos = __shfl_sync(0xffffffffu, pos, leader);
    if (valid) sorted_ids[pos + __popc(peers & ((1u << lane) - 1u))] = static_cast<int32_t>(i);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_align_block_size(const at::Tensor& topk_ids, int64_t num_experts,
                                                                    int64_t block_m) {
  constexpr const char* op = "moe_align_block_size";
  MOEJIT_CHECK_CUDA(topk_ids);
  MOEJIT_CHECK_CONTIGUOUS(topk_ids);
  MOEJIT_CHECK(topk_ids.scalar_type() == at::kInt || topk_ids.scalar_type() == at::kLong, op,
               ": topk_ids must be int32 or int64, got ", topk_ids.scalar_type());
  MOEJIT_CHECK(num_experts >= 1 && num_experts <= (1 << 20), op, ": bad number of experts ", num_experts);
  MOEJIT_CHECK(block_m >= 1 && block_m <= 1024 && (block_m & (block_m - 1)) == 0, op,
               ": block_m must be a power of two in [1, 1024], got ", block_m);
  const int64_t num_slots = topk_ids.numel();
  const int64_t max_padded = ceil_div(std::max<int64_t>(num_slots + num_experts * (block_m - 1), 1), block_m) * block_m;
  MOEJIT_CHECK(max_padded < (int64_t{1} << 31), op, ": too many slots (", num_slots, ")");
  const int64_t max_blocks = max_padded / block_m;

  const c10::cuda::CUDAGuard guard(topk_ids.device());
  cudaStream_t stream = current_stream();
  const auto i32 = topk_ids.options().dtype(at::kInt);
  at::Tensor sorted_ids = at::empty({max_padded}, i32);
  at::Tensor expert_ids = at::empty({max_blocks}, i32);
  at::Tensor num_post_pad = at::empty({1}, i32);
  at::Tensor scratch = at::empty({2 * num_experts}, i32);  // counts ‖ cursors
  int32_t* counts = scratch.data_ptr<int32_t>();
  int32_t* cursors = counts + num_experts;
  C10_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int32_t) * num_experts, stream));

  const int e = static_cast<int>(num_experts);
  const int64_t max_grid = int64_t{4} * sm_count();
  const int grid = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(max_padded, kThreads), max_grid)));
  const size_t smem = num_experts <= kMaxSharedExperts ? sizeof(int32_t) * num_experts : 0;
  auto launch = [&](auto* tag) {
    using IdT = std::remove_pointer_t<decltype(tag)>;
    const IdT* ids = topk_ids.data_ptr<IdT>();
    align_count_kernel<IdT><<<grid, kThreads, smem, stream>>>(ids, num_slots, e, max_padded, counts,
                                                              sorted_ids.data_ptr<int32_t>());
    MOEJIT_CUDA_LAUNCH_CHECK();
    align_scan_kernel<<<1, kScanThreads, 0, stream>>>(counts, e, static_cast<int>(block_m), max_blocks, cursors,
                                                      expert_ids.data_ptr<int32_t>(), num_post_pad.data_ptr<int32_t>());
    MOEJIT_CUDA_LAUNCH_CHECK();
    if (num_slots > 0) {
      const int scatter_grid = static_cast<int>(std::min<int64_t>(ceil_div(num_slots, kThreads), max_grid));
      align_scatter_kernel<IdT><<<scatter_grid, kThreads, 0, stream>>>(ids, num_slots, e, cursors,
                                                                       sorted_ids.data_ptr<int32_t>());
      MOEJIT_CUDA_LAUNCH_CHECK();
    }
  };
  if (topk_ids.scalar_type() == at::kInt) launch(static_cast<int32_t*>(nullptr));
  else launch(static_cast<int64_t*>(nullptr));
  return {sorted_ids, expert_ids, num_post_pad};
}

}  // namespace moejit
