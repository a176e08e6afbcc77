// INT8 grouped GEMMs for Hopper (sm_90a): TMA loads, a warp-specialized producer and s8 x s8 -> s32 `wgmma`.
//
// The same two GEMMs as the SM80 kernels (int8_grouped_gemm_sm80.cuh), on the same GroupedGemmParams and tile
// schedule, for the GPUs where mma.sync leaves most of the tensor cores idle:
//
//   per-tensor:  acc   += A_tile . B_tile                                       (int32, wgmma accumulates)
//   hybrid:      blk    = A_tile . B_tile        (one 128-deep K tile == one quantization block, int32)
//                sg    += Q[row, block] * blk    (int32 IMAD, per super group)
//                acc_f += F[row, group] * float(sg)  at the end of every super group (several groups only)
//
// Layout of a CTA (384 threads, one per SM, persistent): warp group 0 is the producer (one thread issues the TMA
// loads of A and B into a kStages-deep ring of shared-memory stages, guarded by "full" and "empty" mbarriers);
// warp groups 1 and 2 are the consumers, each owning 64 rows of the 128 x 128 output tile. A consumer waits for a
// stage and issues the stage's four m64n128k32 wgmma (per-tensor: accumulating, one stage in flight). The hybrid
// issues the block as two chains of four m64n64k32 wgmma, one per 64-column half, waits for the first and folds its
// int32 result into the super-group sum with the row's Q while the second runs, then folds the second; the other
// warp group's wgmma keep the tensor cores busy meanwhile. An expert's last tile with at most 64 rows loads only the
// first 64 rows of A, and the second consumer warp group skips it (MOEJIT_INT8_SM90_HALF_TILES=0: full tiles).
//
// Grouping: A is the [rows, K] int8 matrix of all experts' rows (rows grouped by expert) and B the [E * N, K] view
// of the weights, both loaded by 2-D TMA with 128-byte swizzle. A tile of expert e starts at row
// expert_offsets[e] + 128 * tile_m and at weight row e * N + 128 * tile_n; rows or columns of the box that belong to
// the next expert (or lie past the tensor: TMA fills zeros) are computed and not stored. tile_offsets comes from
// launch_tile_schedule with 128 x 128 tiles; every role of a CTA walks the same tiles (TileSequence), so the
// producer runs ahead across tile boundaries and the next tile's loads overlap this tile's epilogue.
//
// Row gather (GroupedGemmParams::a_rows, the MoE layer's GEMM1): row r of A is a source row named by a_rows. TMA has
// no row gather on sm_90, so the whole producer warp group copies A with 16-byte cp.async into the same swizzled
// stage layout (producer_gather) and thread 0 still loads B by TMA. The consumers wait on the same full barrier,
// which then also counts the 128 producer threads' arrivals, each made once the thread's copies of the stage have
// landed and been fenced to the async proxy. Gathered launches run single CTAs (no A multicast). On an H200 the
// gathered GEMM1 took 1.36x the time of the same GEMM on copied rows (Qwen3.6 shape, M = 2048 and 8192), more than
// the copy it saves, so the MoE layer uses it only with MOEJIT_INT8_HYBRID_GATHER=1.
//
// The epilogue multiplies by the scales, stages each consumer's 64 x 128 half in shared memory and writes every
// valid row with one asynchronous bulk copy (cp.async.bulk) that drains during the next tile; where rows are not
// 16-byte multiples (N % 8 != 0), and for the multi-group hybrid, it stores bf16/fp16 pairs from registers. Rows
// past the expert and columns past N are never written. Everything is on the device: no host sync, CUDA-graph
// capturable.
//
// This header is included by the instantiation TUs (int8_gemm_sm90_inst_*.cu) only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <type_traits>

#include "cute/arch/copy_sm80.hpp"
#include "cute/tensor.hpp"
#include "cute/atom/copy_traits_sm90_tma.hpp"
#include "cute/atom/mma_traits_sm90_gmma.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/arch/reg_reconfig.h"
#include "cutlass/cutlass.h"
#include "int8_grouped_gemm_sm80.h"
#include "int8_gemm_store.cuh"
#include "int8_grouped_gemm_sm90.h"

namespace moejit {
namespace int8_gemm {
namespace sm90 {

using namespace cute;

struct Config {
  static constexpr int kConsumers = 2;  // consumer warp groups, 64 rows each
  static constexpr int kBM = kTileM;
  static constexpr int kBN = kTileN;
  static constexpr int kBK = kTileK;
  static constexpr int kStages = 5;     // 5 x 32 KiB (+ 34 KiB of epilogue staging)
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  using SmemAtom = GMMA::Layout_K_SW128_Atom<int8_t>;  // 8 rows x 128 bytes, the TMA box's 128-byte swizzle
  using SmemLayoutA = decltype(tile_to_shape(SmemAtom{}, make_shape(Int<kBM>{}, Int<kBK>{}, Int<kStages>{})));
  // The same bytes as 64-row halves (half h of stage s at index 2 s + h): the producer loads A one 64-row box at a
  // time, so a tile whose rows all lie in its first half loads only that half.
  using SmemLayoutAHalves =
      decltype(tile_to_shape(SmemAtom{}, make_shape(Int<kBM / 2>{}, Int<kBK>{}, Int<2 * kStages>{})));
  using SmemLayoutB = decltype(tile_to_shape(SmemAtom{}, make_shape(Int<kBN>{}, Int<kBK>{}, Int<kStages>{})));
  // B as 64-column halves (half h of stage s at index 2 s + h), for the hybrid's two wgmma chains per block.
  using SmemLayoutBHalves =
      decltype(tile_to_shape(SmemAtom{}, make_shape(Int<kBN / 2>{}, Int<kBK>{}, Int<2 * kStages>{})));
  using TiledMma = decltype(make_tiled_mma(SM90_64x128x32_S32S8S8_SS_TN{}, Layout<Shape<Int<kConsumers>, _1, _1>>{}));
  using TiledMmaHalf =
      decltype(make_tiled_mma(SM90_64x64x32_S32S8S8_SS_TN{}, Layout<Shape<Int<kConsumers>, _1, _1>>{}));
  static constexpr uint32_t kStageBytes = (kBM + kBN) * kBK;
  static constexpr uint32_t kHalfABytes = kBM / 2 * kBK;  // one 64-row half of the A box
  static_assert(kBM == 64 * kConsumers, "one 64-row wgmma per consumer warp group");
};

// TMA descriptor for a [rows, cols] int8 row-major matrix, one box = one stage of `SmemLayout3` (rows, cols, stages);
// with kMulticast the box is split between the two CTAs of a cluster, each loading its half into both.
template <class SmemLayout3, bool kMulticast = false>
auto make_tma(const int8_t* ptr, int rows, int cols) {
  Tensor g = make_tensor(make_gmem_ptr(ptr), make_layout(make_shape(rows, cols), make_stride(int64_t(cols), _1{})));
  if constexpr (kMulticast) {
    return make_tma_copy(SM90_TMA_LOAD_MULTICAST{}, g, SmemLayout3{}(_, _, 0), Int<2>{});
  } else {
    return make_tma_copy(SM90_TMA_LOAD{}, g, SmemLayout3{}(_, _, 0));
  }
}
using TmaA = decltype(make_tma<Config::SmemLayoutAHalves>(nullptr, 1, 16));
using TmaAMulticast = decltype(make_tma<Config::SmemLayoutAHalves, true>(nullptr, 1, 16));
using TmaB = decltype(make_tma<Config::SmemLayoutB>(nullptr, 1, 16));

// Experts whose schedule is copied to shared memory at the start (more: read from global memory). The host sends
// launches with more than kMaxExperts experts to the SM80 kernels (choose_kernel), so the global-memory path below
// is not what runs; it keeps the kernel correct for any E.
constexpr int kSmemExperts = 1024;
static_assert(kSmemExperts == kMaxExperts, "the host's expert limit is the shared-memory schedule's size");
constexpr int kStagingPitch = Config::kBN * 2 + 16;  // bytes per staged output row (16-bit outputs)
// Named barrier ids 1 + wg (0 is __syncthreads): a consumer warp group's epilogue.

struct SharedStorage {
  alignas(1024) int8_t a[cosize_v<Config::SmemLayoutA>];
  alignas(1024) int8_t b[cosize_v<Config::SmemLayoutB>];
  alignas(8) uint64_t full[Config::kStages];   // TMA bytes landed (1 arrival + transaction bytes)
  alignas(8) uint64_t empty[Config::kStages];  // stage consumed (one arrival per consumer warp group of each CTA)
  int32_t tile_offsets[kSmemExperts + 1];      // copies of the schedule and of the clamped expert offsets
  int32_t expert_offsets[kSmemExperts + 1];
  // Epilogue staging, one 64 x 128 half tile per consumer warp group; rows padded by 16 bytes so the fragment's
  // 8-row stores hit distinct banks (the pitch stays a multiple of 16 bytes for the bulk copies).
  alignas(128) uint8_t staging[Config::kConsumers][64 * kStagingPitch];
  alignas(16) float col_scale[Config::kConsumers][Config::kBN];  // the tile's weight scales, per warp group
};
constexpr int kSmemBytes = static_cast<int>(sizeof(SharedStorage)) + 1024;  // + alignment slack of the base

// kCluster = 2: clusters of two CTAs along N. The schedule's tiles come in pairs (2j, 2j + 1) that share the M tile
// (tiles_n is even, checked by the host), the cluster walks the pairs, CTA r of the cluster takes tile 2j + r, and
// each CTA loads half of the shared A box for both (multicast): A's L2 -> SM traffic halves.
template <int kCluster>
struct KernelParams {
  std::conditional_t<kCluster == 2, TmaAMulticast, TmaA> tma_a;
  TmaB tma_b;
  GroupedGemmParams p;
  // Tiles with at most 64 rows (an expert's last tile): the producer loads only the A box's first half and the
  // second consumer warp group, whose rows all lie past the expert, skips the tile's wgmma and epilogue.
  bool half_tiles;
};

// A tile's second 64 rows lie past its expert: see KernelParams::half_tiles.
CUTLASS_DEVICE bool upper_half_empty(bool half_tiles, int m_e, int row0) { return half_tiles && m_e - row0 <= 64; }

// The tiles a CTA visits: tile = first + i * stride with kCluster == 1; pairs with kCluster == 2.
template <int kCluster>
struct TileSequence {
  int first, stride;
  CUTLASS_DEVICE TileSequence() {
    if constexpr (kCluster == 1) {
      first = blockIdx.x;
      stride = gridDim.x;
    } else {
      first = 2 * (blockIdx.x / 2) + static_cast<int>(cute::block_rank_in_cluster());
      stride = gridDim.x;  // gridDim.x / 2 clusters, 2 tiles per pair
    }
  }
};

// The tile `tile` of the schedule: its expert, the expert's rows and the tile's row / column offsets.
struct TileCoord {
  int expert, row_begin, m_e, row0, col0;
};

// Finds the expert of each tile a role visits. Tiles come in increasing order, so with the schedule in shared
// memory (E <= kSmemExperts) the expert only moves forward; otherwise a binary search over global memory.
struct TileWalker {
  const GroupedGemmParams& p;
  const SharedStorage& shared;
  int tiles_n;
  int expert = 0;

  CUTLASS_DEVICE TileCoord locate(int tile) {
    int e = expert;
    int row_begin, row_end;
    if (p.num_experts <= kSmemExperts) {
      while (shared.tile_offsets[e + 1] <= tile) ++e;  // tile < tile_offsets[E]: stops at e < E
      expert = e;
      row_begin = shared.expert_offsets[e];
      row_end = shared.expert_offsets[e + 1];
    } else {
      int lo = 0, hi = p.num_experts - 1;  // the last e with tile_offsets[e] <= tile (empty experts are skipped)
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p.tile_offsets[mid] <= tile) lo = mid; else hi = mid - 1;
      }
      e = lo;
      row_begin = min(max(p.expert_offsets[e], 0), p.rows);
      row_end = min(max(p.expert_offsets[e + 1], row_begin), p.rows);
    }
    const int local = tile - (p.num_experts <= kSmemExperts ? shared.tile_offsets[e] : p.tile_offsets[e]);
    return {e, row_begin, row_end - row_begin, (local / tiles_n) * Config::kBM, (local % tiles_n) * Config::kBN};
  }
};

// All threads: the schedule and the expert offsets clamped to [0, rows] into shared memory, when they fit. (An
// expert that owns tiles has clamp(off[e + 1]) > clamp(off[e]), the schedule kernel's row count, so the walker's
// row_end = clamp(off[e + 1]) is the global path's min(max(off[e + 1], row_begin), rows) wherever it is read.)
CUTLASS_DEVICE void stage_schedule(const GroupedGemmParams& p, SharedStorage& shared) {
  if (p.num_experts > kSmemExperts) return;
  for (int e = threadIdx.x; e <= p.num_experts; e += blockDim.x) {
    shared.tile_offsets[e] = p.tile_offsets[e];
    shared.expert_offsets[e] = min(max(p.expert_offsets[e], 0), p.rows);
  }
}

// The TMA views of tile t's B: (tBgB, tBsB) with copy(kp.tma_b.with(barrier), tBgB(_, kb), tBsB(_, stage)) loading
// K block kb of the tile's 128 weight rows into a stage (both producers).
template <int kCluster>
CUTLASS_DEVICE auto tile_b_views(const KernelParams<kCluster>& kp, SharedStorage& shared, const TileCoord& t) {
  const GroupedGemmParams& p = kp.p;
  Tensor mB = kp.tma_b.get_tma_tensor(make_shape(p.num_experts * p.n, p.k));
  Tensor sB = make_tensor(make_smem_ptr(shared.b), Config::SmemLayoutB{});
  Tensor gB = local_tile(domain_offset(make_coord(t.expert * p.n + t.col0, 0), mB),
                         Shape<Int<Config::kBN>, Int<Config::kBK>>{}, make_coord(0, _));  // (BN, BK, k)
  return tma_partition(kp.tma_b, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sB), group_modes<0, 2>(gB));
}

template <int kCluster>
CUTLASS_DEVICE void producer(const KernelParams<kCluster>& kp, SharedStorage& shared) {
  const GroupedGemmParams& p = kp.p;
  const int tiles_n = (p.n + Config::kBN - 1) / Config::kBN;
  const int k_tiles = (p.k + Config::kBK - 1) / Config::kBK;
  const int total_tiles = p.num_experts <= kSmemExperts ? shared.tile_offsets[p.num_experts]
                                                         : p.tile_offsets[p.num_experts];
  Tensor mA = kp.tma_a.get_tma_tensor(make_shape(p.rows, p.k));
  Tensor sA = make_tensor(make_smem_ptr(shared.a), Config::SmemLayoutAHalves{});  // (64, BK, 2 * stages)
  int stage = 0;
  uint32_t phase = 1;  // a fresh "empty" barrier counts as consumed
  TileWalker walker{p, shared, tiles_n};
  const TileSequence<kCluster> seq;
  const int rank = kCluster == 2 ? static_cast<int>(cute::block_rank_in_cluster()) : 0;
  for (int tile = seq.first; tile < total_tiles; tile += seq.stride) {
    const TileCoord t = walker.locate(tile);
    const bool one_half = upper_half_empty(kp.half_tiles, t.m_e, t.row0);
    Tensor gA = local_tile(domain_offset(make_coord(t.row_begin + t.row0, 0), mA),
                           Shape<Int<Config::kBM / 2>, Int<Config::kBK>>{}, make_coord(_, _));  // (64, BK, 2.., k)
    auto [tAgA, tAsA] = tma_partition(kp.tma_a, rank, Layout<Int<kCluster>>{}, group_modes<0, 2>(sA),
                                      group_modes<0, 2>(gA));
    auto [tBgB, tBsB] = tile_b_views(kp, shared, t);
    for (int kb = 0; kb < k_tiles; ++kb) {
      cutlass::arch::ClusterBarrier::wait(&shared.empty[stage], phase);
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(
          &shared.full[stage], one_half ? Config::kStageBytes - Config::kHalfABytes : Config::kStageBytes);
      for (int h = 0; h < (one_half ? 1 : 2); ++h) {
        if constexpr (kCluster == 2) {
          copy(kp.tma_a.with(shared.full[stage], uint16_t{0b11}), tAgA(_, h, kb), tAsA(_, 2 * stage + h));
        } else {
          copy(kp.tma_a.with(shared.full[stage]), tAgA(_, h, kb), tAsA(_, 2 * stage + h));
        }
      }
      copy(kp.tma_b.with(shared.full[stage]), tBgB(_, kb), tBsB(_, stage));
      if (++stage == Config::kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
  }
}

// The producer of a row-gathered A (p.a_rows set; single CTAs): all 128 threads of warp group 0. Thread 0 issues B's
// TMA load as producer() does; every thread copies its 16-byte piece `chunk` of eight of the tile's 128 rows
// (rows row_in + 16 i) with cp.async from the row's source in a, into the stage's 128-byte-swizzled layout (piece c
// of row r at r * 128 + 16 * (c ^ r % 8): the layout TMA writes, which the wgmma descriptors expect). Rows past the
// expert and pieces past K are zero-filled, not read. Each stage's copies are one cp.async group; kGatherLag
// stages later the thread waits for the group, fences its writes to the async proxy (wgmma reads shared memory
// through it) and arrives on the stage's full barrier: one of its 1 + 128 arrivals. (A first build had each
// thread's cp.async.mbarrier.arrive.noinc count the arrival instead; it hung on an H200 once a CTA ran more than
// one tile, for a reason not found.)
constexpr int kGatherLag = 3;  // stages a thread's copies stay in flight before it arrives (< kStages)
static_assert(kGatherLag < Config::kStages, "a stage is refilled only after its arrival");

CUTLASS_DEVICE void producer_gather(const KernelParams<1>& kp, SharedStorage& shared, int ptid) {
  const GroupedGemmParams& p = kp.p;
  const int tiles_n = (p.n + Config::kBN - 1) / Config::kBN;
  const int k_tiles = (p.k + Config::kBK - 1) / Config::kBK;
  const int total_tiles = p.num_experts <= kSmemExperts ? shared.tile_offsets[p.num_experts]
                                                         : p.tile_offsets[p.num_experts];
  constexpr int kChunks = Config::kBK / 16;        // 16-byte pieces of a row's K tile
  constexpr int kRowsPerPass = 128 / kChunks;      // rows the 128 threads cover at once
  constexpr int kPasses = Config::kBM / kRowsPerPass;
  static_assert(kChunks == 8, "the 128-byte swizzle: one K tile row is 8 pieces of 16 bytes");
  const int chunk = ptid % kChunks;
  const int row_in = ptid / kChunks;
  // kRowsPerPass is a multiple of 8, so every row of this thread has the same r % 8 and swizzled piece.
  const uint32_t dst_thread = cute::cast_smem_ptr_to_uint(shared.a) +
                              static_cast<uint32_t>(row_in * Config::kBK + 16 * (chunk ^ (row_in % 8)));
  int stage = 0;
  uint32_t phase = 1;  // a fresh "empty" barrier counts as consumed
  int issued = 0;      // stages this thread has issued copies for
  // This thread's copies into stage s have landed: make them visible to the async proxy, then arrive.
  auto publish = [&](int s) {
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::ClusterBarrier::arrive(&shared.full[s]);
  };
  TileWalker walker{p, shared, tiles_n};
  const TileSequence<1> seq;
  for (int tile = seq.first; tile < total_tiles; tile += seq.stride) {
    const TileCoord t = walker.locate(tile);
    int src[kPasses];  // source row in a of each of this thread's rows, or -1 (zero fill)
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kPasses; ++i) {
      const int row = t.row0 + row_in + kRowsPerPass * i;
      src[i] = row < t.m_e ? min(max(__ldg(p.a_rows + t.row_begin + row) / p.a_rows_div, 0), p.a_src_rows - 1) : -1;
    }
    for (int kb = 0; kb < k_tiles; ++kb) {
      cutlass::arch::ClusterBarrier::wait(&shared.empty[stage], phase);
      if (ptid == 0) {  // the views are made here, not per tile: held across the loop they would cost every thread
        auto [tBgB, tBsB] = tile_b_views(kp, shared, t);
        cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&shared.full[stage],
                                                                       Config::kBN * Config::kBK);
        copy(kp.tma_b.with(shared.full[stage]), tBgB(_, kb), tBsB(_, stage));
      }
      __syncwarp();
      const int col = kb * Config::kBK + 16 * chunk;
      const uint32_t dst_stage = dst_thread + static_cast<uint32_t>(stage * Config::kBM * Config::kBK);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kPasses; ++i) {
        const bool valid = src[i] >= 0 && col < p.k;
        const int8_t* from = p.a + (valid ? static_cast<int64_t>(src[i]) * p.k + col : 0);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                         dst_stage + static_cast<uint32_t>(i * kRowsPerPass * Config::kBK)),
                     "l"(from), "r"(valid ? 16 : 0));
      }
      cute::cp_async_fence();
      if (++issued > kGatherLag) {
        cute::cp_async_wait<kGatherLag>();  // the group of kGatherLag stages ago has landed
        publish((stage + Config::kStages - kGatherLag) % Config::kStages);
      }
      if (++stage == Config::kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
  }
  cute::cp_async_wait<0>();
  for (int j = min(issued, kGatherLag); j >= 1; --j) publish((stage + Config::kStages - j) % Config::kStages);
}

template <int kCluster, bool kHybrid, bool kMultiGroup, typename OutT>
CUTLASS_DEVICE void consumer(const KernelParams<kCluster>& kp, SharedStorage& shared, int consumer_tid) {
  const GroupedGemmParams& p = kp.p;
  const int tiles_n = (p.n + Config::kBN - 1) / Config::kBN;
  const int k_tiles = (p.k + Config::kBK - 1) / Config::kBK;
  const int total_tiles = p.num_experts <= kSmemExperts ? shared.tile_offsets[p.num_experts]
                                                         : p.tile_offsets[p.num_experts];
  const bool signals = consumer_tid % 128 == 0;  // one "empty" arrival per warp group

  Tensor sA = make_tensor(make_smem_ptr(shared.a), Config::SmemLayoutA{});
  Tensor sB = make_tensor(make_smem_ptr(shared.b), Config::SmemLayoutB{});
  typename Config::TiledMma mma;
  auto thr = mma.get_thread_slice(consumer_tid);
  Tensor tCrA = thr.make_fragment_A(thr.partition_A(sA));  // (MMA, MMA_M, MMA_K, stages) smem descriptors
  Tensor tCrB = thr.make_fragment_B(thr.partition_B(sB));
  Tensor tCcC = thr.partition_C(make_identity_tensor(Shape<Int<Config::kBM>, Int<Config::kBN>>{}));
  Tensor acc = partition_fragment_C(mma, Shape<Int<Config::kBM>, Int<Config::kBN>>{});  // int32
  static_assert(size(decltype(acc){}) == 64, "64 x 128 per warp group over 128 threads");
  // wgmma's accumulator fragment: element i is at row r0 + 8 * ((i >> 1) & 1) and column c0 + (i & 1) + 8 * (i >> 2)
  // of the warp group's 64 x 128 tile, so each thread touches two rows.
  const int r_lo = get<0>(tCcC(0));
  constexpr int kRows = 2;
  auto row_slot = [](int i) { return (i >> 1) & 1; };

  decltype(acc) sg;                                          // hybrid: int32 sum over the current super group
  float acc_f[kMultiGroup ? size(decltype(acc){}) : 1];      // hybrid, several groups: float sum of finished groups

  int stage = 0;
  uint32_t phase = 0;
  const bool vector_ok = (p.n % 2) == 0;
  // Rows of 8k outputs are 16-byte multiples at 16-byte aligned addresses: bulk copies (else direct stores).
  const bool bulk_store = !kMultiGroup && (p.n % 8) == 0 && (reinterpret_cast<uintptr_t>(p.out) % 16) == 0;
  const int wg = consumer_tid / 128;
  const int wg_tid = consumer_tid % 128;
  TileWalker walker{p, shared, tiles_n};
  const TileSequence<kCluster> seq;
  // A stage is free once the consumers of every CTA that reads it (the cluster: the multicast A) are done with it.
  auto free_stage = [&](int s) {
    if (!signals) return;
    if constexpr (kCluster == 2) {
      cutlass::arch::ClusterBarrier::arrive(&shared.empty[s], 0, 1);
      cutlass::arch::ClusterBarrier::arrive(&shared.empty[s], 1, 1);
    } else {
      cutlass::arch::ClusterBarrier::arrive(&shared.empty[s]);
    }
  };
  for (int tile = seq.first; tile < total_tiles; tile += seq.stride) {
    const TileCoord t = walker.locate(tile);
    if (wg == 1 && upper_half_empty(kp.half_tiles, t.m_e, t.row0)) {
      // No rows here: wait for each stage (so this warp group's arrivals stay in step with the stage's uses) and
      // hand it back; no wgmma, no epilogue.
      for (int kb = 0; kb < k_tiles; ++kb) {
        cutlass::arch::ClusterBarrier::wait(&shared.full[stage], phase);
        free_stage(stage);
        if (++stage == Config::kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      continue;
    }
    int grow[kRows];  // global row of each row slot, or -1 past the expert's rows
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = t.row0 + r_lo + 8 * r;
      grow[r] = row < t.m_e ? t.row_begin + row : -1;
    }
    const bool per_channel = kHybrid || p.b_scale_per_channel;
    const float* w_scale = p.b_scale + (per_channel ? static_cast<int64_t>(t.expert) * p.n : t.expert);
    // The weight scale of column col0 + wg_tid, loaded before the mainloop (its latency hides there) and shared
    // with the warp group through shared memory at the epilogue: one register instead of the 32 columns a thread
    // writes.
    const int my_col = t.col0 + wg_tid;
    const float my_col_scale = my_col < p.n ? __ldg(w_scale + (per_channel ? my_col : 0)) : 0.0f;
    float row_scale[kRows];  // a_scale (per-tensor GEMM), F (hybrid, one super group) or 1
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      if constexpr (kHybrid) {
        row_scale[r] = kMultiGroup ? 1.0f : (grow[r] >= 0 ? __ldg(p.a_f + static_cast<int64_t>(grow[r]) * p.num_groups)
                                                          : 0.0f);
      } else {
        row_scale[r] = !p.a_scale_per_row ? __ldg(p.a_scale) : (grow[r] >= 0 ? __ldg(p.a_scale + grow[r]) : 0.0f);
      }
    }

    if constexpr (!kHybrid) {
      int prev_stage = -1;
      for (int kb = 0; kb < k_tiles; ++kb) {
        cutlass::arch::ClusterBarrier::wait(&shared.full[stage], phase);
        warpgroup_fence_operand(acc);
        warpgroup_arrive();
        mma.accumulate_ = kb == 0 ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
        CUTLASS_PRAGMA_UNROLL
        for (int kk = 0; kk < size<2>(tCrA); ++kk) {
          cute::gemm(mma, tCrA(_, _, kk, stage), tCrB(_, _, kk, stage), acc);
          mma.accumulate_ = GMMA::ScaleOut::One;
        }
        warpgroup_commit_batch();
        warpgroup_wait<1>();  // the previous stage's wgmma are done: hand its buffers back
        warpgroup_fence_operand(acc);
        if (prev_stage >= 0) free_stage(prev_stage);
        prev_stage = stage;
        if (++stage == Config::kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc);
      if (prev_stage >= 0) free_stage(prev_stage);
    } else {
      auto load_q = [&](int32_t (&dst)[kRows], int block) {
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
          dst[r] = grow[r] >= 0 && block < k_tiles
                       ? __ldg(p.a_q + static_cast<int64_t>(grow[r]) * p.num_blocks + block) : 0;
        }
      };
      // The block's 64 x 128 product per warp group as two 64 x 64 wgmma chains (the halves of B), so that half 1
      // still runs while the warp group folds half 0; frag_h(i) is sg(32 h + i) (the same row, column + 64 h).
      // Tried on an H200 and dropped: the two warp groups issuing their blocks in strict alternation through named
      // barriers (4-5% slower); the second warp group starting each tile 300 or 600 cycles late (no change); a
      // double-buffered loop, block kb + 1's wgmma issued into a second 64 x 128 fragment before block kb is
      // folded (1.8-1.9x slower at Qwen3.6 M=2048); half 1 folded while half 0 of block kb + 1 runs (ptxas C7514:
      // the wgmma serialized). Not understood (docs/int8_gemm.md): a build loading Q per block parity (no register
      // copies) hung in every H200 run, in clusters of two; builds with Q replaced by constants hung before the end
      // barrier below was made converged and releasing, and ran without hanging after it.
      Tensor sBh = make_tensor(make_smem_ptr(shared.b), Config::SmemLayoutBHalves{});
      typename Config::TiledMmaHalf mma_h;
      auto thr_h = mma_h.get_thread_slice(consumer_tid);
      Tensor hCrA = thr_h.make_fragment_A(thr_h.partition_A(sA));   // (MMA, MMA_M, MMA_K, stages)
      Tensor hCrB = thr_h.make_fragment_B(thr_h.partition_B(sBh));  // (MMA, MMA_N, MMA_K, 2 * stages)
      Tensor frag0 = partition_fragment_C(mma_h, Shape<Int<Config::kBM>, Int<Config::kBN / 2>>{});
      Tensor frag1 = partition_fragment_C(mma_h, Shape<Int<Config::kBM>, Int<Config::kBN / 2>>{});
      static_assert(size(decltype(frag0){}) == 32, "64 x 64 per warp group over 128 threads");
      auto issue_half = [&](auto& frag, int h, int s) {
        warpgroup_fence_operand(frag);
        warpgroup_arrive();
        mma_h.accumulate_ = GMMA::ScaleOut::Zero;
        CUTLASS_PRAGMA_UNROLL
        for (int kk = 0; kk < size<2>(hCrA); ++kk) {
          cute::gemm(mma_h, hCrA(_, _, kk, s), hCrB(_, _, kk, 2 * s + h), frag);
          mma_h.accumulate_ = GMMA::ScaleOut::One;
        }
        warpgroup_commit_batch();
      };
      int32_t q_cur[kRows], q_next[kRows];
      float f_cur[kRows];
      load_q(q_cur, 0);
      load_q(q_next, 1);
      clear(sg);
      if constexpr (kMultiGroup) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(acc); ++i) acc_f[i] = 0.0f;
      }
      auto fold_half = [&](auto& frag, int h) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(frag); ++i) sg(32 * h + i) += q_cur[row_slot(i)] * frag(i);
      };
      for (int kb = 0; kb < k_tiles; ++kb) {
        const int cur = stage;
        cutlass::arch::ClusterBarrier::wait(&shared.full[cur], phase);
        if (++stage == Config::kStages) {
          stage = 0;
          phase ^= 1;
        }
        issue_half(frag0, 0, cur);
        issue_half(frag1, 1, cur);
        int32_t q_after[kRows];
        load_q(q_after, kb + 2);  // two blocks ahead, issued while the wgmma run
        if constexpr (kMultiGroup) {
          if (kb % p.super_group == 0) {
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < kRows; ++r) {
              f_cur[r] = grow[r] >= 0
                             ? __ldg(p.a_f + static_cast<int64_t>(grow[r]) * p.num_groups + kb / p.super_group) : 0.0f;
            }
          }
        }
        warpgroup_wait<1>();  // half 0 is done, half 1 may run on
        warpgroup_fence_operand(frag0);
        fold_half(frag0, 0);
        warpgroup_wait<0>();
        warpgroup_fence_operand(frag1);
        free_stage(cur);
        fold_half(frag1, 1);
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
          q_cur[r] = q_next[r];
          q_next[r] = q_after[r];
        }
        if constexpr (kMultiGroup) {
          if ((kb + 1) % p.super_group == 0 || kb + 1 == k_tiles) {
            CUTLASS_PRAGMA_UNROLL
            for (int i = 0; i < size(sg); ++i) {
              acc_f[i] += f_cur[row_slot(i)] * static_cast<float>(sg(i));
              sg(i) = 0;
            }
          }
        }
      }
    }

    // Epilogue: row scale x column scale x value -> OutT pairs.
    auto value = [&](int i) {
      if constexpr (kMultiGroup) return acc_f[i];
      return static_cast<float>(kHybrid ? sg(i) : acc(i));
    };
    OutT* out = static_cast<OutT*>(p.out);
    // The previous tile's bulk copies have read the staging buffer, and every thread is done with the previous
    // tile's column scales.
    if (bulk_store && wg_tid < 64) cute::tma_store_wait<0>();
    shared.col_scale[wg][wg_tid] = my_col_scale;
    cutlass::arch::NamedBarrier::sync(128, 1 + wg);
    auto col_scales = [&](int i) {  // the scales of element i's column and the next (i even: an even column)
      return *reinterpret_cast<const float2*>(&shared.col_scale[wg][get<1>(tCcC(i))]);
    };
    if (bulk_store) {
      // Stage the warp group's 64 x 128 half in shared memory, then one asynchronous bulk copy per valid row
      // (cp.async.bulk, full 128-byte lines) that drains while the next tile's wgmma run.
      uint8_t* staging = shared.staging[wg];
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(acc); i += 2) {
        const int r = row_slot(i);
        const float2 cs = col_scales(i);
        const int row = get<0>(tCcC(i)) - 64 * wg;
        const int col = get<1>(tCcC(i));
        *reinterpret_cast<uint32_t*>(staging + row * kStagingPitch + col * 2) =
            pack_pair<OutT>(value(i) * row_scale[r] * cs.x, value(i + 1) * row_scale[r] * cs.y);
      }
      cute::tma_store_fence();  // the generic-proxy writes above, visible to the bulk copies
      cutlass::arch::NamedBarrier::sync(128, 1 + wg);
      if (wg_tid < 64) {
        const int row = t.row0 + 64 * wg + wg_tid;
        if (row < t.m_e) {
          const int bytes = min(Config::kBN, p.n - t.col0) * static_cast<int>(sizeof(OutT));
          cute::SM90_BULK_COPY_S2G::copy(staging + wg_tid * kStagingPitch,
                                         out + static_cast<int64_t>(t.row_begin + row) * p.n + t.col0, bytes);
        }
        cute::tma_store_arrive();
      }
    } else {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(acc); i += 2) {
        const int r = row_slot(i);
        const int col = t.col0 + get<1>(tCcC(i));
        if (grow[r] >= 0 && col < p.n) {
          const float2 cs = col_scales(i);
          store_pair(out + static_cast<int64_t>(grow[r]) * p.n + col, value(i) * row_scale[r] * cs.x,
                     value(i + 1) * row_scale[r] * cs.y, col + 1 < p.n, vector_ok);
        }
      }
      cutlass::arch::NamedBarrier::sync(128, 1 + wg);  // the column scales are read before the next tile's
    }
  }
  if (bulk_store && wg_tid < 64) cute::tma_store_wait<0>();
}

// kGather: A is row-gathered (p.a_rows; single CTAs). A separate instantiation, so the kernels without it stay as
// they were: with the gather a run-time branch, ptxas spilled in the consumers.
template <int kCluster, bool kHybrid, bool kMultiGroup, typename OutT, bool kGather>
__global__ void __launch_bounds__(Config::kThreads, 1)
    grouped_gemm_kernel(const __grid_constant__ KernelParams<kCluster> kp) {
  static_assert(!kGather || kCluster == 1, "a gathered A has no multicast");
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem_raw[];
  auto& shared = *reinterpret_cast<SharedStorage*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  const int warp_group = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 128, 0);
  // A gathered A: the full barrier also counts the arrivals of the 128 producer threads (producer_gather).
  if (threadIdx.x == 0) {
    for (int s = 0; s < Config::kStages; ++s) {
      cutlass::arch::ClusterBarrier::init(&shared.full[s], kGather ? 1 + 128 : 1);
      cutlass::arch::ClusterBarrier::init(&shared.empty[s], Config::kConsumers * kCluster);
    }
    cutlass::arch::fence_barrier_init();
  }
  stage_schedule(kp.p, shared);
  if constexpr (kCluster == 2) {
    __syncwarp();  // converged at the .aligned cluster barrier
    cute::cluster_arrive_relaxed();  // the peer's barriers are initialized before anything reaches them
    cute::cluster_wait();
  } else {
    __syncthreads();
  }
  if (warp_group == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Config::kProducerRegs>();
    if constexpr (kGather) {
      if (threadIdx.x == 0) cute::prefetch_tma_descriptor(kp.tma_b.get_tma_descriptor());
      producer_gather(kp, shared, static_cast<int>(threadIdx.x));
    } else if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(kp.tma_a.get_tma_descriptor());
      cute::prefetch_tma_descriptor(kp.tma_b.get_tma_descriptor());
      producer(kp, shared);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Config::kConsumerRegs>();
    consumer<kCluster, kHybrid, kMultiGroup, OutT>(kp, shared, static_cast<int>(threadIdx.x) - 128);
  }
  if constexpr (kCluster == 2) {
    // Neither CTA leaves while the peer may still arrive on its barriers. The cluster barrier is .aligned: every
    // warp must reach it converged, warp 0 included, whose thread 0 alone ran the producer (__syncwarp holds the
    // other 31 until it is done); and it releases, so this CTA's remote arrivals land before the peer may exit.
    __syncwarp();
    cute::cluster_arrive();
    cute::cluster_wait();
  }
#endif
}

template <int kCluster, bool kHybrid, bool kMultiGroup, typename OutT, bool kGather = false>
void launch(const GroupedGemmParams& params, cudaStream_t stream) {
  auto kernel = grouped_gemm_kernel<kCluster, kHybrid, kMultiGroup, OutT, kGather>;
  int device = 0;
  cudaGetDevice(&device);
  if (device < 0 || device >= 64) device = 0;
  cudaLaunchConfig_t config = {};
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = kCluster;
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  config.blockDim = dim3(Config::kThreads);
  config.dynamicSmemBytes = kSmemBytes;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  // Per-device one-time setup: opt in to the shared memory; the clusters that fit on the device at once (the
  // persistent grid: more would only queue).
  static std::mutex mutex;
  static int resident_clusters[64] = {0};
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (resident_clusters[device] == 0) {
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
      if (kCluster > 1) cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 0);
      int sms = 0;
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      config.gridDim = dim3(sms / kCluster * kCluster);
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess || clusters < 1) {
        (void)cudaGetLastError();
        clusters = sms / kCluster;
      }
      resident_clusters[device] = std::max(clusters, 1);
    }
  }
  // MOEJIT_INT8_SM90_HALF_TILES=0 turns the half tiles off (a benchmarking override, read on every call).
  const char* half_env = std::getenv("MOEJIT_INT8_SM90_HALF_TILES");
  const bool half_tiles = !(half_env != nullptr && half_env[0] == '0' && half_env[1] == '\0');
  // A gathered A is read by cp.async; its TMA descriptor (over the source rows) is built but not used.
  const int a_rows = kGather ? params.a_src_rows : params.rows;
  KernelParams<kCluster> kp{
      make_tma<Config::SmemLayoutAHalves, kCluster == 2>(params.a, a_rows, params.k),
      make_tma<Config::SmemLayoutB>(params.b, params.num_experts * params.n, params.k), params, half_tiles};
  const int wanted = (params.max_tiles + kCluster - 1) / kCluster;
  config.gridDim = dim3(kCluster * std::max(1, std::min(wanted, resident_clusters[device])));
  cudaLaunchKernelEx(&config, kernel, kp);
}

}  // namespace sm90

template <bool kHybrid, bool kMultiGroup, typename OutT>
void launch_grouped_gemm_sm90(const GroupedGemmParams& params, cudaStream_t stream) {
  // Clusters of two along N need the schedule's tiles in pairs of one M tile: an even number of N tiles.
  // MOEJIT_INT8_SM90_CLUSTER=1 forces single CTAs (a benchmarking override, read on every call).
  const char* env = std::getenv("MOEJIT_INT8_SM90_CLUSTER");
  const bool single = env != nullptr && env[0] == '1' && env[1] == '\0';
  const int tiles_n = (params.n + sm90::kTileN - 1) / sm90::kTileN;
  // A gathered A (the hybrid op's only) runs single CTAs: the multicast shares one TMA box between the two CTAs,
  // the gather has none.
  if constexpr (kHybrid) {
    if (params.a_rows != nullptr) return sm90::launch<1, kHybrid, kMultiGroup, OutT, true>(params, stream);
  }
  if (tiles_n % 2 == 0 && !single) return sm90::launch<2, kHybrid, kMultiGroup, OutT>(params, stream);
  sm90::launch<1, kHybrid, kMultiGroup, OutT>(params, stream);
}

}  // namespace int8_gemm
}  // namespace moejit

#define MOEJIT_INT8_GEMM_SM90_INSTANTIATE(HYBRID, MULTI)                                                       \
  template void moejit::int8_gemm::launch_grouped_gemm_sm90<HYBRID, MULTI, __nv_bfloat16>(                 \
      const moejit::int8_gemm::GroupedGemmParams&, cudaStream_t);                                          \
  template void moejit::int8_gemm::launch_grouped_gemm_sm90<HYBRID, MULTI, __half>(                        \
      const moejit::int8_gemm::GroupedGemmParams&, cudaStream_t);
