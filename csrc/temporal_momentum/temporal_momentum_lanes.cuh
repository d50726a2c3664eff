// The lane kernels of temporal momentum (plan kernels kLanes and kLaneChunks).
//
//  - lanes (regime a, many lanes, frame axis strided): one thread per lane vector (16 bytes of
//    adjacent lanes when the innermost lane stride is 1 and aligned, so a warp's accesses are
//    coalesced) walks every frame, L frames of loads in flight at a time.
//  - lane chunks (regime b, frame axis strided but too few lanes): the same thread columns, with
//    8 thread rows splitting each tile of frames. Each row composes its frames into one affine
//    map (decay, value); the rows' maps are scanned through shared memory; each thread then
//    rescans its frames from its start state.
#pragma once

#include "temporal_momentum/temporal_momentum_device.cuh"

namespace vidmem {
namespace momentum {

// ============================================================================ lanes and lane chunks
//
// Block = COLS lane-vector columns x ROWS thread rows. A work unit is (column group, chunk).
// Thread (row, col) handles frames tile0 + row * L + [0, L) of lane vector group * COLS + col.

template <typename scalar_t, int V, int ROWS, int L, bool kAggregate>
__global__ void __launch_bounds__(kThreads) forward_lanes_kernel(const ForwardParams p) {
  using acc_t = acc_type<scalar_t>;
  constexpr int COLS = kThreads / ROWS;
  constexpr int TILE = ROWS * L;
  __shared__ ScanPair<acc_t> row_maps[ROWS > 1 ? ROWS : 1][ROWS > 1 ? COLS : 1][V];

  const Layout& lay = p.layout;
  const int col = threadIdx.x % COLS;
  const int row = threadIdx.x / COLS;
  const int64_t lanevecs = lay.lanes / V;
  const int64_t groups = (lanevecs + COLS - 1) / COLS;
  const int64_t units = groups * p.plan.chunks;
  const bool reset = typed<scalar_t>(p.initial) == nullptr;
  const int64_t xf = lay.frame_stride[kX], yf = lay.frame_stride[kY];

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t q = unit / groups;
    if (kAggregate && q == p.plan.chunks - 1) continue;  // the last chunk's aggregate is never folded (block-uniform)
    const int64_t lanevec = (unit % groups) * COLS + col;
    const bool active = lanevec < lanevecs;
    const int64_t lane0 = (active ? lanevec : 0) * V;  // V divides the innermost lane size
    const LaneCoords c = lane_coords(lay, lane0);
    const scalar_t* xl = typed<scalar_t>(p.x) + lane_offset(lay, kX, c);
    scalar_t* yl = typed<scalar_t>(p.y) + lane_offset(lay, kY, c);
    acc_t m[V], carry[V];
    load_momentum<acc_t, V>(lay, c, typed<acc_t>(p.momentum), acc_t(p.momentum_value), m);
    const int64_t t_begin = q * p.plan.chunk_len;
    const int64_t t_end = t_begin + p.plan.chunk_len < lay.frames ? t_begin + p.plan.chunk_len : lay.frames;

    if (kAggregate) {
#pragma unroll
      for (int v = 0; v < V; ++v) carry[v] = zero_state<acc_t>();
    } else {
      const scalar_t* il = reset ? nullptr : typed<scalar_t>(p.initial) + lane_offset(lay, kInitial, c);
      const int64_t is = inner_stride(lay, kInitial);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const acc_t start = reset ? zero_state<acc_t>() : to_acc(il[v * is]);
        carry[v] = q == 0 ? start
                          : forward_chunk_carry(typed<acc_t>(p.workspace), lay.lanes, lane0 + v, q, p.plan.chunk_len,
                                                m[v], start, reset);
      }
    }

    for (int64_t tile0 = t_begin; tile0 < t_end; tile0 += TILE) {
      const int64_t f0 = tile0 + int64_t(row) * L;
      Pack<scalar_t, V> xs[L];
#pragma unroll
      for (int i = 0; i < L; ++i) {
        xs[i] = (active && f0 + i < t_end) ? load_pack<scalar_t, V>(xl + (f0 + i) * xf) : zero_pack<scalar_t, V>();
      }
      acc_t state[V];
      if constexpr (ROWS == 1) {
#pragma unroll
        for (int v = 0; v < V; ++v) state[v] = carry[v];
      } else {
        // This row's frames as one map per lane, then a scan over the rows.
#pragma unroll
        for (int v = 0; v < V; ++v) {
          ScanPair<acc_t> map = scan_identity<acc_t>();
#pragma unroll
          for (int i = 0; i < L; ++i) {
            const int64_t f = f0 + i;
            if (f < t_end) {
              const acc_t xv = to_acc(xs[i].v[v]);
              const ScanPair<acc_t> step = (f == 0 && reset) ? ScanPair<acc_t>{acc_t(0), xv}
                                                             : ema_pair(m[v], acc_t(1) - m[v], xv);
              map = scan_combine(map, step);
            }
          }
          row_maps[row][col][v] = map;
        }
        __syncthreads();
#pragma unroll
        for (int v = 0; v < V; ++v) {
          ScanPair<acc_t> prefix = scan_identity<acc_t>();
          for (int r = 0; r < ROWS; ++r) {
            if (r == row) state[v] = scan_apply(prefix, carry[v]);
            prefix = scan_combine(prefix, row_maps[r][col][v]);
          }
          carry[v] = scan_apply(prefix, carry[v]);  // the state after the whole tile
        }
        __syncthreads();
      }
      if (!kAggregate || ROWS == 1) {  // rescan this thread's frames from its start state
#pragma unroll
        for (int i = 0; i < L; ++i) {
          const int64_t f = f0 + i;
          if (f < t_end) {
            Pack<scalar_t, V> out = zero_pack<scalar_t, V>();
#pragma unroll
            for (int v = 0; v < V; ++v) {
              const acc_t xv = to_acc(xs[i].v[v]);
              state[v] = (f == 0 && reset) ? xv : ema_step(m[v], acc_t(1) - m[v], state[v], xv);
              out.v[v] = from_acc<scalar_t>(state[v]);
            }
            if (!kAggregate && active) store_pack<scalar_t, V>(yl + f * yf, out);
          }
        }
        if constexpr (ROWS == 1) {
#pragma unroll
          for (int v = 0; v < V; ++v) carry[v] = state[v];
        }
      }
    }
    if (kAggregate && row == 0 && active) {
#pragma unroll
      for (int v = 0; v < V; ++v) typed<acc_t>(p.workspace)[q * lay.lanes + lane0 + v] = carry[v];
    }
  }
}

// The lane-chunks backward (ROWS > 1) needs 134 to 175 registers per thread without a bound: one
// 256-thread block per SM. VIDMEM_MOMENTUM_BWD_LAUNCH_BOUNDS=1 (setup.py: VIDMEM_EXT_BWD_LAUNCH_BOUNDS=1)
// asks ptxas for two blocks per SM (at most 128 registers); benchmarks/gpu_check.sh times both builds.
#if defined(VIDMEM_MOMENTUM_BWD_LAUNCH_BOUNDS) && VIDMEM_MOMENTUM_BWD_LAUNCH_BOUNDS
constexpr int kBackwardChunkBlocksPerSm = 2;
#else
constexpr int kBackwardChunkBlocksPerSm = 1;
#endif

template <typename scalar_t, int V, int ROWS, int L, bool kAggregate>
__global__ void __launch_bounds__(kThreads, ROWS > 1 ? kBackwardChunkBlocksPerSm : 1)
    backward_lanes_kernel(const BackwardParams p) {
  using acc_t = acc_type<scalar_t>;
  constexpr int COLS = kThreads / ROWS;
  constexpr int TILE = ROWS * L;
  __shared__ ScanPair<acc_t> row_maps[ROWS > 1 ? ROWS : 1][ROWS > 1 ? COLS : 1][V];
  __shared__ acc_t row_dm[ROWS > 1 ? ROWS : 1][ROWS > 1 ? COLS : 1][V];

  const Layout& lay = p.layout;
  const int col = threadIdx.x % COLS;
  const int row = threadIdx.x / COLS;
  const int64_t lanevecs = lay.lanes / V;
  const int64_t groups = (lanevecs + COLS - 1) / COLS;
  const int64_t units = groups * p.plan.chunks;
  const bool has_init = typed<scalar_t>(p.initial) != nullptr;
  const bool momentum_grad = p.momentum_grad && !kAggregate;
  const int64_t gyf = lay.frame_stride[kGradY], gxf = lay.frame_stride[kGradX];
  const int64_t xf = lay.frame_stride[kX], yf = lay.frame_stride[kY];

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t q = unit / groups;
    if (kAggregate && q == 0) continue;  // chunk 0's aggregate is never folded (block-uniform)
    const int64_t lanevec = (unit % groups) * COLS + col;
    const bool active = lanevec < lanevecs;
    const int64_t lane0 = (active ? lanevec : 0) * V;
    const LaneCoords c = lane_coords(lay, lane0);
    const scalar_t* gyl = typed<scalar_t>(p.grad_y) + lane_offset(lay, kGradY, c);
    scalar_t* gxl = typed<scalar_t>(p.grad_x) + lane_offset(lay, kGradX, c);
    const scalar_t* xl = momentum_grad ? typed<scalar_t>(p.x) + lane_offset(lay, kX, c) : nullptr;
    const scalar_t* yl = momentum_grad ? typed<scalar_t>(p.y) + lane_offset(lay, kY, c) : nullptr;
    acc_t m[V], a[V], dm[V], init[V];
    load_momentum<acc_t, V>(lay, c, typed<acc_t>(p.momentum), acc_t(p.momentum_value), m);
    const int64_t t_begin = q * p.plan.chunk_len;
    const int64_t t_end = t_begin + p.plan.chunk_len < lay.frames ? t_begin + p.plan.chunk_len : lay.frames;
    const scalar_t* il = has_init ? typed<scalar_t>(p.initial) + lane_offset(lay, kInitial, c) : nullptr;
    const int64_t is = inner_stride(lay, kInitial);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      a[v] = (kAggregate || q == p.plan.chunks - 1)
                 ? acc_t(0)
                 : backward_chunk_carry(typed<acc_t>(p.workspace), lay.lanes, lane0 + v, q, p.plan.chunks, lay.frames,
                                        p.plan.chunk_len, m[v]);
      dm[v] = acc_t(0);
      init[v] = (momentum_grad && has_init && t_begin == 0 && active) ? to_acc(il[v * is]) : acc_t(0);
    }

    const int64_t tiles = (t_end - t_begin + TILE - 1) / TILE;
    for (int64_t k = tiles - 1; k >= 0; --k) {
      const int64_t f0 = t_begin + k * TILE + int64_t(row) * L;
      Pack<scalar_t, V> gys[L], xs[L], yps[L];  // yps[i]: y at frame f0 + i - 1
#pragma unroll
      for (int i = 0; i < L; ++i) {
        const int64_t f = f0 + i;
        const bool valid = active && f < t_end;
        gys[i] = valid ? load_pack<scalar_t, V>(gyl + f * gyf) : zero_pack<scalar_t, V>();
        if (momentum_grad) {
          xs[i] = valid ? load_pack<scalar_t, V>(xl + f * xf) : zero_pack<scalar_t, V>();
          yps[i] = (valid && f >= 1) ? load_pack<scalar_t, V>(yl + (f - 1) * yf) : zero_pack<scalar_t, V>();
        }
      }
      acc_t state[V];
      if constexpr (ROWS == 1) {
#pragma unroll
        for (int v = 0; v < V; ++v) state[v] = a[v];
      } else {
        // The scan runs from the last frame down: later rows come first.
#pragma unroll
        for (int v = 0; v < V; ++v) {
          ScanPair<acc_t> map = scan_identity<acc_t>();
#pragma unroll
          for (int i = L - 1; i >= 0; --i) {
            if (f0 + i < t_end) map = scan_combine(map, ScanPair<acc_t>{m[v], to_acc(gys[i].v[v])});
          }
          row_maps[row][col][v] = map;
        }
        __syncthreads();
#pragma unroll
        for (int v = 0; v < V; ++v) {
          ScanPair<acc_t> prefix = scan_identity<acc_t>();
          for (int r = ROWS - 1; r >= 0; --r) {
            if (r == row) state[v] = scan_apply(prefix, a[v]);
            prefix = scan_combine(prefix, row_maps[r][col][v]);
          }
          a[v] = scan_apply(prefix, a[v]);  // a at the tile's first frame
        }
        __syncthreads();
      }
      if (!kAggregate || ROWS == 1) {
#pragma unroll
        for (int i = L - 1; i >= 0; --i) {
          const int64_t f = f0 + i;
          if (f < t_end) {
            Pack<scalar_t, V> out;
#pragma unroll
            for (int v = 0; v < V; ++v) {
              state[v] = ema_reverse_step(m[v], state[v], to_acc(gys[i].v[v]));
              const bool unscaled = f == 0 && !has_init;  // y_0 = x_0
              out.v[v] = from_acc<scalar_t>(unscaled ? state[v] : ema_input_grad(m[v], acc_t(1) - m[v], state[v]));
              if (momentum_grad && (f >= 1 || has_init)) {
                const acc_t prev = f >= 1 ? to_acc(yps[i].v[v]) : init[v];
                dm[v] += state[v] * (prev - to_acc(xs[i].v[v]));
              }
            }
            if (!kAggregate && active) {
              store_pack<scalar_t, V>(gxl + f * gxf, out);
              if (f == 0 && has_init) {
                scalar_t* gil = typed<scalar_t>(p.grad_initial) + lane_offset(lay, kGradInitial, c);
                const int64_t gis = inner_stride(lay, kGradInitial);
#pragma unroll
                for (int v = 0; v < V; ++v) gil[v * gis] = from_acc<scalar_t>(initial_grad(m[v], state[v]));
              }
            }
          }
        }
        if constexpr (ROWS == 1) {
#pragma unroll
          for (int v = 0; v < V; ++v) a[v] = state[v];
        }
      }
    }

    if (kAggregate) {
      if (row == 0 && active) {
#pragma unroll
        for (int v = 0; v < V; ++v) typed<acc_t>(p.workspace)[q * lay.lanes + lane0 + v] = a[v];
      }
    } else if (momentum_grad) {
      if constexpr (ROWS > 1) {  // rows summed in a fixed order
#pragma unroll
        for (int v = 0; v < V; ++v) row_dm[row][col][v] = dm[v];
        __syncthreads();
        if (row == 0) {
#pragma unroll
          for (int v = 0; v < V; ++v) {
            acc_t sum = acc_t(0);
            for (int r = 0; r < ROWS; ++r) sum += row_dm[r][col][v];
            dm[v] = sum;
          }
        }
        __syncthreads();
      }
      if (row == 0 && active) {
        if (p.plan.chunks == 1) {
          acc_t* gml = typed<acc_t>(p.grad_momentum) + lane_offset(lay, kGradMomentum, c);
          const int64_t gms = inner_stride(lay, kGradMomentum);
#pragma unroll
          for (int v = 0; v < V; ++v) gml[v * gms] = dm[v];
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) dm_partials<acc_t>(p)[q * lay.lanes + lane0 + v] = dm[v];
        }
      }
    }
  }
}

}  // namespace momentum
}  // namespace vidmem
