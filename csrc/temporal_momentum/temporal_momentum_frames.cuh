// The frame-segment kernels of temporal momentum (plan kernel kFrameSegments: regime b, frame
// axis contiguous): a block walks one lane's frames in tiles of 256 vectors; each thread's vector
// of frames becomes a (decay, value) pair, warps scan the pairs with shuffles, and the warp totals
// are scanned through shared memory, carrying the state from tile to tile.
#pragma once

#include "temporal_momentum/temporal_momentum_device.cuh"

namespace vidmem {
namespace momentum {

// ============================================================================ frame segments
//
// A work unit is (lane, chunk); the block walks the chunk's frames in tiles of kThreads * V,
// thread t holding frames tile0 + t * V + [0, V).

template <typename scalar_t, int V, bool kAggregate>
__global__ void __launch_bounds__(kThreads) forward_frames_kernel(const ForwardParams p) {
  using acc_t = acc_type<scalar_t>;
  constexpr int64_t TILE = int64_t(kThreads) * V;
  __shared__ ScanPair<acc_t> warp_maps[kWarps];

  const Layout& lay = p.layout;
  const int lane_id = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t units = lay.lanes * p.plan.chunks;
  const bool reset = typed<scalar_t>(p.initial) == nullptr;
  const int64_t xf = lay.frame_stride[kX], yf = lay.frame_stride[kY];

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t q = unit / lay.lanes;
    const int64_t lane = unit % lay.lanes;
    if (kAggregate && q == p.plan.chunks - 1) continue;  // block-uniform
    const LaneCoords c = lane_coords(lay, lane);
    const scalar_t* xl = typed<scalar_t>(p.x) + lane_offset(lay, kX, c);
    scalar_t* yl = typed<scalar_t>(p.y) + lane_offset(lay, kY, c);
    const acc_t m = lane_momentum<acc_t>(p, c);
    const acc_t one_minus_m = acc_t(1) - m;
    const int64_t t_begin = q * p.plan.chunk_len;
    const int64_t t_end = t_begin + p.plan.chunk_len < lay.frames ? t_begin + p.plan.chunk_len : lay.frames;
    acc_t carry = zero_state<acc_t>();
    if (!kAggregate) {
      const acc_t start = reset ? zero_state<acc_t>() : to_acc(typed<scalar_t>(p.initial)[lane_offset(lay, kInitial, c)]);
      carry = q == 0 ? start
                     : forward_chunk_carry(typed<acc_t>(p.workspace), lay.lanes, lane, q, p.plan.chunk_len, m,
                                           start, reset);
    }

    const int64_t tiles = (t_end - t_begin + TILE - 1) / TILE;
    Pack<scalar_t, V> cur = load_frames<scalar_t, V>(xl, t_begin + int64_t(threadIdx.x) * V, t_end, xf);
    for (int64_t k = 0; k < tiles; ++k) {
      const int64_t f0 = t_begin + k * TILE + int64_t(threadIdx.x) * V;
      Pack<scalar_t, V> next = cur;
      if (k + 1 < tiles) next = load_frames<scalar_t, V>(xl, f0 + TILE, t_end, xf);  // in flight during the scan

      ScanPair<acc_t> map = scan_identity<acc_t>();
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int64_t f = f0 + i;
        if (f < t_end) {
          const acc_t xv = to_acc(cur.v[i]);
          const ScanPair<acc_t> step =
              (f == 0 && reset) ? ScanPair<acc_t>{acc_t(0), xv} : ema_pair(m, one_minus_m, xv);
          map = scan_combine(map, step);
        }
      }
      // Inclusive scan over the warp, then the maps of the threads before this one.
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const ScanPair<acc_t> before = shfl_up_pair(map, d);
        if (lane_id >= d) map = scan_combine(before, map);
      }
      ScanPair<acc_t> lane_prefix = shfl_up_pair(map, 1);
      if (lane_id == 0) lane_prefix = scan_identity<acc_t>();
      if (lane_id == 31) warp_maps[warp] = map;
      __syncthreads();
      ScanPair<acc_t> warp_prefix = scan_identity<acc_t>();
      ScanPair<acc_t> tile_map = scan_identity<acc_t>();
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        if (w == warp) warp_prefix = tile_map;
        tile_map = scan_combine(tile_map, warp_maps[w]);
      }
      if (!kAggregate) {
        acc_t state = scan_apply(scan_combine(warp_prefix, lane_prefix), carry);  // state before this thread's frames
        Pack<scalar_t, V> out = zero_pack<scalar_t, V>();
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const int64_t f = f0 + i;
          if (f >= t_end) break;
          const acc_t xv = to_acc(cur.v[i]);
          state = (f == 0 && reset) ? xv : ema_step(m, one_minus_m, state, xv);
          out.v[i] = from_acc<scalar_t>(state);
        }
        store_frames<scalar_t, V>(yl, f0, t_end, yf, out);
      }
      carry = scan_apply(tile_map, carry);
      __syncthreads();  // warp_maps is rewritten by the next tile
      cur = next;
    }
    if (kAggregate && threadIdx.x == 0) typed<acc_t>(p.workspace)[q * lay.lanes + lane] = carry;
  }
}

template <typename scalar_t, int V>
struct BackwardFrames {
  Pack<scalar_t, V> grad_y, x, y;  // y: frames f0 .. f0+V-1 (y_{f-1} of the next frame)
  scalar_t y_before;               // y at frame f0 - 1
};

template <typename scalar_t, int V>
__device__ __forceinline__ BackwardFrames<scalar_t, V> load_backward_frames(const BackwardParams& p,
                                                                            const scalar_t* gyl, const scalar_t* xl,
                                                                            const scalar_t* yl, int64_t f0,
                                                                            int64_t end, bool momentum_grad) {
  const Layout& lay = p.layout;
  BackwardFrames<scalar_t, V> r;
  r.x = r.y = zero_pack<scalar_t, V>();
  r.y_before = from_acc<scalar_t>(0);
  r.grad_y = load_frames<scalar_t, V>(gyl, f0, end, lay.frame_stride[kGradY]);
  if (momentum_grad) {
    r.x = load_frames<scalar_t, V>(xl, f0, end, lay.frame_stride[kX]);
    r.y = load_frames<scalar_t, V>(yl, f0, end, lay.frame_stride[kY]);
    r.y_before = (f0 >= 1 && f0 < end) ? yl[(f0 - 1) * lay.frame_stride[kY]] : from_acc<scalar_t>(0);
  }
  return r;
}

template <typename scalar_t, int V, bool kAggregate>
__global__ void __launch_bounds__(kThreads) backward_frames_kernel(const BackwardParams p) {
  using acc_t = acc_type<scalar_t>;
  constexpr int64_t TILE = int64_t(kThreads) * V;
  __shared__ ScanPair<acc_t> warp_maps[kWarps];
  __shared__ acc_t warp_dm[kWarps];

  const Layout& lay = p.layout;
  const int lane_id = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t units = lay.lanes * p.plan.chunks;
  const bool has_init = typed<scalar_t>(p.initial) != nullptr;
  const bool momentum_grad = p.momentum_grad && !kAggregate;

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t q = unit / lay.lanes;
    const int64_t lane = unit % lay.lanes;
    if (kAggregate && q == 0) continue;  // block-uniform
    const LaneCoords c = lane_coords(lay, lane);
    const scalar_t* gyl = typed<scalar_t>(p.grad_y) + lane_offset(lay, kGradY, c);
    scalar_t* gxl = typed<scalar_t>(p.grad_x) + lane_offset(lay, kGradX, c);
    const scalar_t* xl = momentum_grad ? typed<scalar_t>(p.x) + lane_offset(lay, kX, c) : nullptr;
    const scalar_t* yl = momentum_grad ? typed<scalar_t>(p.y) + lane_offset(lay, kY, c) : nullptr;
    const acc_t m = lane_momentum<acc_t>(p, c);
    const acc_t one_minus_m = acc_t(1) - m;
    const int64_t t_begin = q * p.plan.chunk_len;
    const int64_t t_end = t_begin + p.plan.chunk_len < lay.frames ? t_begin + p.plan.chunk_len : lay.frames;
    const acc_t init =
        (momentum_grad && has_init) ? to_acc(typed<scalar_t>(p.initial)[lane_offset(lay, kInitial, c)]) : acc_t(0);
    acc_t carry = (kAggregate || q == p.plan.chunks - 1)
                      ? acc_t(0)
                      : backward_chunk_carry(typed<acc_t>(p.workspace), lay.lanes, lane, q, p.plan.chunks, lay.frames,
                                             p.plan.chunk_len, m);
    acc_t dm = acc_t(0);

    const int64_t tiles = (t_end - t_begin + TILE - 1) / TILE;
    BackwardFrames<scalar_t, V> cur = load_backward_frames<scalar_t, V>(
        p, gyl, xl, yl, t_begin + (tiles - 1) * TILE + int64_t(threadIdx.x) * V, t_end, momentum_grad);
    for (int64_t k = tiles - 1; k >= 0; --k) {
      const int64_t f0 = t_begin + k * TILE + int64_t(threadIdx.x) * V;
      BackwardFrames<scalar_t, V> next = cur;
      if (k > 0) next = load_backward_frames<scalar_t, V>(p, gyl, xl, yl, f0 - TILE, t_end, momentum_grad);

      // The scan runs from the last frame down: threads and warps after this one come first.
      ScanPair<acc_t> map = scan_identity<acc_t>();
#pragma unroll
      for (int i = V - 1; i >= 0; --i) {
        if (f0 + i < t_end) map = scan_combine(map, ScanPair<acc_t>{m, to_acc(cur.grad_y.v[i])});
      }
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const ScanPair<acc_t> after = shfl_down_pair(map, d);
        if (lane_id + d < 32) map = scan_combine(after, map);
      }
      ScanPair<acc_t> lane_prefix = shfl_down_pair(map, 1);
      if (lane_id == 31) lane_prefix = scan_identity<acc_t>();
      if (lane_id == 0) warp_maps[warp] = map;
      __syncthreads();
      ScanPair<acc_t> warp_prefix = scan_identity<acc_t>();
      ScanPair<acc_t> tile_map = scan_identity<acc_t>();
#pragma unroll
      for (int w = kWarps - 1; w >= 0; --w) {
        if (w == warp) warp_prefix = tile_map;
        tile_map = scan_combine(tile_map, warp_maps[w]);
      }
      if (!kAggregate) {
        acc_t a = scan_apply(scan_combine(warp_prefix, lane_prefix), carry);  // a past this thread's frames
        Pack<scalar_t, V> out = zero_pack<scalar_t, V>();
#pragma unroll
        for (int i = V - 1; i >= 0; --i) {
          const int64_t f = f0 + i;
          if (f >= t_end) continue;  // past the chunk: not part of the scan
          a = ema_reverse_step(m, a, to_acc(cur.grad_y.v[i]));
          out.v[i] = from_acc<scalar_t>((f == 0 && !has_init) ? a : ema_input_grad(m, one_minus_m, a));
          if (momentum_grad && (f >= 1 || has_init)) {
            const acc_t prev = f == 0 ? init : to_acc(i > 0 ? cur.y.v[i - 1] : cur.y_before);
            dm += a * (prev - to_acc(cur.x.v[i]));
          }
          if (f == 0 && has_init) {
            typed<scalar_t>(p.grad_initial)[lane_offset(lay, kGradInitial, c)] = from_acc<scalar_t>(initial_grad(m, a));
          }
        }
        store_frames<scalar_t, V>(gxl, f0, t_end, lay.frame_stride[kGradX], out);
      }
      carry = scan_apply(tile_map, carry);
      __syncthreads();  // warp_maps is rewritten by the next tile
      cur = next;
    }

    if (kAggregate) {
      if (threadIdx.x == 0) typed<acc_t>(p.workspace)[q * lay.lanes + lane] = carry;
    } else if (momentum_grad) {  // a fixed reduction tree: bitwise reproducible
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) dm += __shfl_xor_sync(kFullMask, dm, d);
      if (lane_id == 0) warp_dm[warp] = dm;
      __syncthreads();
      if (threadIdx.x == 0) {
        acc_t sum = acc_t(0);
        for (int w = 0; w < kWarps; ++w) sum += warp_dm[w];
        if (p.plan.chunks == 1) {
          typed<acc_t>(p.grad_momentum)[lane_offset(lay, kGradMomentum, c)] = sum;
        } else {
          dm_partials<acc_t>(p)[q * lay.lanes + lane] = sum;
        }
      }
      __syncthreads();
    }
  }
}

}  // namespace momentum
}  // namespace vidmem
