// Host entry points of every moejit op, grouped by kernel family. Registered in bindings.cpp.
#pragma once

#include <ATen/ATen.h>
#include <tuple>

namespace moejit {

// activation.cu
at::Tensor silu_and_mul(const at::Tensor& input);

// permute.cu
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_permute(const at::Tensor& hidden,
                                                                       const at::Tensor& topk_ids,
                                                                       int64_t num_experts);
at::Tensor moe_unpermute(const at::Tensor& rows, const at::Tensor& topk_weights, const at::Tensor& inv_idx,
                         std::optional<at::ScalarType> out_dtype);
at::Tensor moe_problem_sizes(const at::Tensor& expert_offsets, int64_t n, int64_t k, bool swap_ab);

// align.cu
std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_align_block_size(const at::Tensor& topk_ids, int64_t num_experts,
                                                                    int64_t block_m);

}  // namespace moejit

namespace moejit {
// ---- sm90_fp8 module: declarations go here.
// fp8_quant.cu
std::tuple<at::Tensor, at::Tensor> fp8_quant(const at::Tensor& x, const std::optional<at::Tensor>& scale,
                                             bool per_token, const std::optional<at::Tensor>& num_rows);
std::tuple<at::Tensor, at::Tensor> silu_mul_fp8_quant(const at::Tensor& x,
                                                      const std::optional<at::Tensor>& scale, bool per_token,
                                                      const std::optional<at::Tensor>& num_rows,
                                                      std::optional<at::ScalarType> round_dtype);
// (q, scale, expert_offsets, sort_idx, inv_idx): moe_permute + fp8_quant for up to 1024 slots, one launch.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fp8_permute_quant(
    const at::Tensor& hidden, const at::Tensor& topk_ids, int64_t num_experts, const std::optional<at::Tensor>& scale,
    bool per_token);
// fp8_grouped_gemm_sm90.cu
at::Tensor cutlass_fp8_grouped_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& expert_offsets,
                                  const at::Tensor& a_scale, const at::Tensor& b_scale, at::ScalarType out_dtype,
                                  int64_t config, int64_t k_splits);

// ---- sm80_int8 module: declarations go here.
// int8_grouped_gemm.cu: out = a_scale * b_scale * (a . b^T), per-tensor or per-token x per-channel scales.
at::Tensor int8_grouped_mm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                           const at::Tensor& b_scale, const at::Tensor& expert_offsets, at::ScalarType out_dtype);
// int8_hybrid_grouped_gemm.cu: hybrid blockwise Q/F activations x per-channel INT8 weights.
at::Tensor int8_hybrid_grouped_mm(const at::Tensor& a, const at::Tensor& a_q, const at::Tensor& a_f,
                                  const at::Tensor& b, const at::Tensor& b_scale, const at::Tensor& expert_offsets,
                                  int64_t block_size, int64_t super_group_size, int64_t q_max,
                                  at::ScalarType out_dtype, const std::optional<at::Tensor>& a_rows,
                                  int64_t a_rows_div);
}  // namespace moejit
