// The dk/dv pass that runs before the dq pass (integer offsets, DkdvRoute::
// kBeforeDq) with its copies taken off the warps that compute: a block holds
// kRings consumer warpgroups, each the one-tile pass's four warps over its own
// 64-key tile, and a producer warpgroup whose warp r stages ring r's q and dO
// rows and their lse and delta with cp.async, in the one-tile pass's layout,
// into a ring of kStages stages that consumers and producer hand back and
// forth by mbarrier. A consumer warp then issues only its step's loads from
// shared memory, products and stores; in the one-tile pass the copies were a
// third of its instructions, and a probe of that pass measured its copies and
// its work, each alone, at ~70% of its time: they overlapped only in part
// (docs/performance.md, "The integer dk/dv pass taken apart").
//
// Each step computes what the one-tile pass computes, in the same order, so
// the gradients and the stored dS are bitwise that pass's.
// setmaxnreg hands the producer's registers to the consumers, so it is built
// for sm_90a alone (dkdv_producer_applies in bwd_launch.cuh).
#pragma once

#include <cstdint>
#include <type_traits>

#include "bwd_mma_kernel.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace fibsparse {
namespace mma_bwd {

// kVariant (temporary, FIBSPARSE_DKDV_PRODUCER=1..4 for the A/B): 2 gives
// each ring two producer warps at head_dim 128 and three stages at 64; 3 is
// a probe whose producer copies nothing (its gradients are wrong); 4 is 2's
// producer at head_dim 128 (1's at 64) with each warp's v rows in shared
// memory instead of registers (SharedFragments).
template <int kHeadDim, int kVariant = 1>
struct ProducerShape {
  // Consumer warpgroups (rings) a block: two at head_dim 128, three at 64,
  // as many warps an SM as the one-tile pass had at 128 (two blocks of four)
  // and three quarters of its 12 at 64, each at a larger register budget.
  static constexpr int kRings = kHeadDim >= 128 ? 2 : 3;
  static constexpr int kStages = kVariant == 2 && kHeadDim <= 64 ? 3 : 2;
  static constexpr int kProducerWarpsPerRing = (kVariant == 2 || kVariant == 4) && kHeadDim >= 128 ? 2 : 1;
  static constexpr bool kCopiesNothing = kVariant == 3;
  static constexpr bool kVInSmem = kVariant == 4;
  static constexpr int kThreads = (kRings + 1) * kMmaBlockThreads;
  // One block an SM: ptxas gives every thread the launch budget, the
  // producer warpgroup keeps kProducerRegisters and gives the rest to the
  // consumers (setmaxnreg moves registers in multiples of 8).
  static constexpr int kLaunchRegisters = 65536 / kThreads / 8 * 8;
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters =
      (kLaunchRegisters + (kLaunchRegisters - kProducerRegisters) / kRings) / 8 * 8;
  static_assert(kConsumerRegisters <= 256);
  // Rows: ring r's stage s is stage_buffer(ring_rows(r), s, which); then the
  // statistics (lse, delta) of each ring's stages; then the barriers.
  static constexpr int kRingRows = kStages * 2 * kBufRows;
  static constexpr int kRowBytes = kRings * kStages * 2 * kStageBytes<kHeadDim>;
  static constexpr int kStatBytes = kRings * kStages * 2 * kBufRows * int(sizeof(float));
  static constexpr int kBarriers = 2 * kRings * kStages;
  static constexpr int kVRowBytes = kVInSmem ? kRings * kBlockRows * (kHeadDim + 8) * int(sizeof(uint16_t)) : 0;
  static constexpr int kSmemBytes = kRowBytes + kStatBytes + kVRowBytes + kBarriers * int(sizeof(uint64_t));
  static_assert(kRowBytes % 16 == 0 && kStatBytes % 8 == 0);
};

// Queues rows kPart * part .. of step s of a 64-key tile (steps) from one
// warp's 32 lanes, into the one-tile pass's layout (QuerySteps::issue with
// kBeforeDq: a band chunk of 64 query rows, or an offset's four warp strips
// of 16 rows, which for integer offsets lie one after another, 64 rows in
// all), with each row's lse and delta; rows outside the queries are zeros.
template <typename T, int kHeadDim, int kPart>
__device__ __forceinline__ void stage_step_from_warp(const QuerySteps<int32_t, kHeadDim>& steps,
                                                     typename QuerySteps<int32_t, kHeadDim>::Step s, int b, int part,
                                                     Rows<kHeadDim> q_dst, Rows<kHeadDim> do_dst, float* lse_dst,
                                                     float* delta_dst, unsigned lane) {
  static_assert(QuerySteps<int32_t, kHeadDim>::kStripRows * kWarps == kBlockRows, "integer strips are contiguous");
  const Params& p = steps.p;
  const Sequence& seq = steps.seq;
  const uint16_t* q_src = bits<T>(p.q, seq.q_start(b, p.q_batch_stride, p.q_row_stride) + s.head * p.q_head_stride);
  const uint16_t* do_src =
      bits<T>(p.dout, seq.q_start(b, p.do_batch_stride, p.do_row_stride) + s.head * p.do_head_stride);
  const int64_t stats = stats_index(p, seq, b, s.head, 0);
  int64_t first, last;
  if (steps.is_band(s)) {
    first = steps.chunk_row(s);
    last = steps.band_last_row;
  } else {
    const int whole = steps.offsets(s.head)[steps.offset_index(s)];
    if (whole < 0) return;  // a disabled offset: the consumers skip the step
    first = steps.block_key + whole - seq.q_pos_shift;
    last = seq.seqlen_q - 1;
  }
  stage_row_pair<kHeadDim, kPart, 32>(q_dst + kPart * part, q_src, p.q_row_stride, do_dst + kPart * part, do_src,
                                      p.do_row_stride, first + kPart * part, last, lane);
  for (int r = kPart * part + int(lane); r < kPart * (part + 1); r += 32) {
    const int64_t i = first + r;
    const bool valid = i >= 0 && i <= last;
    const int64_t at = valid ? stats + i : 0;
    copy_async_4(lse_dst + r, static_cast<const float*>(p.lse) + at, valid);
    copy_async_4(delta_dst + r, static_cast<const float*>(p.delta) + at, valid);
  }
}

template <typename T, int kHeadDim, int kVariant>
__global__ void __launch_bounds__(ProducerShape<kHeadDim, kVariant>::kThreads, 1) dkdv_producer_kernel(const Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = ProducerShape<kHeadDim, kVariant>;
  using Steps = QuerySteps<int32_t, kHeadDim>;
  extern __shared__ __align__(16) uint16_t smem[];
  const auto ring_rows = [&](int ring) { return smem + ring * S::kRingRows * (kHeadDim + 8); };
  float* stats_smem = reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + S::kRowBytes);
  const auto stage_stat = [&](int ring, int s, int which) {
    return stats_smem + ((ring * S::kStages + s) * 2 + which) * kBufRows;
  };
  Rows<kHeadDim> v_rows = reinterpret_cast<Rows<kHeadDim>>(reinterpret_cast<char*>(smem) + S::kRowBytes + S::kStatBytes);
  uint64_t* full =
      reinterpret_cast<uint64_t*>(reinterpret_cast<char*>(smem) + S::kRowBytes + S::kStatBytes + S::kVRowBytes);
  uint64_t* empty = full + S::kRings * S::kStages;

  const int hk = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  // Past a packed sequence's end: the whole block leaves, before any barrier.
  if (int64_t(blockIdx.x) * S::kRings * kBlockRows >= seq.seqlen_k) return;
  if (threadIdx.x == 0) {
    for (int i = 0; i < S::kRings * S::kStages; ++i) {
      tma::barrier_init(&full[i], S::kProducerWarpsPerRing);  // a lane of each, once the warp's copies landed
      tma::barrier_init(&empty[i], kWarps);  // a lane of each consumer warp, done reading
    }
  }
  __syncthreads();
  const int role = threadIdx.x / kMmaBlockThreads;  // rings 0 .. kRings - 1, then the producer
  const int warp = threadIdx.x / 32 % kWarps, lane = threadIdx.x % 32;
  const auto slot = [&](int ring, int n) { return ring * S::kStages + n % S::kStages; };
  const auto parity = [&](int n) { return uint32_t(n / S::kStages) & 1; };

  if (role == S::kRings) {
    wgmma::set_max_registers_dec<S::kProducerRegisters>();
    // Producer warp w feeds ring w / kProducerWarpsPerRing, its share of the
    // rows; a warp past the last ring has none.
    const int ring = warp / S::kProducerWarpsPerRing, part = warp % S::kProducerWarpsPerRing;
    const int64_t tile = int64_t(blockIdx.x) * S::kRings + ring;
    if (ring >= S::kRings || tile * kBlockRows >= seq.seqlen_k) return;
    const Steps steps(p, seq, tile * kBlockRows, hk);
    auto step = steps.first();
    for (int n = 0; n < steps.num_steps; ++n, step = steps.next(step)) {
      const int s = n % S::kStages;
      tma::wait(&empty[slot(ring, n)], parity(n) ^ 1);
      if constexpr (!S::kCopiesNothing) {
        stage_step_from_warp<T, kHeadDim, kBlockRows / S::kProducerWarpsPerRing>(
            steps, step, b, part, stage_buffer<kHeadDim>(ring_rows(ring), s, 0),
            stage_buffer<kHeadDim>(ring_rows(ring), s, 1), stage_stat(ring, s, 0), stage_stat(ring, s, 1),
            unsigned(lane));
      }
      // Each lane waits for its own copies; then one lane, for the warp,
      // releases them to the consumers.
      commit_async();
      wait_async<0>();
      __syncwarp();
      if (lane == 0) tma::arrive(&full[slot(ring, n)]);
    }
    return;
  }

  wgmma::set_max_registers_inc<S::kConsumerRegisters>();
  const int ring = role, g = lane / 4;
  const int64_t tile = int64_t(blockIdx.x) * S::kRings + ring;
  if (tile * kBlockRows >= seq.seqlen_k) return;
  const int warp_k0 = int(tile) * kBlockRows + 16 * warp;  // the warp's first key (= its position)
  const float scale = float(p.softmax_scale), scale_log2 = scale * float(M_LOG2E);
  const Steps steps(p, seq, tile * kBlockRows, hk);
  uint16_t* rows = ring_rows(ring);
  // The step's offset is read one step ahead, as the one-tile pass reads it
  // when it queues the step.
  const auto read_offset = [&](auto s, bool exists) {
    return exists && !steps.is_band(s) ? steps.offsets(s.head)[steps.offset_index(s)] : -1;
  };
  int next_offset = read_offset(steps.first(), steps.num_steps > 0);

  uint32_t kf[kHeadDim / 16][4];
  load_a_fragments<kHeadDim>(bits<T>(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride),
                             p.k_row_stride, warp_k0, seq.seqlen_k, g, lane % 4, kf);
  const uint16_t* v_src = bits<T>(p.v, seq.k_start(b, p.v_batch_stride, p.v_row_stride) + hk * p.v_head_stride);
  using VFragments = std::conditional_t<S::kVInSmem, SharedFragments, uint32_t[kHeadDim / 16][4]>;
  VFragments vf;
  if constexpr (S::kVInSmem) {
    // The warp's 16 v rows (zeros past the last key), staged once.
    Rows<kHeadDim> warp_v = v_rows + (ring * kWarps + warp) * 16;
    stage_rows<kHeadDim, 16, 32>(warp_v, v_src, p.v_row_stride, warp_k0, seq.seqlen_k - 1, unsigned(lane));
    commit_async();
    wait_async<0>();
    __syncwarp();
    vf = shared_fragments_of<kHeadDim>(warp_v, lane);
  } else {
    load_a_fragments<kHeadDim>(v_src, p.v_row_stride, warp_k0, seq.seqlen_k, g, lane % 4, vf);
  }
  // The lane's ldmatrix rows of its warp's strip in stage 0, kept as the
  // one-tile pass keeps them (kKeptRows there).
  constexpr uint32_t kBufferBytes = kStageBytes<kHeadDim>;
  const int row0 = Steps::strip_row0(warp);
  RowPtr<kHeadDim> strip = stage_buffer<kHeadDim>(rows, 0, 0) + row0;
  const uint32_t strip_dot_row = __shfl_sync(0xffffffffu, dot_16_rows_lane_row<kHeadDim>(strip, lane), lane);
  const uint32_t strip_add_row = __shfl_sync(0xffffffffu, add_rows_lane_row<kHeadDim>(strip, lane), lane);
  // And the band's rows the same way at head_dim 64 and below (kKeptBandRows there).
  constexpr bool kKeptBandRows = kHeadDim <= 64;
  uint32_t band_dot_row = 0, band_add_row = 0;
  if constexpr (kKeptBandRows) {
    RowPtr<kHeadDim> chunk = stage_buffer<kHeadDim>(rows, 0, 0);
    band_dot_row = __shfl_sync(0xffffffffu, dot_16_rows_lane_row<kHeadDim>(chunk, lane), lane);
    band_add_row = __shfl_sync(0xffffffffu, add_rows_lane_row<kHeadDim>(chunk, lane), lane);
  }
  float dk[kHeadDim / 8][4] = {}, dv[kHeadDim / 8][4] = {};
  auto step = steps.first();
  for (int n = 0; n < steps.num_steps; ++n) {
    const int step_offset = next_offset;
    const auto following = steps.next(step);
    next_offset = read_offset(following, n + 1 < steps.num_steps);
    const int s = n % S::kStages;
    tma::wait(&full[slot(ring, n)], parity(n));
    RowPtr<kHeadDim> rows_q = stage_buffer<kHeadDim>(rows, s, 0), rows_do = stage_buffer<kHeadDim>(rows, s, 1);
    const float* stat0 = stage_stat(ring, s, 0);
    const float* stat1 = stage_stat(ring, s, 1);
    const uint32_t stage_bytes = uint32_t(s) * 2 * kBufferBytes;  // stage s's q rows; its dO rows one buffer on
    if (steps.is_band(step)) {
      dkdv_band_step<T, kHeadDim, true, false, kKeptBandRows>(
          p, seq, b, step.head, tile, step.index, steps.chunk_row(step), steps.band_last_row, warp_k0, kf, vf, rows_q,
          rows_do, stat0, stat1, dk, dv, lane, band_dot_row + stage_bytes, band_add_row + stage_bytes, warp);
    } else if (step_offset >= 0) {
      // As the one-tile pass's integer offset step: key x of the warp pairs
      // with strip row x; its owner lane stores dS for the dq pass.
      const int o = steps.offset_index(step);
      float st[2][4], dpt[2][4];
      dot_16_rows_at<T, kHeadDim, 2, kOffsetChains<kHeadDim>>(kf, strip_dot_row + stage_bytes, st, 0);
      dot_16_rows_at<T, kHeadDim, 2, kOffsetChains<kHeadDim>>(vf, strip_dot_row + stage_bytes + kBufferBytes, dpt, 0);
      const float* lse = stat0 + row0;
      const float* dlt = stat1 + row0;
      float prob[2], dscore[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
        const int64_t query = int64_t(warp_k0) + row + step_offset;  // its row and position (q_pos_shift 0 on this route)
        const bool valid = query < seq.seqlen_q &&
                           sample_key<float>(query, distance_of_offset(0, p.band), p.band, &step_offset).valid;
        const float lse_log2 = backward_lse(lse[row]) * float(M_LOG2E);
        prob[r] = valid ? fast_exp2(diagonal_element(st, r, g) * scale_log2 - lse_log2) : 0.f;
        dscore[r] = valid ? prob[r] * (diagonal_element(dpt, r, g) - dlt[row]) : 0.f;
        if (valid && owns_diagonal(lane)) {
          static_cast<float*>(p.offset_dscores)[offset_term_index(p, seq, b, step.head, o, query)] = dscore[r];
        }
      }
      add_diag_times_rows_at<T, kHeadDim>(prob[0], prob[1], strip_add_row + stage_bytes + kBufferBytes, dv, lane);
      add_diag_times_rows_at<T, kHeadDim>(dscore[0], dscore[1], strip_add_row + stage_bytes, dk, lane);
    }
    // Every lane's reads of the stage are done (ldmatrix and the statistics'
    // loads have written their registers) before one lane hands it back.
    __syncwarp();
    if (lane == 0) tma::arrive(&empty[slot(ring, n)]);
    step = following;
  }
  store_rows<T, kHeadDim>(bits<T>(p.dk, seq.k_start(b, p.dk_batch_stride, p.dk_row_stride) + hk * p.dk_head_stride),
                          p.dk_row_stride, warp_k0, seq.seqlen_k, dk, scale, g, lane % 4);
  store_rows<T, kHeadDim>(bits<T>(p.dv, seq.k_start(b, p.dv_batch_stride, p.dv_row_stride) + hk * p.dv_head_stride),
                          p.dv_row_stride, warp_k0, seq.seqlen_k, dv, 1.f, g, lane % 4);
#else
  __trap();  // launched only where dkdv_producer_applies: a build with sm_90a, on such a device
#endif
}

}  // namespace mma_bwd
}  // namespace fibsparse
