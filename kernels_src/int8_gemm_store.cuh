// Output stores shared by the INT8 grouped GEMM kernels (int8_grouped_gemm_sm80.cuh, int8_grouped_gemm_sm90.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cutlass/cutlass.h"

namespace moejit {
namespace int8_gemm {

// Two outputs rounded to OutT, packed into 32 bits (the first in the low half).
template <typename OutT>
CUTLASS_DEVICE uint32_t pack_pair(float x, float y) {
  if constexpr (std::is_same<OutT, __nv_bfloat16>::value) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(x, y);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// Two adjacent outputs x (column c) and y (column c + 1, written only if `both`), rounded to OutT; one 32-bit store
// when both are written and the address is 4-byte aligned (`vector_ok`: N even).
template <typename OutT>
CUTLASS_DEVICE void store_pair(OutT* dst, float x, float y, bool both, bool vector_ok) {
  if (both && vector_ok) {
    *reinterpret_cast<uint32_t*>(dst) = pack_pair<OutT>(x, y);
  } else {
    dst[0] = static_cast<OutT>(x);
    if (both) dst[1] = static_cast<OutT>(y);
  }
}

}  // namespace int8_gemm
}  // namespace moejit
