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
at::Tensor moe_unpermute(const at::Tensor& rows, const at::Tensor& topk_weights, const at::Tensor& inv_idx);
at::Tensor moe_problem_sizes(const at::Tensor& expert_offsets, int64_t n, int64_t k, bool swap_ab);

}  // namespace moejit

namespace moejit {
// ---- sm90_fp8 module: declarations go here.

// ---- sm80_int8 module: declarations go here.
}  // namespace moejit
