// Shared helpers for moejit kernels: argument checks, dtype dispatch, the device's SM count. Header-only.
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

// Calls fn with a null pointer of the CUDA type of a bf16/fp16 tensor (the tag that names the element type).
template <typename Fn>
inline void dispatch_float16(at::ScalarType dtype, const char* what, Fn&& fn) {
  switch (dtype) {
    case at::ScalarType::BFloat16: fn(static_cast<__nv_bfloat16*>(nullptr)); break;
    case at::ScalarType::Half: fn(static_cast<__half*>(nullptr)); break;
    default: TORCH_CHECK(false, "moejit: ", what, " must be bfloat16 or float16, got ", dtype);
  }
}

// The same for bf16/fp16/fp32.
template <typename Fn>
inline void dispatch_float(at::ScalarType dtype, const char* what, Fn&& fn) {
  if (dtype == at::ScalarType::Float) {
    fn(static_cast<float*>(nullptr));
  } else {
    TORCH_CHECK(dtype == at::ScalarType::BFloat16 || dtype == at::ScalarType::Half, "moejit: ", what,
                " must be bfloat16, float16 or float32, got ", dtype);
    dispatch_float16(dtype, what, fn);
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Multiprocessors of `device` (cached per device), or of the current device.
inline int sm_count(int device) {
  static int cached[64] = {0};
  int n = 0;
  int* slot = device >= 0 && device < 64 ? &cached[device] : &n;
  if (!*slot) C10_CUDA_CHECK(cudaDeviceGetAttribute(slot, cudaDevAttrMultiProcessorCount, device));
  return *slot;
}
inline int sm_count() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  return sm_count(device);
}

}  // namespace moejit
