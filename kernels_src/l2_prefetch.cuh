// L2 prefetch of the expert weights the next GEMM reads first, issued by the small kernel that runs before it.
//
// At decode an MoE layer streams its experts' weights through two GEMMs at the HBM rate, and between them run
// kernels that move almost nothing (the front end: sort + quantize a few rows; SiLU·mul + quantize). HBM idles
// through those kernels and the launch gaps around them. The kernel before a GEMM can instead bring the first bytes
// that GEMM will read into L2: the GEMM's tiles go expert by expert (groups in expert order, an expert's weight
// rows in order, every tile streaming its rows' whole K), so "the first `budget` bytes of the hit experts'
// weights, concatenated in expert order" is what its first tiles read. `cp.async.bulk.prefetch.L2` is fire and
// forget: the issuing CTA does not wait for the bytes and may exit.
//
// L2Prefetch carries the weights (expert e's bytes are [base + e · expert_bytes, + expert_bytes), a multiple of
// 16 at a 16-byte aligned base, checked by the host) and the byte budget (a multiple of 16; 0: none). Which
// experts are hit comes from the caller: expert_offsets (offsets[e + 1] > offsets[e]) or a bitmap of the routing.
#pragma once

#include <cstdint>

namespace moejit {

struct L2Prefetch {
  const uint8_t* base = nullptr;
  int64_t expert_bytes = 0;
  int64_t budget = 0;                 // bytes to prefetch over all CTAs; 0: off
  const int32_t* offsets = nullptr;   // expert_offsets [E + 1] (for prefetch_from_offsets), or unused
  int32_t num_experts = 0;
};

constexpr int64_t kL2PrefetchChunk = 16384;  // bytes per prefetch instruction

__device__ __forceinline__ void l2_prefetch_bytes(const void* ptr, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(ptr), "r"(bytes) : "memory");
#else
  (void)ptr;
  (void)bytes;
#endif
}

// One whole warp: this CTA's share (chunks c with c % parts == part, counted over the whole prefetch) of the first
// pf.budget bytes of the experts e with hit(e), in increasing e. Every lane gets the same hit(e) answers.
template <class Hit>
__device__ void prefetch_hit_experts(const L2Prefetch& pf, Hit&& hit, int part, int parts) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  int64_t left = pf.budget;
  int64_t ord = 0;  // chunks of the prefetch before this expert's
  for (int e0 = 0; e0 < pf.num_experts && left > 0; e0 += 32) {
    const int e = e0 + lane;
    unsigned mask = __ballot_sync(0xffffffffu, e < pf.num_experts && hit(e));
    while (mask != 0 && left > 0) {
      const int ex = e0 + __ffs(mask) - 1;
      mask &= mask - 1;
      const int64_t bytes = left < pf.expert_bytes ? left : pf.expert_bytes;
      const int64_t chunks = (bytes + kL2PrefetchChunk - 1) / kL2PrefetchChunk;
      const uint8_t* p = pf.base + static_cast<int64_t>(ex) * pf.expert_bytes;
      // this CTA's chunks of the expert: c0, c0 + parts, ... (c0 ≡ part - ord mod parts), spread over the lanes
      const int64_t c0 = ((part - ord) % parts + parts) % parts;
      for (int64_t c = c0 + static_cast<int64_t>(lane) * parts; c < chunks; c += 32 * static_cast<int64_t>(parts)) {
        const int64_t off = c * kL2PrefetchChunk;
        const int64_t size = bytes - off < kL2PrefetchChunk ? bytes - off : kL2PrefetchChunk;
        l2_prefetch_bytes(p + off, static_cast<uint32_t>(size));
      }
      ord += chunks;
      left -= bytes;
    }
  }
}

// The hit experts from expert_offsets (one whole warp; pf.offsets set).
__device__ __forceinline__ void prefetch_from_offsets(const L2Prefetch& pf, int part, int parts) {
  const int32_t* off = pf.offsets;
  prefetch_hit_experts(pf, [off](int e) { return off[e + 1] > off[e]; }, part, parts);
}

}  // namespace moejit
