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
// What a grouped GEMM reads first is not the first bytes of its first experts: every resident tile streams its
// rows' K from the start, so at first all of them read the start of their rows. The prefetch is therefore cut in
// units, one per (expert, K slice, weight row) in the GEMM's order (experts in order; split-K groups (e, s) in
// order; an expert's rows in order), and brings the first `prefix` bytes of each of the first `units` units: the
// head of what the first wave of tiles (the host's `units`: multiprocessors × weight rows per tile) reads.
//
// L2Prefetch: expert e's weights are [base + e · expert_bytes, + expert_bytes), `rows` rows of `row_bytes`, each
// cut in `slices` equal K slices; prefix is a multiple of 16 no longer than a slice (host-checked, as the 16-byte
// alignment of the base and of row_bytes / slices). units == 0: off. Which experts are hit comes from the caller:
// expert_offsets (offsets[e + 1] > offsets[e]) or a bitmap of the routing.
#pragma once

#include <cstdint>

namespace moejit {

struct L2Prefetch {
  const uint8_t* base = nullptr;
  int64_t expert_bytes = 0;
  int64_t rows = 0;                   // weight rows per expert
  int64_t row_bytes = 0;
  int32_t slices = 1;                 // K slices per row (the GEMM's split-K)
  int32_t prefix = 0;                 // bytes prefetched from the start of each (row, slice)
  int64_t units = 0;                  // (expert, slice, row) units prefetched over all CTAs; 0: off
  const int32_t* offsets = nullptr;   // expert_offsets [E + 1] (for prefetch_from_offsets), or unused
  int32_t num_experts = 0;
  int32_t mode = 0;                   // PROBE: 0 bulk prefetch, 1 prefetch.global.L2 per line, 2 evict_last lines
};

__device__ __forceinline__ void l2_prefetch_bytes(const void* ptr, uint32_t bytes, int mode = 0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (mode == 1) {
    for (uint32_t o = 0; o < bytes; o += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(static_cast<const char*>(ptr) + o));
  } else if (mode == 2) {
    for (uint32_t o = 0; o < bytes; o += 128) asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(static_cast<const char*>(ptr) + o));
  } else {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(ptr), "r"(bytes) : "memory");
  }
#else
  (void)ptr;
  (void)bytes;
  (void)mode;
#endif
}

// One whole warp: this CTA's share (units u with u % parts == part, counted over the whole prefetch) of the first
// pf.units units of the experts e with hit(e), in increasing e. Every lane gets the same hit(e) answers.
template <class Hit>
__device__ void prefetch_hit_experts(const L2Prefetch& pf, Hit&& hit, int part, int parts) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t per_expert = pf.rows * pf.slices;
  const int64_t slice_bytes = pf.row_bytes / pf.slices;
  int64_t left = pf.units;
  int64_t ord = 0;  // units of the prefetch before this expert's
  for (int e0 = 0; e0 < pf.num_experts && left > 0; e0 += 32) {
    const int e = e0 + lane;
    unsigned mask = __ballot_sync(0xffffffffu, e < pf.num_experts && hit(e));
    while (mask != 0 && left > 0) {
      const int ex = e0 + __ffs(mask) - 1;
      mask &= mask - 1;
      const int64_t take = left < per_expert ? left : per_expert;
      const uint8_t* p = pf.base + static_cast<int64_t>(ex) * pf.expert_bytes;
      // this CTA's units of the expert: c0, c0 + parts, ... (c0 ≡ part - ord mod parts), spread over the lanes
      const int64_t c0 = ((part - ord) % parts + parts) % parts;
      for (int64_t u = c0 + static_cast<int64_t>(lane) * parts; u < take; u += 32 * static_cast<int64_t>(parts)) {
        const int64_t s = u / pf.rows, r = u - s * pf.rows;  // slice-major: the split-K groups (e, s) in order
        l2_prefetch_bytes(p + r * pf.row_bytes + s * slice_bytes, static_cast<uint32_t>(pf.prefix), pf.mode);
      }
      ord += take;
      left -= take;
    }
  }
}

// The hit experts from expert_offsets (one whole warp; pf.offsets set).
__device__ __forceinline__ void prefetch_from_offsets(const L2Prefetch& pf, int part, int parts) {
  const int32_t* off = pf.offsets;
  prefetch_hit_experts(pf, [off](int e) { return off[e + 1] > off[e]; }, part, parts);
}

}  // namespace moejit
