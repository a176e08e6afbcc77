// CUTLASS 3.x SM90 FP8 grouped GEMM for MoE experts: one ptr-array launch multiplies every expert's rows.
//
//   out[rows_e, :] = a_scale ⊙ (A[rows_e, :] · B[e]ᵀ) ⊙ b_scale        for each expert e with rows_e non-empty
//
// Split-K (k_splits = S > 1): every expert becomes S groups, group (e, s) multiplying the K slice
// [s·K/S, (s+1)·K/S) into its own output plane out[s] ([S, rows, N]); the caller sums the planes. The scales are
// per row and per column, so each partial carries them. It exists for decode GEMMs whose tiles fill too few waves
// of the persistent grid (a few experts × N/128 tiles): S times the tiles, the same weight bytes.
//
// A [rows, K] e4m3 row-major, rows grouped by expert (expert_offsets [E+1] on the device); B [E, N, K] e4m3 with K
// contiguous; out [rows, N] bf16/fp16 row-major. a_scale is one float (per tensor) or one per row (per token);
// b_scale is one float per expert ([E]) or one per output channel ([E, N]). The per-group pointers, strides and
// problem sizes are written on the device by `setup_groups_kernel` from expert_offsets, so nothing syncs with the
// host; experts with no rows get an empty problem (no tiles: no work, no writes).
//
// The scales are applied in the epilogue by an EVT: D = col_bcast ⊙ (row_bcast ⊙ acc), where both broadcasts read
// a per-group pointer and have a *runtime* stride (bool: vector or scalar), so the four scale combinations share
// one kernel per tile configuration. For decode sizes the problem is swapped (D' = B[e] · A_eᵀ, [N, rows_e],
// stored column-major, i.e. straight into the row-major out): the wide N dimension then fills the 128-row MMA tile
// and the handful of tokens becomes a narrow 16/32/64/96 column tile (wide16: 256 weight rows × 16 tokens). In the swapped problem the per-token scale is the
// row broadcast and the weight scale the column broadcast.
//
// This header is included by the instantiation TUs (fp8_grouped_gemm_sm90_inst_*.cu) only; the host dispatcher
// (fp8_grouped_gemm_sm90.cu) sees just the declarations at the bottom (MOEJIT_FP8_GG_DECLARATIONS_ONLY).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moejit::sm90_fp8 {

// Tile configurations. Keep this list short: each one is a CUTLASS instantiation per output dtype.
enum class GemmConfig : int {
  kSwap16 = 0,    // swapped, tile N×tokens = 128×16, ping-pong: decode (≤ ~8 rows per expert)
  kSwap32 = 1,    // swapped, tile 128×32, ping-pong: ≤ ~16 rows per expert (more pipeline stages than 128×64)
  kSwap64 = 2,    // swapped, tile 128×64, ping-pong: small batches (≤ ~32 rows per expert)
  kSwap96 = 3,    // swapped, tile 128×96, ping-pong: ~33-64 rows per expert (one token tile, a third less idle MMA)
  kCoop128 = 4,   // plain, tile 128×128, cooperative, cluster 1×2 (A multicast): prefill
  kWide16 = 5,    // swapped, tile 256×16, ping-pong: decode GEMMs of thousands of short tiles (half the tiles)
  kNumConfigs = 6,
};

enum class OutType : int { kBF16 = 0, kFP16 = 1, kF32 = 2 };

// Everything a launch needs, in plain types (no CUTLASS, no ATen) so the host TU stays light.
struct GroupedGemmParams {
  const void* a;                  // [rows, K] e4m3
  const void* b;                  // [E, N, K] e4m3
  void* out;                      // [rows, N] bf16/fp16/fp32
  const int32_t* expert_offsets;  // [E + 1]
  const float* a_scale;           // [1] or [rows]
  const float* b_scale;           // [E] or [E, N]
  bool a_per_row;
  bool b_per_col;
  int num_experts;
  int k_splits;                   // S ≥ 1: groups = num_experts · S, out is [S, rows, N] (k % (16·S) == 0)
  int64_t rows;                   // rows of a and out (expert_offsets are clamped to [0, rows])
  int n;
  int k;
  int device;
  int sm_count;
  void* workspace;                // workspace_bytes() bytes, 256-byte aligned
  cudaStream_t stream;
};

// Bytes of device workspace (per-group arrays + CUTLASS workspace) for a launch with these host-known sizes.
template <GemmConfig C, OutType O>
size_t workspace_bytes(int num_groups, int sm_count);

// Launches the setup kernel and the grouped GEMM. Returns nullptr on success, else a static error message (the
// setup launch's own CUDA error string when that launch failed).
template <GemmConfig C, OutType O>
const char* run_grouped_gemm(const GroupedGemmParams& p);

}  // namespace moejit::sm90_fp8

#if !defined(MOEJIT_FP8_GG_DECLARATIONS_ONLY)

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/numeric_types.h>

namespace moejit::sm90_fp8 {

using namespace cute;

// Mainloop schedules without "FP8FastAccum": the CUTLASS FP8 mainloop then adds the tensor cores' partial sums into
// a float32 accumulator every kPromotionInterval MMA k-blocks (32 products each). Hopper accumulates FP8 products
// with ~14 significant bits; left alone over K = 2048…14336 that costs 1.6–2.4% relative error of the layer (a
// simulation of the truncating accumulator), above the 1% the layer must meet. Every 4 k-blocks = every 128
// products, DeepSeek-V3's interval.
constexpr uint32_t kPromotionInterval = 4;

template <GemmConfig C>
struct ConfigTraits;

// The swapped decode tiles: kRows weight rows × kTokens tokens × 128 of K, ping-pong, no cluster.
template <int kTokens, int kRows = 128>
struct SwappedPingpong {
  static constexpr bool kSwap = true;
  using TileShape = Shape<Int<kRows>, Int<kTokens>, _128>;
  using ClusterShape = Shape<_1, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong;
};

template <>
struct ConfigTraits<GemmConfig::kSwap16> : SwappedPingpong<16> {};
template <>
struct ConfigTraits<GemmConfig::kSwap32> : SwappedPingpong<32> {};
template <>
struct ConfigTraits<GemmConfig::kSwap64> : SwappedPingpong<64> {};

template <>
struct ConfigTraits<GemmConfig::kSwap96> : SwappedPingpong<96> {};

// Twice the weight rows of swap16 per tile: for a decode GEMM of many experts and a short K (Qwen3.6's GEMM2: ~220
// experts × 16 tiles of K = 512), half the tiles, each group switch and epilogue serving twice the weight bytes.
template <>
struct ConfigTraits<GemmConfig::kWide16> : SwappedPingpong<16, 256> {};

template <>
struct ConfigTraits<GemmConfig::kCoop128> {
  static constexpr bool kSwap = false;
  using TileShape = Shape<_128, _128, _128>;
  using ClusterShape = Shape<_1, _2, _1>;
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
};

template <OutType O>
using OutElement = std::conditional_t<O == OutType::kBF16, cutlass::bfloat16_t,
                                      std::conditional_t<O == OutType::kFP16, cutlass::half_t, float>>;

template <GemmConfig C, OutType O>
struct GroupedFp8Gemm {
  using Traits = ConfigTraits<C>;
  static constexpr bool kSwap = Traits::kSwap;
  using TileShape = typename Traits::TileShape;
  using ClusterShape = typename Traits::ClusterShape;

  using ElementAB = cutlass::float_e4m3_t;
  using ElementD = OutElement<O>;
  using ElementAcc = float;
  using LayoutA = cutlass::layout::RowMajor;     // [M, K], K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // [N, K], K contiguous
  // Plain: D [rows_e, N] row-major. Swapped: D' [N, rows_e] column-major, the same bytes.
  using LayoutD = std::conditional_t<kSwap, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlignAB = 128 / cutlass::sizeof_bits<ElementAB>::value;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;

  // Scale vectors: per-group pointer, runtime stride (true: one value per row/column; false: one scalar). They are
  // read element by element (alignment 1) because per-token scale pointers start at arbitrary rows.
  static constexpr auto kRN = cutlass::FloatRoundStyle::round_to_nearest;
  using ColScale = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float*, float, Stride<bool, _0, _0>, 1>;
  using RowScale = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float*, float, Stride<_0, bool, _0>, 1>;
  using RowScaled = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, float, float, kRN>, RowScale,
      cutlass::epilogue::fusion::Sm90AccFetch>;
  using EpilogueEVT = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementD, float, kRN>, ColScale, RowScaled>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float, void, LayoutD*, kAlignD, ElementD,
      LayoutD*, kAlignD, typename Traits::EpilogueSchedule, EpilogueEVT>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, LayoutA*, kAlignAB, ElementAB, LayoutB*,
      kAlignAB, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Traits::KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  // The stage count is derived to fit, but nothing in CUTLASS checks the total: a launch would fail at run time.
  static_assert(Kernel::SharedStorageSize <= cutlass::gemm::collective::detail::sm90_smem_capacity_bytes,
                "the kernel's shared memory exceeds an SM90 block's");
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
  using UnderlyingShape = typename ProblemShape::UnderlyingProblemShape;
};

// Per-group arrays, carved out of the front of the workspace.
template <class G>
struct GroupArrays {
  typename G::UnderlyingShape* problem;
  const typename G::ElementAB** ptr_a;
  const typename G::ElementAB** ptr_b;
  typename G::ElementD** ptr_d;
  const float** ptr_col_scale;
  const float** ptr_row_scale;
  typename G::StrideA* stride_a;
  typename G::StrideB* stride_b;
  typename G::StrideD* stride_d;
  void* cutlass_workspace;

  static constexpr size_t round_up(size_t x) { return (x + 255) / 256 * 256; }

  // Lays the arrays out from `base` (nullptr: just measures). Returns the bytes used before the CUTLASS workspace.
  static size_t carve(void* base, int e, GroupArrays* out) {
    char* p = static_cast<char*>(base);
    size_t off = 0;
    auto take = [&](auto*& dst, size_t bytes) {
      using T = std::remove_reference_t<decltype(dst)>;
      if (out) dst = reinterpret_cast<T>(p + off);
      off += round_up(bytes);
    };
    GroupArrays tmp{};
    GroupArrays& g = out ? *out : tmp;
    take(g.problem, sizeof(typename G::UnderlyingShape) * e);
    take(g.ptr_a, sizeof(void*) * e);
    take(g.ptr_b, sizeof(void*) * e);
    take(g.ptr_d, sizeof(void*) * e);
    take(g.ptr_col_scale, sizeof(void*) * e);
    take(g.ptr_row_scale, sizeof(void*) * e);
    take(g.stride_a, sizeof(typename G::StrideA) * e);
    take(g.stride_b, sizeof(typename G::StrideB) * e);
    take(g.stride_d, sizeof(typename G::StrideD) * e);
    if (out) g.cutlass_workspace = p + off;
    return off;
  }
};

// A packed stride with its one dynamic (leading-dimension) mode set to `ld`.
template <class Stride>
__device__ __forceinline__ Stride leading_stride(int64_t ld) {
  Stride s{};
  if constexpr (cute::is_static<cute::remove_cvref_t<decltype(cute::get<0>(s))>>::value) {
    cute::get<1>(s) = ld;
  } else {
    cute::get<0>(s) = ld;
  }
  return s;
}

// One thread per group (expert e, K slice s; group index e·S + s): problem size, operand/output/scale pointers and
// strides of its group.
template <class G>
__global__ void setup_groups_kernel(GroupArrays<G> g, const int32_t* __restrict__ offsets,
                                    const typename G::ElementAB* a, const typename G::ElementAB* b,
                                    typename G::ElementD* out, const float* a_scale, const float* b_scale,
                                    bool a_per_row, bool b_per_col, int num_experts, int k_splits,
                                    int64_t total_rows, int n, int k) {
  const int group = blockIdx.x * blockDim.x + threadIdx.x;
  if (group >= num_experts * k_splits) return;
  const int e = group / k_splits;
  const int s = group % k_splits;
  const int k_slice = k / k_splits;
  // clamped to [0, total_rows] and non-decreasing, so a bad offsets tensor can never address outside a or out
  const int64_t start = min(max(static_cast<int64_t>(offsets[e]), int64_t{0}), total_rows);
  const int64_t end = min(max(static_cast<int64_t>(offsets[e + 1]), start), total_rows);
  const int rows = static_cast<int>(end - start);
  // the slice's first column; the leading dimensions stay K
  const auto* a_e = a + start * k + static_cast<int64_t>(s) * k_slice;
  const auto* b_e = b + static_cast<int64_t>(e) * n * k + static_cast<int64_t>(s) * k_slice;
  const float* as_e = a_per_row ? a_scale + start : a_scale;
  const float* bs_e = b_per_col ? b_scale + static_cast<int64_t>(e) * n : b_scale + e;
  if constexpr (G::kSwap) {
    g.problem[group] = cute::make_shape(n, rows, k_slice);
    g.ptr_a[group] = b_e;
    g.ptr_b[group] = a_e;
    g.ptr_col_scale[group] = bs_e;
    g.ptr_row_scale[group] = as_e;
  } else {
    g.problem[group] = cute::make_shape(rows, n, k_slice);
    g.ptr_a[group] = a_e;
    g.ptr_b[group] = b_e;
    g.ptr_col_scale[group] = as_e;
    g.ptr_row_scale[group] = bs_e;
  }
  g.ptr_d[group] = out + (static_cast<int64_t>(s) * total_rows + start) * n;
  g.stride_a[group] = leading_stride<typename G::StrideA>(k);
  g.stride_b[group] = leading_stride<typename G::StrideB>(k);
  g.stride_d[group] = leading_stride<typename G::StrideD>(n);
}

template <class G>
typename G::Gemm::Arguments make_arguments(const GroupArrays<G>& g, const GroupedGemmParams& p) {
  const bool col_vec = G::kSwap ? p.b_per_col : p.a_per_row;
  const bool row_vec = G::kSwap ? p.a_per_row : p.b_per_col;
  typename G::Gemm::Arguments args;
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {p.num_experts * p.k_splits, g.problem, nullptr};
  args.mainloop = {g.ptr_a, g.stride_a, g.ptr_b, g.stride_b, kPromotionInterval};
  // EVT arguments: {col broadcast, {row broadcast, acc, multiply}, multiply}.
  typename G::EpilogueEVT::Arguments evt{
      {g.ptr_col_scale, 0.0f, {col_vec, _0{}, _0{}}},
      {{g.ptr_row_scale, 0.0f, {_0{}, row_vec, _0{}}}, {}, {}},
      {}};
  args.epilogue = {evt, nullptr, g.stride_d, g.ptr_d, g.stride_d};
  args.hw_info.device_id = p.device;
  args.hw_info.sm_count = p.sm_count;
  return args;
}

template <GemmConfig C, OutType O>
size_t workspace_bytes(int num_groups, int sm_count) {
  using G = GroupedFp8Gemm<C, O>;
  const size_t arrays = GroupArrays<G>::carve(nullptr, num_groups, nullptr);
  GroupArrays<G> g{};
  GroupedGemmParams p{};
  p.num_experts = num_groups;
  p.k_splits = 1;
  p.sm_count = sm_count;
  return arrays + G::Gemm::get_workspace_size(make_arguments<G>(g, p));
}

template <GemmConfig C, OutType O>
const char* run_grouped_gemm(const GroupedGemmParams& p) {
  using G = GroupedFp8Gemm<C, O>;
  GroupArrays<G> g{};
  const int groups = p.num_experts * p.k_splits;
  GroupArrays<G>::carve(p.workspace, groups, &g);
  constexpr int kThreads = 128;
  setup_groups_kernel<G><<<(groups + kThreads - 1) / kThreads, kThreads, 0, p.stream>>>(
      g, p.expert_offsets, static_cast<const typename G::ElementAB*>(p.a),
      static_cast<const typename G::ElementAB*>(p.b), static_cast<typename G::ElementD*>(p.out), p.a_scale,
      p.b_scale, p.a_per_row, p.b_per_col, p.num_experts, p.k_splits, p.rows, p.n, p.k);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return cudaGetErrorString(e);

  auto args = make_arguments<G>(g, p);
  typename G::Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) {
    return "CUTLASS cannot implement this problem (can_implement failed: N and K must be "
           "multiples of 16 and every pointer 16-byte aligned)";
  }
  if (gemm.initialize(args, g.cutlass_workspace, p.stream) != cutlass::Status::kSuccess) {
    return "CUTLASS initialize failed";
  }
  if (gemm.run(p.stream) != cutlass::Status::kSuccess) return "CUTLASS launch failed";
  return nullptr;
}

}  // namespace moejit::sm90_fp8

// Explicit instantiation of one (configuration, output type) pair (used by the instantiation TUs).
#define MOEJIT_FP8_GG_INSTANTIATE(CONFIG, OUT)                                                                   \
  template size_t moejit::sm90_fp8::workspace_bytes<CONFIG, OUT>(int, int);                                     \
  template const char* moejit::sm90_fp8::run_grouped_gemm<CONFIG, OUT>(const moejit::sm90_fp8::GroupedGemmParams&);

#endif  // !MOEJIT_FP8_GG_DECLARATIONS_ONLY
