// Host entry of the SM90 FP8 grouped GEMM: argument checks, scale-mode detection, workspace allocation, dispatch
// to the tile configuration the caller chose (moejit/ops/fp8.py picks it from host-known sizes). The CUTLASS
// kernels live in fp8_grouped_gemm_sm90_inst_*.cu (see the .cuh for the design).

#define MOEJIT_FP8_GG_DECLARATIONS_ONLY
#include "fp8_grouped_gemm_sm90.cuh"

#include "common.h"
#include "ops.h"

namespace moejit {
namespace {

using sm90_fp8::GemmConfig;
using sm90_fp8::OutType;

template <GemmConfig C, OutType O>
void launch(sm90_fp8::GroupedGemmParams& p, const at::Tensor& like) {
  const size_t bytes = sm90_fp8::workspace_bytes<C, O>(p.num_experts * p.k_splits, p.sm_count);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes) + 256}, like.options().dtype(at::kByte));
  const uintptr_t base = reinterpret_cast<uintptr_t>(workspace.data_ptr());
  p.workspace = reinterpret_cast<void*>((base + 255) / 256 * 256);
  const char* err = sm90_fp8::run_grouped_gemm<C, O>(p);
  MOEJIT_CHECK(err == nullptr, "cutlass_fp8_grouped_mm: ", err ? err : "");
  MOEJIT_CUDA_LAUNCH_CHECK();
}

template <GemmConfig C>
void launch_config(OutType out_type, sm90_fp8::GroupedGemmParams& p, const at::Tensor& like) {
  switch (out_type) {
    case OutType::kBF16: launch<C, OutType::kBF16>(p, like); break;
    case OutType::kFP16: launch<C, OutType::kFP16>(p, like); break;
    default: launch<C, OutType::kF32>(p, like); break;
  }
}

}  // namespace

at::Tensor cutlass_fp8_grouped_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& expert_offsets,
                                  const at::Tensor& a_scale, const at::Tensor& b_scale, at::ScalarType out_dtype,
                                  int64_t config, int64_t k_splits) {
  constexpr const char* op = "cutlass_fp8_grouped_mm";
  MOEJIT_CHECK_CUDA(a);
  MOEJIT_CHECK_CUDA(b);
  MOEJIT_CHECK_CUDA(expert_offsets);
  MOEJIT_CHECK_CUDA(a_scale);
  MOEJIT_CHECK_CUDA(b_scale);
  MOEJIT_CHECK_DTYPE(a, at::kFloat8_e4m3fn);
  MOEJIT_CHECK_DTYPE(b, at::kFloat8_e4m3fn);
  MOEJIT_CHECK_DTYPE(expert_offsets, at::kInt);
  MOEJIT_CHECK_DTYPE(a_scale, at::kFloat);
  MOEJIT_CHECK_DTYPE(b_scale, at::kFloat);
  MOEJIT_CHECK(a.dim() == 2 && b.dim() == 3, op, ": a must be [rows, K] and b [E, N, K]");
  MOEJIT_CHECK_CONTIGUOUS(a);
  MOEJIT_CHECK_CONTIGUOUS(b);
  MOEJIT_CHECK_CONTIGUOUS(expert_offsets);
  MOEJIT_CHECK_CONTIGUOUS(a_scale);
  MOEJIT_CHECK_CONTIGUOUS(b_scale);
  const int64_t rows = a.size(0), k = a.size(1), e = b.size(0), n = b.size(1);
  MOEJIT_CHECK(b.size(2) == k, op, ": b is [E, N, K] = ", b.sizes(), " but a has K = ", k);
  MOEJIT_CHECK(expert_offsets.dim() == 1 && expert_offsets.size(0) == e + 1, op, ": expert_offsets must be [E + 1]");
  // K = 0 would run no MMA and store uninitialized accumulators
  MOEJIT_CHECK(n > 0 && k > 0 && n % 16 == 0 && k % 16 == 0, op, ": N (", n, ") and K (", k,
               ") must be positive multiples of 16");
  MOEJIT_CHECK(e >= 1 && e < (int64_t{1} << 20), op, ": bad number of experts ", e);
  MOEJIT_CHECK(rows < (int64_t{1} << 31) && n < (int64_t{1} << 31) && k < (int64_t{1} << 31), op,
               ": sizes must fit in int32");
  MOEJIT_CHECK(a_scale.numel() == 1 || a_scale.numel() == rows, op, ": a_scale must have 1 (per tensor) or rows = ",
               rows, " (per token) elements, got ", a_scale.sizes());
  MOEJIT_CHECK(b_scale.numel() == e || b_scale.numel() == e * n, op, ": b_scale must be [E] (per tensor) or [E, N] ",
               "(per output channel), got ", b_scale.sizes());
  MOEJIT_CHECK(out_dtype == at::kBFloat16 || out_dtype == at::kHalf || out_dtype == at::kFloat, op,
               ": out_dtype must be bfloat16, float16 or float32");
  MOEJIT_CHECK(config >= 0 && config < static_cast<int64_t>(GemmConfig::kNumConfigs), op, ": unknown config ",
               config, " (0: swap16, 1: swap32, 2: swap64, 3: swap96, 4: coop128, 5: wide16)");
  MOEJIT_CHECK(k_splits >= 1 && k_splits <= 16 && k % (16 * k_splits) == 0, op, ": k_splits (", k_splits,
               ") must be in [1, 16] and divide K (", k, ") into multiples of 16");
  MOEJIT_CHECK(e * k_splits < (int64_t{1} << 20), op, ": too many groups (E · k_splits)");
  for (const at::Tensor* t : {&b, &expert_offsets, &a_scale, &b_scale}) {
    MOEJIT_CHECK(t->device() == a.device(), op, ": all tensors must be on ", a.device());
  }
  for (const at::Tensor* t : {&a, &b}) {
    MOEJIT_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, op, ": operands must be 16-byte aligned");
  }

  at::Tensor out = k_splits == 1 ? at::empty({rows, n}, a.options().dtype(out_dtype))
                                 : at::empty({k_splits, rows, n}, a.options().dtype(out_dtype));
  if (rows == 0) return out;
  const c10::cuda::CUDAGuard guard(a.device());
  sm90_fp8::GroupedGemmParams p{};
  p.a = a.data_ptr();
  p.b = b.data_ptr();
  p.out = out.data_ptr();
  p.expert_offsets = expert_offsets.data_ptr<int32_t>();
  p.a_scale = a_scale.data_ptr<float>();
  p.b_scale = b_scale.data_ptr<float>();
  p.a_per_row = a_scale.numel() != 1;
  p.b_per_col = b_scale.numel() != e;
  p.num_experts = static_cast<int>(e);
  p.k_splits = static_cast<int>(k_splits);
  p.rows = rows;
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.device = a.get_device();
  p.sm_count = sm_count(p.device);
  p.stream = current_stream();
  const OutType out_type = out_dtype == at::kBFloat16 ? OutType::kBF16
                           : out_dtype == at::kHalf   ? OutType::kFP16
                                                      : OutType::kF32;
  switch (static_cast<GemmConfig>(config)) {
    case GemmConfig::kSwap16: launch_config<GemmConfig::kSwap16>(out_type, p, a); break;
    case GemmConfig::kSwap32: launch_config<GemmConfig::kSwap32>(out_type, p, a); break;
    case GemmConfig::kSwap64: launch_config<GemmConfig::kSwap64>(out_type, p, a); break;
    case GemmConfig::kSwap96: launch_config<GemmConfig::kSwap96>(out_type, p, a); break;
    case GemmConfig::kWide16: launch_config<GemmConfig::kWide16>(out_type, p, a); break;
    default: launch_config<GemmConfig::kCoop128>(out_type, p, a); break;
  }
  return out;
}

}  // namespace moejit
