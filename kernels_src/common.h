// Shared helpers for moejit kernels: argument checks and dtype dispatch. Header-only.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define MOEJIT_CHECK(cond, ...) TORCH_CHECK(cond, "moejit: ", __VA_ARGS__)
#define MOEJIT_CHECK_CUDA(t) MOEJIT_CHECK((t).is_cuda(), #t " must be a CUDA tensor")
#define MOEJIT_CHECK_CONTIGUOUS(t) MOEJIT_CHECK((t).is_contiguous(), #t " must be contiguous")
#define MOEJIT_CHECK_DTYPE(t, dt) MOEJIT_CHECK((t).scalar_type() == (dt), #t " must be " #dt ", got ", (t).scalar_type())
#define MOEJIT_CUDA_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()

namespace moejit {

// The stream every op launches on (the caller's current stream, so ops capture into CUDA graphs).
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Calls fn with `scalar_t` bound to the CUDA type of a bf16/fp16/fp32 tensor.
template <typename Fn>
inline void dispatch_float16(at::ScalarType dtype, const char* what, Fn&& fn) {
  switch (dtype) {
    case at::ScalarType::BFloat16: fn(static_cast<__nv_bfloat16*>(nullptr)); break;
    case at::ScalarType::Half: fn(static_cast<__half*>(nullptr)); break;
    default: TORCH_CHECK(false, "moejit: ", what, " must be bfloat16 or float16, got ", dtype);
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace moejit
