// INT8 grouped GEMM with per-tensor or per-token x per-channel scales (sm80_int8 module), and the device-side tile
// schedule shared with the hybrid GEMM (int8_hybrid_grouped_gemm.cu).
//
//   out[r, n] = a_scale[r or 0] * b_scale[e, n or 0] * sum_k a[r, k] * b[e, n, k]    (int32 accumulation)
//
// for every row r of expert e (expert_offsets, int32 [E+1], read on the device only). Rows at or past
// expert_offsets[E] are not written. The kernels are in int8_grouped_gemm_sm80.cuh.

#include <cstdlib>
#include <limits>
#include <string>

#include "common.h"
#include "int8_grouped_gemm.h"
#include "int8_grouped_gemm_sm80.h"
#include "int8_grouped_gemm_sm90.h"
#include "ops.h"

namespace moejit {
namespace int8_gemm {
namespace {

constexpr int kScheduleThreads = 256;

// One block: tile_offsets[e] = exclusive prefix over experts of ceil(m_e / tile_m) * tiles_n, with m_e taken from
// expert_offsets clamped to [0, rows] (so malformed offsets can never send a tile out of bounds).
__global__ void tile_schedule_kernel(const int32_t* __restrict__ expert_offsets, int32_t* __restrict__ tile_offsets,
                                     int num_experts, int rows, int tile_m, int tiles_n) {
  __shared__ int32_t partial[kScheduleThreads];
  const int per_thread = (num_experts + kScheduleThreads - 1) / kScheduleThreads;
  const int first = threadIdx.x * per_thread;
  const int last = min(first + per_thread, num_experts);
  auto tiles_of = [&](int e) {
    const int begin = min(max(expert_offsets[e], 0), rows);
    const int end = min(max(expert_offsets[e + 1], begin), rows);
    return (end - begin + tile_m - 1) / tile_m * tiles_n;
  };
  int32_t sum = 0;
  for (int e = first; e < last; ++e) sum += tiles_of(e);
  partial[threadIdx.x] = sum;
  __syncthreads();
  // Inclusive Hillis-Steele scan of the per-thread sums.
  for (int offset = 1; offset < kScheduleThreads; offset *= 2) {
    const int32_t add = threadIdx.x >= offset ? partial[threadIdx.x - offset] : 0;
    __syncthreads();
    partial[threadIdx.x] += add;
    __syncthreads();
  }
  int32_t running = partial[threadIdx.x] - sum;
  for (int e = first; e < last; ++e) {
    tile_offsets[e] = running;
    running += tiles_of(e);
  }
  if (threadIdx.x == kScheduleThreads - 1) tile_offsets[num_experts] = partial[threadIdx.x];
}

}  // namespace

void launch_tile_schedule(const int32_t* expert_offsets, int32_t* tile_offsets, int num_experts, int rows,
                          int tile_m, int tile_n, int n, cudaStream_t stream) {
  tile_schedule_kernel<<<1, kScheduleThreads, 0, stream>>>(expert_offsets, tile_offsets, num_experts, rows, tile_m,
                                                           (n + tile_n - 1) / tile_n);
  MOEJIT_CUDA_LAUNCH_CHECK();
}

int tile_m_for(int64_t rows, int64_t num_experts) {
  if (const char* env = std::getenv("MOEJIT_INT8_GEMM_TILE_M")) {
    const std::string value(env);
    if (value == "64") return 64;
    if (value == "128") return 128;
  }
  return choose_tile_m(rows, num_experts);
}

Kernel kernel_for(const char* op, int64_t rows, int64_t num_experts) {
#if defined(MOEJIT_ARCH_90A)
  // This build of the module is for sm_90a, so the device is an sm_90 (the JIT builds for the detected arch).
  if (const char* env = std::getenv("MOEJIT_INT8_GEMM_KERNEL")) {
    const std::string value(env);
    if (value == "sm80") return Kernel::kSm80;
    if (value == "sm90") {
      MOEJIT_CHECK(num_experts <= sm90::kMaxExperts, op, ": MOEJIT_INT8_GEMM_KERNEL=sm90, but the SM90 kernels take ",
                   "at most ", sm90::kMaxExperts, " experts (got ", num_experts, "); unset it to use the SM80 ones");
      return Kernel::kSm90;
    }
  }
  return choose_kernel(rows, num_experts);
#else
  (void)op, (void)rows, (void)num_experts;
  return Kernel::kSm80;
#endif
}

int checked_max_tiles(const char* op, int64_t rows, int64_t num_experts, int tile_m, int tile_n, int64_t n) {
  const int64_t tiles = max_tiles_bound(rows, num_experts, tile_m, tile_n, n);
  MOEJIT_CHECK(tiles < std::numeric_limits<int32_t>::max(), op, ": too many output tiles (", tiles, ")");
  return static_cast<int>(tiles);
}

PreparedLaunch prepare_launch(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out,
                              const at::Tensor& expert_offsets, cudaStream_t stream, const RowGather* gather) {
  const int64_t rows = gather != nullptr ? gather->rows.size(0) : a.size(0);
  const int64_t k = a.size(1), num_experts = b.size(0), n = b.size(1);
  PreparedLaunch launch;
  launch.kernel = kernel_for(op, rows, num_experts);
  const bool sm90 = launch.kernel == Kernel::kSm90;
  launch.tile_m = sm90 ? sm90::kTileM : tile_m_for(rows, num_experts);
  const int tile_n = sm90 ? sm90::kTileN : kTileN;
  launch.tile_offsets = at::empty({num_experts + 1}, expert_offsets.options());
  launch_tile_schedule(expert_offsets.data_ptr<int32_t>(), launch.tile_offsets.data_ptr<int32_t>(),
                       static_cast<int>(num_experts), static_cast<int>(rows), launch.tile_m, tile_n,
                       static_cast<int>(n), stream);
  GroupedGemmParams& params = launch.params;
  params.a = a.data_ptr<int8_t>();
  if (gather != nullptr && rows > 0) {
    if (sm90) {
      params.a_rows = gather->rows.data_ptr<int32_t>();
      params.a_rows_div = static_cast<int>(gather->div);
      params.a_src_rows = static_cast<int>(a.size(0));
    } else {  // the SM80 kernels read A as a plain matrix: copy the rows (on the current stream, i.e. `stream`)
      const at::Tensor src = at::div(gather->rows, gather->div, "trunc").clamp(0, a.size(0) - 1);
      launch.gathered = a.index_select(0, src);
      params.a = launch.gathered.data_ptr<int8_t>();
    }
  }
  params.b = b.data_ptr<int8_t>();
  params.out = out.data_ptr();
  params.expert_offsets = expert_offsets.data_ptr<int32_t>();
  params.tile_offsets = launch.tile_offsets.data_ptr<int32_t>();
  params.num_experts = static_cast<int>(num_experts);
  params.rows = static_cast<int>(rows);
  params.n = static_cast<int>(n);
  params.k = static_cast<int>(k);
  params.max_tiles = checked_max_tiles(op, rows, num_experts, launch.tile_m, tile_n, n);
  return launch;
}

}  // namespace int8_gemm

std::tuple<int64_t, int64_t, int64_t, int64_t> check_int8_grouped_operands(const char* op, const at::Tensor& a,
                                                                            const at::Tensor& b,
                                                                            const at::Tensor& expert_offsets,
                                                                            at::ScalarType out_dtype) {
  MOEJIT_CHECK_CUDA(a);
  MOEJIT_CHECK_CUDA(b);
  MOEJIT_CHECK_CUDA(expert_offsets);
  MOEJIT_CHECK(a.scalar_type() == at::kChar, op, ": a must be int8, got ", a.scalar_type());
  MOEJIT_CHECK(b.scalar_type() == at::kChar, op, ": b must be int8, got ", b.scalar_type());
  MOEJIT_CHECK(expert_offsets.scalar_type() == at::kInt, op, ": expert_offsets must be int32, got ",
               expert_offsets.scalar_type());
  MOEJIT_CHECK(a.dim() == 2, op, ": a must be 2-D [rows, K], got ", a.sizes());
  MOEJIT_CHECK(b.dim() == 3, op, ": b must be 3-D [E, N, K], got ", b.sizes());
  MOEJIT_CHECK(expert_offsets.dim() == 1, op, ": expert_offsets must be 1-D [E + 1], got ", expert_offsets.sizes());
  MOEJIT_CHECK(a.is_contiguous() && b.is_contiguous() && expert_offsets.is_contiguous(), op,
               ": a, b and expert_offsets must be contiguous");
  MOEJIT_CHECK(a.device() == b.device() && a.device() == expert_offsets.device(), op,
               ": a, b and expert_offsets must be on the same device");
  MOEJIT_CHECK(out_dtype == at::kBFloat16 || out_dtype == at::kHalf, op, ": out_dtype must be bfloat16 or float16, got ",
               out_dtype);
  const int64_t rows = a.size(0), k = a.size(1), num_experts = b.size(0), n = b.size(1);
  MOEJIT_CHECK(b.size(2) == k, op, ": K mismatch: a is ", a.sizes(), " but b is ", b.sizes());
  MOEJIT_CHECK(expert_offsets.size(0) == num_experts + 1, op, ": expert_offsets must have E + 1 = ", num_experts + 1,
               " entries, got ", expert_offsets.size(0));
  MOEJIT_CHECK(num_experts >= 1 && n >= 1 && k >= 1, op, ": empty b ", b.sizes());
  MOEJIT_CHECK(k % 16 == 0, op, ": K must be a multiple of 16 (16-byte aligned int8 rows), got ", k);
  MOEJIT_CHECK(rows < (int64_t{1} << 31) && n < (int64_t{1} << 31) && num_experts < (int64_t{1} << 20), op,
               ": shapes too large (rows ", rows, ", N ", n, ", E ", num_experts, ")");
  MOEJIT_CHECK(reinterpret_cast<uintptr_t>(a.data_ptr()) % 16 == 0 && reinterpret_cast<uintptr_t>(b.data_ptr()) % 16 == 0,
               op, ": a and b must be 16-byte aligned");
  return {rows, num_experts, n, k};
}

at::Tensor int8_grouped_mm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                           const at::Tensor& b_scale, const at::Tensor& expert_offsets, at::ScalarType out_dtype) {
  constexpr const char* op = "int8_grouped_mm";
  const auto [rows, num_experts, n, k] = check_int8_grouped_operands(op, a, b, expert_offsets, out_dtype);
  // |a . b| <= 128 * 128 * K must fit the int32 accumulator (the MMA saturates rather than wraps).
  MOEJIT_CHECK(k * 128 * 128 < (int64_t{1} << 31), op, ": K = ", k, " could overflow the int32 accumulator (max 131071)");
  MOEJIT_CHECK_CUDA(a_scale);
  MOEJIT_CHECK_CUDA(b_scale);
  MOEJIT_CHECK(a_scale.scalar_type() == at::kFloat && b_scale.scalar_type() == at::kFloat, op,
               ": a_scale and b_scale must be float32, got ", a_scale.scalar_type(), " and ", b_scale.scalar_type());
  MOEJIT_CHECK(a_scale.is_contiguous() && b_scale.is_contiguous(), op, ": a_scale and b_scale must be contiguous");
  MOEJIT_CHECK(a_scale.device() == a.device() && b_scale.device() == a.device(), op,
               ": a_scale and b_scale must be on a's device");
  MOEJIT_CHECK(a_scale.numel() == 1 || (a_scale.numel() == rows && a_scale.dim() >= 1 && a_scale.size(0) == rows), op,
               ": a_scale must have 1 element (per-tensor) or [rows] = ", rows, " (per-token), got ", a_scale.sizes());
  MOEJIT_CHECK(b_scale.dim() >= 1 && b_scale.size(0) == num_experts && (b_scale.numel() == num_experts || b_scale.numel() == num_experts * n),
               op, ": b_scale must be [E] (per-tensor) or [E, N] (per-channel) with E = ", num_experts, ", N = ", n,
               ", got ", b_scale.sizes());

  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({rows, n}, a.options().dtype(out_dtype));
  if (rows == 0) return out;
  cudaStream_t stream = current_stream();

  int8_gemm::PreparedLaunch launch = int8_gemm::prepare_launch(op, a, b, out, expert_offsets, stream);
  int8_gemm::GroupedGemmParams& params = launch.params;
  params.a_scale = a_scale.data_ptr<float>();
  params.b_scale = b_scale.data_ptr<float>();
  params.a_scale_per_row = a_scale.numel() != 1;
  params.b_scale_per_channel = b_scale.numel() != num_experts;
  int8_gemm::launch_for_dtype<false, false>(launch, out_dtype, stream);
  MOEJIT_CUDA_LAUNCH_CHECK();
  return out;
}

}  // namespace moejit
