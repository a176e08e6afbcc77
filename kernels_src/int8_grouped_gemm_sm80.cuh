// INT8 grouped GEMM kernels for SM80+ (CUTLASS 2.x components): one persistent launch for all experts.
//
//   out[r, :] = epilogue(a[r, :] . b[e]^T) for every row r of expert e (rows grouped by expert, expert_offsets).
//
// Building blocks from CUTLASS: the SM80 threadblock MMA types of cutlass::gemm::threadblock::DefaultMma (predicated
// global tile iterators, cp.async shared-memory tile iterators, the warp-level tensor-core MMA mma.m16n8k32.s8 with
// saturating int32 accumulation). The mainloop below is our own: a cp.async multistage pipeline that exposes the end
// of every K tile, which the hybrid blockwise GEMM needs:
//
//   per-tensor:  acc   += a_tile . b_tile                                       (int32)
//   hybrid:      blk    = a_tile . b_tile        (one K tile == one quantization block, int32)
//                sg    += Q[row, block] * blk    (int32 IMAD, per super group)
//                acc_f += F[row, group] * float(sg)  at the end of every super group
//
// Overflow: |blk| <= 128 * 127^2 and Q <= q_max, so sg stays below 2^31 while super_group * 128 * 127^2 * q_max < 2^31
// (the host checks it). The epilogue applies the scales and writes bf16/fp16 pairs directly from registers.
//
// Scheduling: tile_offsets (launch_tile_schedule) is the exclusive prefix of per-expert tile counts; a grid of
// min(max_tiles, SMs * occupancy) CTAs strides over [0, tile_offsets[E]) and finds each tile's expert by binary
// search. Experts without rows own no tiles, nothing is read on the host, and the launch is CUDA-graph capturable.
#pragma once

#include <algorithm>
#include <mutex>

#include "cutlass/cutlass.h"
#include "cutlass/arch/memory_sm80.h"
#include "cutlass/gemm/gemm.h"
#include "cutlass/gemm/threadblock/default_mma.h"
#include "cutlass/layout/matrix.h"
#include "int8_grouped_gemm_sm80.h"
#include "int8_gemm_store.cuh"

namespace moejit {
namespace int8_gemm {

// Tile configuration: threadblock M x 64 x 128, warps of 32 x 32 x 128, mma.m16n8k32 (int8, saturating).
template <int kTileMRows>
struct TileConfig {
  static constexpr int kM = kTileMRows;
  static constexpr int kN = kTileN;
  static constexpr int kK = kTileK;
  static constexpr int kWarpM = 32;
  static constexpr int kWarpN = 32;
  static constexpr int kStages = 4;
  using ThreadblockShape = cutlass::gemm::GemmShape<kM, kN, kK>;
  using WarpShape = cutlass::gemm::GemmShape<kWarpM, kWarpN, kK>;
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 32>;
  using DefaultMma = cutlass::gemm::threadblock::DefaultMma<
      int8_t, cutlass::layout::RowMajor, 16,     // A [rows, K], K contiguous
      int8_t, cutlass::layout::ColumnMajor, 16,  // B^T: [K, N] column-major == b[e] [N, K], K contiguous
      int32_t, cutlass::layout::RowMajor, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, ThreadblockShape,
      WarpShape, InstructionShape, kStages, cutlass::arch::OpMultiplyAddSaturate>;
  using Mma = typename DefaultMma::ThreadblockMma;
  static constexpr int kWarpsM = kM / kWarpM;
  static constexpr int kWarpsN = kN / kWarpN;
  static constexpr int kThreads = kWarpsM * kWarpsN * 32;
  static constexpr int kSmemBytes = static_cast<int>(sizeof(typename Mma::Base::SharedStorage));
  // CTAs per SM the register allocation must allow (shared memory allows 2 / 3 on SM90, 1 / 2 on SM80). The
  // hybrid kernels keep a second accumulator set and spill a little under this cap (sm_90a SASS: 24 local
  // loads/stores per K tile at 64 rows, 118 at 128), but measured on an H200 (Qwen3.6 shape) the occupancy is worth
  // more: with one CTA per SM fewer and no spills the hybrid GEMMs ran 3-15% slower (M=64: GEMM2 134 vs 117 µs).
  static constexpr int kMinBlocks = kM == 128 ? 2 : 3;
};

// The multistage mainloop over one output tile. Hooks: hook.begin_tile(t) before the MMAs of K tile t and
// hook.end_tile(t, acc) right after its last MMA (acc then holds every product issued so far).
template <class Cfg>
struct Mainloop {
  using Mma = typename Cfg::Mma;
  using Base = typename Mma::Base;
  using SharedStorage = typename Base::SharedStorage;
  using IteratorA = typename Mma::IteratorA;
  using IteratorB = typename Mma::IteratorB;
  using SmemIteratorA = typename Mma::SmemIteratorA;
  using SmemIteratorB = typename Mma::SmemIteratorB;
  using WarpMma = typename Mma::Operator;
  using WarpIteratorA = typename WarpMma::IteratorA;
  using WarpIteratorB = typename WarpMma::IteratorB;
  using FragmentA = typename WarpMma::FragmentA;
  using FragmentB = typename WarpMma::FragmentB;
  using FragmentC = typename WarpMma::FragmentC;

  static constexpr int kStages = Base::kStages;
  static constexpr int kWarpSteps = Base::kWarpGemmIterations;  // k32 MMA steps per K tile
  static constexpr int kCopiesA = IteratorA::ThreadMap::Iterations::kCount;
  static constexpr int kCopiesB = IteratorB::ThreadMap::Iterations::kCount;
  static constexpr int kChunkA = (kCopiesA + kWarpSteps - 1) / kWarpSteps;
  static constexpr int kChunkB = (kCopiesB + kWarpSteps - 1) / kWarpSteps;
  static_assert(std::is_same<FragmentA, typename WarpMma::TransformedFragmentA>::value &&
                    std::is_same<FragmentB, typename WarpMma::TransformedFragmentB>::value,
                "int8 operands need no fragment transform");
  static_assert(Base::WarpCount::kK == 1, "no split-K across warps");

  SmemIteratorA smem_a;
  SmemIteratorB smem_b;
  WarpIteratorA warp_a;
  WarpIteratorB warp_b;
  int write_stage = 0;
  int read_stage = 0;

  CUTLASS_DEVICE Mainloop(SharedStorage& shared, int thread_idx, int warp_idx, int lane_idx)
      : smem_a(shared.operand_A_ref(), thread_idx),
        smem_b(shared.operand_B_ref(), thread_idx),
        warp_a(shared.operand_A_ref(), lane_idx),
        warp_b(shared.operand_B_ref(), lane_idx) {
    warp_a.add_tile_offset({warp_idx % Base::WarpCount::kM, 0});
    warp_b.add_tile_offset({0, warp_idx / Base::WarpCount::kM});
  }

  // Issues chunk `chunk` (of kWarpSteps) of the cp.async copies of the current global tile into the write stage.
  // Masked accesses (rows / columns past the extent, the K residue, tiles past the end) write zeros.
  template <int kChunk, int kCopies, class GlobalIt, class SmemIt>
  CUTLASS_DEVICE static void copy_chunk(GlobalIt& global, SmemIt& smem, int chunk) {
    using Access = typename GlobalIt::AccessType;
    constexpr int kBytes = static_cast<int>(sizeof(Access));  // one access per vector (asserted below)
    static_assert(kBytes == 16 && GlobalIt::kAccessesPerVector == 1, "cp.async.cg copies 16-byte accesses");
    global.set_iteration_index(chunk * kChunk * GlobalIt::kAccessesPerVector);
    smem.set_iteration_index(chunk * kChunk);
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kChunk; ++j) {
      if (chunk * kChunk + j < kCopies) {
        Access* dst = reinterpret_cast<Access*>(smem.get());
        CUTLASS_PRAGMA_UNROLL
        for (int v = 0; v < GlobalIt::kAccessesPerVector; ++v) {
          cutlass::arch::cp_async_zfill<kBytes, cutlass::arch::CacheOperation::Global>(dst + v, global.get(),
                                                                                     global.valid());
          ++global;
        }
        ++smem;
      }
    }
  }
  CUTLASS_DEVICE void copy_stage_chunk(IteratorA& it_a, IteratorB& it_b, int chunk) {
    copy_chunk<kChunkA, kCopiesA>(it_a, smem_a, chunk);
    copy_chunk<kChunkB, kCopiesB>(it_b, smem_b, chunk);
  }

  CUTLASS_DEVICE void advance_write_stage(IteratorA& it_a, IteratorB& it_b) {
    it_a.add_tile_offset({0, 1});
    it_b.add_tile_offset({1, 0});
    smem_a.add_tile_offset({0, 1});
    smem_b.add_tile_offset({1, 0});
    if (++write_stage == kStages) {
      smem_a.add_tile_offset({0, -kStages});
      smem_b.add_tile_offset({-kStages, 0});
      write_stage = 0;
    }
  }

  CUTLASS_DEVICE void advance_read_stage() {
    if (++read_stage == kStages) {
      warp_a.add_tile_offset({0, -kStages * kWarpSteps});
      warp_b.add_tile_offset({-kStages * kWarpSteps, 0});
      read_stage = 0;
    }
  }

  CUTLASS_DEVICE void load_fragments(FragmentA& frag_a, FragmentB& frag_b, int step) {
    warp_a.set_kgroup_index(step);
    warp_a.load(frag_a);
    ++warp_a;
    warp_b.set_kgroup_index(step);
    warp_b.load(frag_b);
    ++warp_b;
  }

  template <class Hook>
  CUTLASS_DEVICE void run(IteratorA it_a, IteratorB it_b, int k_tiles, FragmentC& acc, Hook& hook) {
    WarpMma warp_mma;
    // Prologue: stages 0 .. kStages-2 in flight.
    CUTLASS_PRAGMA_UNROLL
    for (int s = 0; s < kStages - 1; ++s) {
      it_a.clear_mask(s >= k_tiles);
      it_b.clear_mask(s >= k_tiles);
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < kWarpSteps; ++c) copy_stage_chunk(it_a, it_b, c);
      advance_write_stage(it_a, it_b);
      cutlass::arch::cp_async_fence();
    }
    cutlass::arch::cp_async_wait<kStages - 2>();
    __syncthreads();

    FragmentA frag_a[2];
    FragmentB frag_b[2];
    load_fragments(frag_a[0], frag_b[0], 0);

    for (int t = 0; t < k_tiles; ++t) {
      hook.begin_tile(t);
      // This iteration refills the stage of tile t-1 (all warps are past it) with tile t + kStages - 1.
      it_a.clear_mask(t + kStages - 1 >= k_tiles);
      it_b.clear_mask(t + kStages - 1 >= k_tiles);
      CUTLASS_PRAGMA_UNROLL
      for (int step = 0; step < kWarpSteps; ++step) {
        copy_stage_chunk(it_a, it_b, step);
        if (step == kWarpSteps - 1) {
          // Tile t+1 must have landed before its first fragments are read.
          cutlass::arch::cp_async_fence();
          advance_write_stage(it_a, it_b);
          cutlass::arch::cp_async_wait<kStages - 2>();
          __syncthreads();
          advance_read_stage();
        }
        load_fragments(frag_a[(step + 1) % 2], frag_b[(step + 1) % 2], (step + 1) % kWarpSteps);
        warp_mma(acc, frag_a[step % 2], frag_b[step % 2], acc);
      }
      hook.end_tile(t, acc);
    }
    // Drain the (empty) outstanding copy groups before the shared memory is reused by the next tile.
    cutlass::arch::cp_async_wait<0>();
    __syncthreads();
  }
};

// Position of accumulator element i of a warp's FragmentC (mma.m16n8 layout, MMA tiles visited column-major by
// CUTLASS's MmaTensorOp): row/column inside the warp tile.
template <class Cfg>
struct AccumulatorLayout {
  static constexpr int kMmaRows = Cfg::kWarpM / 16;
  static constexpr int kMmaCols = Cfg::kWarpN / 8;
  static constexpr int kRowsPerThread = kMmaRows * 2;  // two rows (g, g + 8) per 16-row MMA tile
  static constexpr int kCount = kMmaRows * kMmaCols * 4;
  // Row slot (0 .. kRowsPerThread-1) and coordinates of element i.
  CUTLASS_DEVICE static int row_slot(int i) { return ((i / 4) % kMmaRows) * 2 + ((i % 4) >> 1); }
  CUTLASS_DEVICE static int row_of_slot(int slot, int lane) { return (slot >> 1) * 16 + (slot & 1) * 8 + lane / 4; }
  CUTLASS_DEVICE static int col(int i, int lane) { return ((i / 4) / kMmaRows) * 8 + (lane % 4) * 2 + (i & 1); }
};

// The scales the epilogue needs, loaded at the start of the last K tile so their latency hides behind its MMAs.
template <class Cfg>
struct EpilogueScales {
  using Layout = AccumulatorLayout<Cfg>;
  static constexpr int kCols = Layout::kMmaCols * 2;  // columns per thread: 2 per 8-column MMA tile
  float row[Layout::kRowsPerThread];  // a_scale (per-tensor GEMM), F (hybrid, one super group) or 1
  float col[kCols];                   // weight scale of the thread's columns
  // Column (inside the warp tile) of column slot c, and the column slot of accumulator element i.
  CUTLASS_DEVICE static int col_of_slot(int c, int lane) { return (c >> 1) * 8 + (lane % 4) * 2 + (c & 1); }
  CUTLASS_DEVICE static int col_slot(int i) { return ((i / 4) / Layout::kMmaRows) * 2 + (i & 1); }
};

template <class Loader>
struct PlainHook {
  Loader& load_scales;
  int last_tile;
  template <class Frag>
  CUTLASS_DEVICE void end_tile(int, Frag&) {}
  CUTLASS_DEVICE void begin_tile(int t) {
    if (t == last_tile) load_scales();
  }
};

// Hybrid: per K tile (= quantization block) fold the block's int32 products into the super-group sum with the row's
// integer Q, and once per super group into the float accumulator with the row's F.
template <class Cfg, bool kMultiGroup, class Loader>
struct HybridHook {
  using Layout = AccumulatorLayout<Cfg>;
  using FragmentC = typename Mainloop<Cfg>::FragmentC;
  static constexpr int kRows = Layout::kRowsPerThread;

  const GroupedGemmParams& p;
  Loader& load_scales;
  int k_tiles;
  int row_g[kRows];  // global row of each row slot, or -1 past the expert's rows
  int32_t q_cur[kRows];
  int32_t q_next[kRows];
  float f_cur[kMultiGroup ? kRows : 1];
  FragmentC sg;                                   // int32 sum over the current super group
  float acc_f[kMultiGroup ? Layout::kCount : 1];  // float sum over finished super groups

  CUTLASS_DEVICE HybridHook(const GroupedGemmParams& params, Loader& loader, int tiles)
      : p(params), load_scales(loader), k_tiles(tiles) {}

  CUTLASS_DEVICE void load_q(int32_t (&dst)[kRows], int block) const {
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      dst[r] = row_g[r] >= 0 ? __ldg(p.a_q + static_cast<int64_t>(row_g[r]) * p.num_blocks + block) : 0;
    }
  }
  CUTLASS_DEVICE float load_f(int r, int group) const {
    return row_g[r] >= 0 ? __ldg(p.a_f + static_cast<int64_t>(row_g[r]) * p.num_groups + group) : 0.0f;
  }

  CUTLASS_DEVICE void begin_tile(int t) {
    if (t + 1 < k_tiles) load_q(q_next, t + 1);
    if constexpr (kMultiGroup) {
      if (t % p.super_group == 0) {
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) f_cur[r] = load_f(r, t / p.super_group);
      }
    }
    if (t == k_tiles - 1) load_scales();
  }

  CUTLASS_DEVICE void end_tile(int t, FragmentC& blk) {
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < Layout::kCount; ++i) {
      sg[i] += q_cur[Layout::row_slot(i)] * blk[i];
      blk[i] = 0;
    }
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < kRows; ++r) q_cur[r] = q_next[r];
    if constexpr (kMultiGroup) {
      if ((t + 1) % p.super_group == 0 || t + 1 == k_tiles) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < Layout::kCount; ++i) {
          acc_f[i] += f_cur[Layout::row_slot(i)] * static_cast<float>(sg[i]);
          sg[i] = 0;
        }
      }
    }
  }

  // After the mainloop: element i before the epilogue scales (with one super group, F is the row scale there).
  CUTLASS_DEVICE float result(int i) const {
    if constexpr (kMultiGroup) return acc_f[i];
    return static_cast<float>(sg[i]);
  }
};

// Occupancy the register allocation must allow: see TileConfig::kMinBlocks (the multi-group hybrid: one CTA).
template <class Cfg, bool kHybrid, bool kMultiGroup, typename OutT>
__global__ void __launch_bounds__(Cfg::kThreads, kMultiGroup ? 1 : Cfg::kMinBlocks)
    grouped_gemm_kernel(GroupedGemmParams p) {
  using Loop = Mainloop<Cfg>;
  using Layout = AccumulatorLayout<Cfg>;
  extern __shared__ __align__(16) uint8_t smem[];
  auto& shared = *reinterpret_cast<typename Loop::SharedStorage*>(smem);

  const int thread_idx = threadIdx.x;
  const int warp_idx = __shfl_sync(0xffffffffu, threadIdx.x / 32, 0);
  const int lane = threadIdx.x % 32;
  const int warp_m = warp_idx % Cfg::kWarpsM;
  const int warp_n = warp_idx / Cfg::kWarpsM;
  const int tiles_n = (p.n + Cfg::kN - 1) / Cfg::kN;
  const int k_tiles = (p.k + Cfg::kK - 1) / Cfg::kK;
  const int total_tiles = p.tile_offsets[p.num_experts];

  for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
    // Expert of this tile: the last e with tile_offsets[e] <= tile (empty experts share offsets and are skipped).
    int lo = 0, hi = p.num_experts - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (p.tile_offsets[mid] <= tile) lo = mid; else hi = mid - 1;
    }
    const int e = lo;
    const int local = tile - p.tile_offsets[e];
    const int tile_m = local / tiles_n;
    const int tile_n = local % tiles_n;
    const int row_begin = min(max(p.expert_offsets[e], 0), p.rows);
    const int row_end = min(max(p.expert_offsets[e + 1], row_begin), p.rows);
    const int m_e = row_end - row_begin;

    const int8_t* a_e = p.a + static_cast<int64_t>(row_begin) * p.k;
    const int8_t* b_e = p.b + static_cast<int64_t>(e) * p.n * p.k;
    typename Loop::IteratorA it_a(typename Loop::IteratorA::Params(cutlass::layout::RowMajor(p.k)),
                                  const_cast<int8_t*>(a_e), {m_e, p.k}, thread_idx, {tile_m * Cfg::kM, 0});
    typename Loop::IteratorB it_b(typename Loop::IteratorB::Params(cutlass::layout::ColumnMajor(p.k)),
                                  const_cast<int8_t*>(b_e), {p.k, p.n}, thread_idx, {0, tile_n * Cfg::kN});

    Loop loop(shared, thread_idx, warp_idx, lane);
    typename Loop::FragmentC acc;
    acc.clear();

    // Rows and columns (inside the expert / matrix) this thread's accumulators belong to.
    const int row0 = tile_m * Cfg::kM + warp_m * Cfg::kWarpM;
    const int col0 = tile_n * Cfg::kN + warp_n * Cfg::kWarpN;

    using Scales = EpilogueScales<Cfg>;
    Scales scales;
    auto load_scales = [&]() {
      CUTLASS_PRAGMA_UNROLL
      for (int r = 0; r < Layout::kRowsPerThread; ++r) {
        const int row = row0 + Layout::row_of_slot(r, lane);
        const bool valid = row < m_e;
        if constexpr (kHybrid) {
          scales.row[r] = kMultiGroup ? 1.0f
                                      : (valid ? __ldg(p.a_f + static_cast<int64_t>(row_begin + row) * p.num_groups)
                                               : 0.0f);
        } else {
          scales.row[r] = !p.a_scale_per_row ? __ldg(p.a_scale) : (valid ? __ldg(p.a_scale + row_begin + row) : 0.0f);
        }
      }
      const bool per_channel = kHybrid || p.b_scale_per_channel;
      const float* w_scale = p.b_scale + (per_channel ? static_cast<int64_t>(e) * p.n : e);
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < Scales::kCols; ++c) {
        const int col = col0 + Scales::col_of_slot(c, lane);
        scales.col[c] = col < p.n ? __ldg(w_scale + (per_channel ? col : 0)) : 0.0f;
      }
    };

    // Epilogue: scale, convert, store pairs of adjacent columns.
    auto store = [&](auto&& value) {
      const bool vector_ok = (p.n % 2) == 0;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < Layout::kCount; i += 2) {
        const int slot = Layout::row_slot(i);
        const int row = row0 + Layout::row_of_slot(slot, lane);
        const int col = col0 + Layout::col(i, lane);
        if (row < m_e && col < p.n) {
          const int c = Scales::col_slot(i);
          OutT* dst = static_cast<OutT*>(p.out) + (static_cast<int64_t>(row_begin) + row) * p.n + col;
          store_pair(dst, value(i) * scales.row[slot] * scales.col[c],
                     value(i + 1) * scales.row[slot] * scales.col[c + 1], col + 1 < p.n, vector_ok);
        }
      }
    };

    if constexpr (kHybrid) {
      HybridHook<Cfg, kMultiGroup, decltype(load_scales)> hook(p, load_scales, k_tiles);
      hook.sg.clear();
      if constexpr (kMultiGroup) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < Layout::kCount; ++i) hook.acc_f[i] = 0.0f;
      }
      CUTLASS_PRAGMA_UNROLL
      for (int r = 0; r < Layout::kRowsPerThread; ++r) {
        const int row = row0 + Layout::row_of_slot(r, lane);
        hook.row_g[r] = row < m_e ? row_begin + row : -1;
      }
      hook.load_q(hook.q_cur, 0);
      loop.run(it_a, it_b, k_tiles, acc, hook);
      store([&](int i) { return hook.result(i); });
    } else {
      PlainHook<decltype(load_scales)> hook{load_scales, k_tiles - 1};
      loop.run(it_a, it_b, k_tiles, acc, hook);
      store([&](int i) { return static_cast<float>(acc[i]); });
    }
  }
}

template <int kTileMRows, bool kHybrid, bool kMultiGroup, typename OutT>
void launch_grouped_gemm(const GroupedGemmParams& params, cudaStream_t stream) {
  using Cfg = TileConfig<kTileMRows>;
  auto kernel = grouped_gemm_kernel<Cfg, kHybrid, kMultiGroup, OutT>;
  int device = 0;
  cudaGetDevice(&device);
  // Per-device one-time setup: opt in to > 48 KiB of dynamic shared memory and read the occupancy.
  static std::mutex mutex;
  static int ctas_per_sm[64] = {0};
  static int sms[64] = {0};
  if (device < 0 || device >= 64) device = 0;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (ctas_per_sm[device] == 0) {
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
      int occupancy = 0;
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, kernel, Cfg::kThreads, Cfg::kSmemBytes);
      cudaDeviceGetAttribute(&sms[device], cudaDevAttrMultiProcessorCount, device);
      ctas_per_sm[device] = std::max(occupancy, 1);
    }
  }
  const int64_t resident = static_cast<int64_t>(ctas_per_sm[device]) * sms[device];
  const int grid = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(params.max_tiles, resident)));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
}

}  // namespace int8_gemm
}  // namespace moejit

#define MOEJIT_INT8_GEMM_INSTANTIATE(TILE_M, HYBRID, MULTI)                                                   \
  template void moejit::int8_gemm::launch_grouped_gemm<TILE_M, HYBRID, MULTI, __nv_bfloat16>(              \
      const moejit::int8_gemm::GroupedGemmParams&, cudaStream_t);                                            \
  template void moejit::int8_gemm::launch_grouped_gemm<TILE_M, HYBRID, MULTI, __half>(                     \
      const moejit::int8_gemm::GroupedGemmParams&, cudaStream_t);
