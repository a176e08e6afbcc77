// Gated activations: silu_and_mul(x)[t, i] = silu(x[t, i]) * x[t, N + i] for x of shape [T, 2N].

#include "common.h"
#include "ops.h"

namespace moejit {
namespace {

// accurate expf, as the fused SiLU·mul + FP8 quantization (fp8_quant.cu) and the reference: the two pipelines agree
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// One block per row. kVec elements per thread per step; kVec > 1 uses 16-byte loads and stores.
template <typename T, int kVec>
__global__ void silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t n) {
  const int64_t row = blockIdx.x;
  const T* gate = in + row * 2 * n;
  const T* up = gate + n;
  T* dst = out + row * n;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kVec; i < n; i += static_cast<int64_t>(blockDim.x) * kVec) {
    if constexpr (kVec == 1) {
      dst[i] = static_cast<T>(silu(static_cast<float>(gate[i])) * static_cast<float>(up[i]));
    } else {
      static_assert(sizeof(T) * kVec == 16, "vector width must be 16 bytes");
      uint4 g4 = *reinterpret_cast<const uint4*>(gate + i);
      uint4 u4 = *reinterpret_cast<const uint4*>(up + i);
      uint4 o4;
      const T* g = reinterpret_cast<const T*>(&g4);
      const T* u = reinterpret_cast<const T*>(&u4);
      T* o = reinterpret_cast<T*>(&o4);
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        o[v] = static_cast<T>(silu(static_cast<float>(g[v])) * static_cast<float>(u[v]));
      }
      *reinterpret_cast<uint4*>(dst + i) = o4;
    }
  }
}

}  // namespace

at::Tensor silu_and_mul(const at::Tensor& input) {
  MOEJIT_CHECK_CUDA(input);
  MOEJIT_CHECK(input.dim() == 2, "silu_and_mul: input must be 2-D [T, 2N], got ", input.sizes());
  MOEJIT_CHECK(input.size(1) % 2 == 0, "silu_and_mul: input's last dim must be even, got ", input.size(1));
  MOEJIT_CHECK_CONTIGUOUS(input);
  const int64_t tokens = input.size(0);
  const int64_t n = input.size(1) / 2;
  at::Tensor out = at::empty({tokens, n}, input.options());
  if (tokens == 0 || n == 0) return out;
  const c10::cuda::CUDAGuard guard(input.device());
  cudaStream_t stream = current_stream();
  dispatch_float16(input.scalar_type(), "silu_and_mul input", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int kVec = 16 / sizeof(T);
    const auto* in_ptr = reinterpret_cast<const T*>(input.data_ptr());
    auto* out_ptr = reinterpret_cast<T*>(out.data_ptr());
    const bool vectorized = n % kVec == 0 && reinterpret_cast<uintptr_t>(in_ptr) % 16 == 0;
    const int64_t per_thread = vectorized ? kVec : 1;
    const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, ceil_div(n, per_thread))));
    if (vectorized) {
      silu_and_mul_kernel<T, kVec><<<tokens, threads, 0, stream>>>(out_ptr, in_ptr, n);
    } else {
      silu_and_mul_kernel<T, 1><<<tokens, threads, 0, stream>>>(out_ptr, in_ptr, n);
    }
    MOEJIT_CUDA_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace moejit
