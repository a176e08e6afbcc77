// INT8 hybrid blockwise ("Q/F") grouped GEMM (sm80_int8 module); format and arithmetic in design.md:
//
//   P[m, n, b] = sum_{k in block b} a[m, k] * b[e, n, k]                 int32 (tensor-core MMA, one K tile = one block)
//   I[m, n, g] = sum_{b in g} Q[m, b] * P[m, n, b]                       int32 (IMAD)
//   y[m, n]    = b_scale[e, n] * sum_g F[m, g] * float(I[m, n, g])        float32 -> bf16 / fp16
//
// super_group_size is the effective super group: the caller splits a longer requested one into pieces with
// super_group_size * block_size * 127^2 * q_max < 2^31, so I never overflows for inputs in [-127, 127] and
// Q in [1, q_max]; this entry point rejects anything larger. The kernels are in int8_grouped_gemm_sm80.cuh and
// int8_grouped_gemm_sm90.cuh.
//
// With a_rows (int32 [R]), the GEMM has R rows and row m is a[min(a_rows[m] / a_rows_div, a.size(0) - 1)]: a_q,
// a_f and the output are [R, ...]; with moe_permute's sort_idx and topk, the MoE layer's GEMM1 reads the token
// rows without a permuted copy (MOEJIT_INT8_HYBRID_GATHER=1).

#include "common.h"
#include "int8_grouped_gemm.h"
#include "int8_grouped_gemm_sm80.h"
#include "ops.h"

namespace moejit {
at::Tensor int8_hybrid_grouped_mm(const at::Tensor& a, const at::Tensor& a_q, const at::Tensor& a_f,
                                  const at::Tensor& b, const at::Tensor& b_scale, const at::Tensor& expert_offsets,
                                  int64_t block_size, int64_t super_group_size, int64_t q_max,
                                  at::ScalarType out_dtype, const std::optional<at::Tensor>& a_rows,
                                  int64_t a_rows_div) {
  constexpr const char* op = "int8_hybrid_grouped_mm";
  const auto [src_rows, num_experts, n, k] = check_int8_grouped_operands(op, a, b, expert_offsets, out_dtype);
  int64_t rows = src_rows;
  if (a_rows.has_value()) {
    const at::Tensor& idx = *a_rows;
    MOEJIT_CHECK_CUDA(idx);
    MOEJIT_CHECK(idx.scalar_type() == at::kInt, op, ": a_rows must be int32, got ", idx.scalar_type());
    MOEJIT_CHECK(idx.dim() == 1 && idx.is_contiguous(), op, ": a_rows must be a contiguous 1-D tensor, got ",
                 idx.sizes());
    MOEJIT_CHECK(idx.device() == a.device(), op, ": a_rows must be on a's device");
    MOEJIT_CHECK(a_rows_div >= 1 && a_rows_div < (int64_t{1} << 31), op, ": a_rows_div must be >= 1, got ",
                 a_rows_div);
    rows = idx.size(0);
    MOEJIT_CHECK(rows < (int64_t{1} << 31), op, ": too many rows (", rows, ")");
    MOEJIT_CHECK(rows == 0 || src_rows >= 1, op, ": a has no rows to gather from");
  } else {
    MOEJIT_CHECK(a_rows_div == 1, op, ": a_rows_div is only meaningful with a_rows");
  }
  MOEJIT_CHECK(block_size == int8_gemm::kTileK, op, ": block_size must be ", int8_gemm::kTileK,
               " (the kernel's K tile is one quantization block), got ", block_size);
  MOEJIT_CHECK(k % block_size == 0, op, ": K = ", k, " must be a multiple of block_size = ", block_size);
  MOEJIT_CHECK(q_max >= 1 && q_max <= (int64_t{1} << 20), op, ": q_max must be in [1, 2^20], got ", q_max);
  MOEJIT_CHECK(super_group_size >= 1, op, ": super_group_size must be >= 1, got ", super_group_size);
  const int64_t per_block = block_size * 127 * 127 * q_max;  // max |Q * P| of one block
  MOEJIT_CHECK(super_group_size <= ((int64_t{1} << 31) - 1) / per_block &&
                   super_group_size * per_block < (int64_t{1} << 31),
               op, ": super_group_size = ", super_group_size, " could overflow the int32 super-group sum (needs ",
               "super_group_size * block_size * 127^2 * q_max < 2^31, i.e. super_group_size <= ",
               ((int64_t{1} << 31) - 1) / per_block, " for block_size = ", block_size, ", q_max = ", q_max,
               "); split the super group into safe pieces (moejit.ops.int8_hybrid_grouped_mm does)");
  const int64_t num_blocks = k / block_size;
  const int64_t num_groups = ceil_div(num_blocks, super_group_size);

  MOEJIT_CHECK_CUDA(a_q);
  MOEJIT_CHECK_CUDA(a_f);
  MOEJIT_CHECK_CUDA(b_scale);
  MOEJIT_CHECK(a_q.scalar_type() == at::kInt, op, ": a_q must be int32, got ", a_q.scalar_type());
  MOEJIT_CHECK(a_f.scalar_type() == at::kFloat, op, ": a_f must be float32, got ", a_f.scalar_type());
  MOEJIT_CHECK(b_scale.scalar_type() == at::kFloat, op, ": b_scale must be float32, got ", b_scale.scalar_type());
  MOEJIT_CHECK(a_q.is_contiguous() && a_f.is_contiguous() && b_scale.is_contiguous(), op,
               ": a_q, a_f and b_scale must be contiguous");
  MOEJIT_CHECK(a_q.device() == a.device() && a_f.device() == a.device() && b_scale.device() == a.device(), op,
               ": a_q, a_f and b_scale must be on a's device");
  MOEJIT_CHECK(a_q.dim() == 2 && a_q.size(0) == rows && a_q.size(1) == num_blocks, op, ": a_q must be [rows, K / ",
               "block_size] = [", rows, ", ", num_blocks, "], got ", a_q.sizes());
  MOEJIT_CHECK(a_f.dim() == 2 && a_f.size(0) == rows && a_f.size(1) == num_groups, op,
               ": a_f must be [rows, ceil(K / block_size / super_group_size)] = [", rows, ", ", num_groups, "], got ",
               a_f.sizes());
  MOEJIT_CHECK(b_scale.dim() == 2 && b_scale.size(0) == num_experts && b_scale.size(1) == n, op,
               ": b_scale must be [E, N] = [", num_experts, ", ", n, "] (per output channel), got ", b_scale.sizes());

  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({rows, n}, a.options().dtype(out_dtype));
  if (rows == 0) return out;
  cudaStream_t stream = current_stream();

  const int8_gemm::RowGather gather{a_rows.has_value() ? *a_rows : a, a_rows_div};
  int8_gemm::PreparedLaunch launch =
      int8_gemm::prepare_launch(op, a, b, out, expert_offsets, stream, a_rows.has_value() ? &gather : nullptr);
  int8_gemm::GroupedGemmParams& params = launch.params;
  params.b_scale = b_scale.data_ptr<float>();
  params.b_scale_per_channel = true;
  params.a_q = a_q.data_ptr<int32_t>();
  params.a_f = a_f.data_ptr<float>();
  params.num_blocks = static_cast<int>(num_blocks);
  params.num_groups = static_cast<int>(num_groups);
  params.super_group = static_cast<int>(super_group_size);
  num_groups > 1 ? int8_gemm::launch_for_dtype<true, true>(launch, out_dtype, stream)
                 : int8_gemm::launch_for_dtype<true, false>(launch, out_dtype, stream);
  MOEJIT_CUDA_LAUNCH_CHECK();
  return out;
}

}  // namespace moejit
