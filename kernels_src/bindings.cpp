// The one bindings file: op schemas and CUDA implementations for every JIT module.
//
// Each module compiles this file with -DMOEJIT_MODULE_<NAME>, so it registers only its own ops. Modules are separate
// shared libraries that add to the same `moejit` namespace, hence TORCH_LIBRARY_FRAGMENT (a plain TORCH_LIBRARY may
// appear once per namespace in a process). No pybind11: the libraries do not depend on the Python version.
// Fake (meta) implementations live in Python, in moejit/registry.py.

#include <torch/library.h>

#include "ops.h"

#if defined(MOEJIT_MODULE_COMMON)
TORCH_LIBRARY_FRAGMENT(moejit, m) {
  m.def("silu_and_mul(Tensor input) -> Tensor");
  m.def("moe_permute(Tensor hidden, Tensor topk_ids, int num_experts)"
        " -> (Tensor rows, Tensor expert_offsets, Tensor sort_idx, Tensor inv_idx)");
  m.def("moe_unpermute(Tensor rows, Tensor topk_weights, Tensor inv_idx, ScalarType? out_dtype=None) -> Tensor");
  m.def("moe_problem_sizes(Tensor expert_offsets, int n, int k, bool swap_ab=False) -> Tensor");
  m.def("moe_align_block_size(Tensor topk_ids, int num_experts, int block_m)"
        " -> (Tensor sorted_ids, Tensor expert_ids, Tensor num_post_pad)");
}
TORCH_LIBRARY_IMPL(moejit, CUDA, m) {
  m.impl("silu_and_mul", &moejit::silu_and_mul);
  m.impl("moe_permute", &moejit::moe_permute);
  m.impl("moe_unpermute", &moejit::moe_unpermute);
  m.impl("moe_problem_sizes", &moejit::moe_problem_sizes);
  m.impl("moe_align_block_size", &moejit::moe_align_block_size);
}
#endif

#if defined(MOEJIT_MODULE_SM90_FP8)
// SM90 FP8 module (CUTLASS 3.x grouped GEMMs, FP8 quantization): registrations go here.
TORCH_LIBRARY_FRAGMENT(moejit, m) {
  m.def("fp8_quant(Tensor x, Tensor? scale, bool per_token, Tensor? num_rows) -> (Tensor q, Tensor scale)");
  m.def("silu_mul_fp8_quant(Tensor x, Tensor? scale, bool per_token, Tensor? num_rows, ScalarType? round_dtype)"
        " -> (Tensor q, Tensor scale)");
  m.def("fp8_permute_quant(Tensor hidden, Tensor topk_ids, int num_experts, Tensor? scale, bool per_token)"
        " -> (Tensor q, Tensor scale, Tensor expert_offsets, Tensor sort_idx, Tensor inv_idx)");
  m.def("cutlass_fp8_grouped_mm(Tensor a, Tensor b, Tensor expert_offsets, Tensor a_scale, Tensor b_scale,"
        " ScalarType out_dtype, int config, int k_splits=1) -> Tensor");
}
TORCH_LIBRARY_IMPL(moejit, CUDA, m) {
  m.impl("fp8_quant", &moejit::fp8_quant);
  m.impl("silu_mul_fp8_quant", &moejit::silu_mul_fp8_quant);
  m.impl("fp8_permute_quant", &moejit::fp8_permute_quant);
  m.impl("cutlass_fp8_grouped_mm", &moejit::cutlass_fp8_grouped_mm);
}
#endif

#if defined(MOEJIT_MODULE_SM80_INT8)
// SM80 INT8 module (CUTLASS 2.x grouped GEMMs: per-tensor and hybrid blockwise).
TORCH_LIBRARY_FRAGMENT(moejit, m) {
  m.def("int8_grouped_mm(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor expert_offsets,"
        " ScalarType out_dtype) -> Tensor");
  m.def("int8_hybrid_grouped_mm(Tensor a, Tensor a_q, Tensor a_f, Tensor b, Tensor b_scale, Tensor expert_offsets,"
        " int block_size, int super_group_size, int q_max, ScalarType out_dtype, Tensor? a_rows=None,"
        " int a_rows_div=1) -> Tensor");
}
TORCH_LIBRARY_IMPL(moejit, CUDA, m) {
  m.impl("int8_grouped_mm", &moejit::int8_grouped_mm);
  m.impl("int8_hybrid_grouped_mm", &moejit::int8_hybrid_grouped_mm);
}
#endif
