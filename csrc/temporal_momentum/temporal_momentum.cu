// Temporal momentum CUDA kernels: forward and backward scans over frames.
//
// Three kernels (plan_cuda picks one per call):
//  - lanes (regime a, many lanes, frame axis strided): one thread per lane vector (16 bytes of
//    adjacent lanes when the innermost lane stride is 1 and aligned, so a warp's accesses are
//    coalesced) walks every frame, L frames of loads in flight at a time.
//  - lane chunks (regime b, frame axis strided but too few lanes): the same thread columns, with
//    8 thread rows splitting each tile of frames. Each row composes its frames into one affine
//    map (decay, value); the rows' maps are scanned through shared memory; each thread then
//    rescans its frames from its start state.
//  - frame segments (regime b, frame axis contiguous): a block walks one lane's frames in tiles
//    of 256 vectors; each thread's vector of frames becomes a (decay, value) pair, warps scan the
//    pairs with shuffles, and the warp totals are scanned through shared memory, carrying the
//    state from tile to tile.
// When lanes are too few to fill the GPU, the frames are also split into chunks: a first launch
// stores each chunk's aggregate and the second folds the aggregates before (after, backward) a
// chunk in a fixed order (temporal_momentum.h). Nothing is reduced with atomics, so results are
// bitwise reproducible. All index math is 64-bit; every kernel loops over its work units with a
// grid stride.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "temporal_momentum/temporal_momentum.h"
#include "temporal_momentum/temporal_momentum_cuda.h"

namespace vidmem {
namespace momentum {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunkRows = 8;  // thread rows of the lane-chunks kernel
constexpr int64_t kMaxGrid = int64_t(1) << 30;
constexpr unsigned kFullMask = 0xffffffffu;

// Frames per thread per tile in the lane kernels: loads in flight, bounded so that the
// registers holding them stay modest (32 elements forward, 16 backward, which holds 3 tensors).
constexpr int lane_frames(int vector, bool backward) {
  const int cap = backward ? 4 : 8;
  const int by_registers = (backward ? 16 : 32) / vector;  // vector <= 8, so >= 2
  return by_registers < cap ? by_registers : cap;
}

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(typename AccOf<T>::type v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// V elements moved as one access: 16 bytes when V * sizeof(T) == 16 (the alignment makes
// nvcc emit 128-bit loads and stores, as for float4).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> zero_pack() {
  Pack<T, V> r;
#pragma unroll
  for (int i = 0; i < V; ++i) r.v[i] = from_acc<T>(0);
  return r;
}

// 16-byte packs go through the uint4 load/store intrinsics: they are single 128-bit accesses
// that nvcc cannot split (a plain struct store was split into scalar stores once the struct was
// broken into registers and the stores of two branches were merged).
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  if constexpr (sizeof(Pack<T, V>) == 16) {
    const uint4 bits = __ldg(reinterpret_cast<const uint4*>(p));
    Pack<T, V> r;
    memcpy(&r, &bits, 16);
    return r;
  } else {
    return *reinterpret_cast<const Pack<T, V>*>(p);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& value) {
  if constexpr (sizeof(Pack<T, V>) == 16) {
    uint4 bits;
    memcpy(&bits, &value, 16);
    __stwb(reinterpret_cast<uint4*>(p), bits);
  } else {
    *reinterpret_cast<Pack<T, V>*>(p) = value;
  }
}

// V consecutive frames f0 .. f0+V-1 of one lane (frames past `end` read as 0). With V > 1 the
// plan guarantees frame stride 1 and 16-byte alignment of whole vectors.
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_frames(const T* lane, int64_t f0, int64_t end, int64_t frame_stride) {
  if (V > 1 && f0 + V <= end) return load_pack<T, V>(lane + f0);
  Pack<T, V> r = zero_pack<T, V>();
#pragma unroll
  for (int i = 0; i < V; ++i) {
    if (f0 + i < end) r.v[i] = lane[(f0 + i) * frame_stride];
  }
  return r;
}

template <typename T, int V>
__device__ __forceinline__ void store_frames(T* lane, int64_t f0, int64_t end, int64_t frame_stride,
                                             const Pack<T, V>& value) {
  if (V > 1 && f0 + V <= end) {
    store_pack<T, V>(lane + f0, value);
    return;
  }
#pragma unroll
  for (int i = 0; i < V; ++i) {
    if (f0 + i < end) lane[(f0 + i) * frame_stride] = value.v[i];
  }
}

template <typename acc_t>
__device__ __forceinline__ ScanPair<acc_t> shfl_up_pair(const ScanPair<acc_t>& p, int delta) {
  return ScanPair<acc_t>{__shfl_up_sync(kFullMask, p.decay, delta), __shfl_up_sync(kFullMask, p.value, delta)};
}

template <typename acc_t>
__device__ __forceinline__ ScanPair<acc_t> shfl_down_pair(const ScanPair<acc_t>& p, int delta) {
  return ScanPair<acc_t>{__shfl_down_sync(kFullMask, p.decay, delta), __shfl_down_sync(kFullMask, p.value, delta)};
}

// Momentum of V adjacent lanes (inner stride of the broadcast momentum: 0 or any).
template <typename acc_t, int V>
__device__ __forceinline__ void load_momentum(const Layout& layout, const LaneCoords& c, const acc_t* m,
                                              acc_t m_value, acc_t (&out)[V]) {
  if (m == nullptr) {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = m_value;
    return;
  }
  const acc_t* base = m + lane_offset(layout, kMomentum, c);
  const int64_t s = inner_stride(layout, kMomentum);
#pragma unroll
  for (int v = 0; v < V; ++v) out[v] = base[v * s];
}

template <typename scalar_t>
struct ForwardParams {
  using acc_t = typename AccOf<scalar_t>::type;
  Layout layout;
  const scalar_t* x;
  scalar_t* y;
  const acc_t* m;  // nullptr: m_value for every lane
  acc_t m_value;
  const scalar_t* initial;  // nullptr: frame 0 resets (y_0 = x_0)
  acc_t* aggregates;        // [chunk][lane], when chunks > 1
  int64_t chunk_len;
  int64_t chunks;
};

template <typename scalar_t>
struct BackwardParams {
  using acc_t = typename AccOf<scalar_t>::type;
  Layout layout;
  const scalar_t* grad_y;
  const scalar_t* x;  // x and y: read only when want_dm
  const scalar_t* y;
  scalar_t* grad_x;
  const acc_t* m;
  acc_t m_value;
  const scalar_t* initial;
  scalar_t* grad_initial;
  acc_t* grad_momentum;  // per lane
  acc_t* aggregates;     // [chunk][lane], when chunks > 1
  acc_t* dm_partials;    // [chunk][lane], when chunks > 1 and want_dm
  int64_t chunk_len;
  int64_t chunks;
  bool want_dm;
};

// ============================================================================ lanes and lane chunks
//
// Block = COLS lane-vector columns x ROWS thread rows. A work unit is (column group, chunk).
// Thread (row, col) handles frames tile0 + row * L + [0, L) of lane vector group * COLS + col.

template <typename scalar_t, int V, int ROWS, int L, bool kAggregate>
__global__ void __launch_bounds__(kThreads) forward_lanes_kernel(const ForwardParams<scalar_t> p) {
  using acc_t = typename AccOf<scalar_t>::type;
  constexpr int COLS = kThreads / ROWS;
  constexpr int TILE = ROWS * L;
  __shared__ ScanPair<acc_t> row_maps[ROWS > 1 ? ROWS : 1][ROWS > 1 ? COLS : 1][V];

  const Layout& lay = p.layout;
  const int col = threadIdx.x % COLS;
  const int row = threadIdx.x / COLS;
  const int64_t lanevecs = lay.lanes / V;
  const int64_t groups = (lanevecs + COLS - 1) / COLS;
  const int64_t units = groups * p.chunks;
  const bool reset = p.initial == nullptr;
  const int64_t xf = lay.frame_stride[kX], yf = lay.frame_stride[kY];

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t q = unit / groups;
    if (kAggregate && q == p.chunks - 1) continue;  // the last chunk's aggregate is never folded (block-uniform)
    const int64_t lanevec = (unit % groups) * COLS + col;
    const bool active = lanevec < lanevecs;
    const int64_t lane0 = (active ? lanevec : 0) * V;  // V divides the innermost lane size
    const LaneCoords c = lane_coords(lay, lane0);
    const scalar_t* xl = p.x + lane_offset(lay, kX, c);
    scalar_t* yl = p.y + lane_offset(lay, kY, c);
    acc_t m[V], carry[V];
    load_momentum<acc_t, V>(lay, c, p.m, p.m_value, m);
    const int64_t t_begin = q * p.chunk_len;
    const int64_t t_end = t_begin + p.chunk_len < lay.frames ? t_begin + p.chunk_len : lay.frames;

    if (kAggregate) {
#pragma unroll
      for (int v = 0; v < V; ++v) carry[v] = acc_t(0);
    } else {
      const scalar_t* il = reset ? nullptr : p.initial + lane_offset(lay, kInitial, c);
      const int64_t is = inner_stride(lay, kInitial);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const acc_t start = reset ? acc_t(0) : to_acc(il[v * is]);
        carry[v] = q == 0 ? start
                          : forward_chunk_carry(p.aggregates, lay.lanes, lane0 + v, q, p.chunk_len, m[v], start, reset);
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
      for (int v = 0; v < V; ++v) p.aggregates[q * lay.lanes + lane0 + v] = carry[v];
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
    backward_lanes_kernel(const BackwardParams<scalar_t> p) {
  using acc_t = typename AccOf<scalar_t>::type;
  constexpr int COLS = kThreads / ROWS;
  constexpr int TILE = ROWS * L;
  __shared__ ScanPair<acc_t> row_maps[ROWS > 1 ? ROWS : 1][ROWS > 1 ? COLS : 1][V];
  __shared__ acc_t row_dm[ROWS > 1 ? ROWS : 1][ROWS > 1 ? COLS : 1][V];

  const Layout& lay = p.layout;
  const int col = threadIdx.x % COLS;
  const int row = threadIdx.x / COLS;
  const int64_t lanevecs = lay.lanes / V;
  const int64_t groups = (lanevecs + COLS - 1) / COLS;
  const int64_t units = groups * p.chunks;
  const bool has_init = p.initial != nullptr;
  const bool want_dm = p.want_dm && !kAggregate;
  const int64_t gyf = lay.frame_stride[kGradY], gxf = lay.frame_stride[kGradX];
  const int64_t xf = lay.frame_stride[kX], yf = lay.frame_stride[kY];

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t q = unit / groups;
    if (kAggregate && q == 0) continue;  // chunk 0's aggregate is never folded (block-uniform)
    const int64_t lanevec = (unit % groups) * COLS + col;
    const bool active = lanevec < lanevecs;
    const int64_t lane0 = (active ? lanevec : 0) * V;
    const LaneCoords c = lane_coords(lay, lane0);
    const scalar_t* gyl = p.grad_y + lane_offset(lay, kGradY, c);
    scalar_t* gxl = p.grad_x + lane_offset(lay, kGradX, c);
    const scalar_t* xl = want_dm ? p.x + lane_offset(lay, kX, c) : nullptr;
    const scalar_t* yl = want_dm ? p.y + lane_offset(lay, kY, c) : nullptr;
    acc_t m[V], a[V], dm[V], init[V];
    load_momentum<acc_t, V>(lay, c, p.m, p.m_value, m);
    const int64_t t_begin = q * p.chunk_len;
    const int64_t t_end = t_begin + p.chunk_len < lay.frames ? t_begin + p.chunk_len : lay.frames;
    const scalar_t* il = has_init ? p.initial + lane_offset(lay, kInitial, c) : nullptr;
    const int64_t is = inner_stride(lay, kInitial);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      a[v] = (kAggregate || q == p.chunks - 1)
                 ? acc_t(0)
                 : backward_chunk_carry(p.aggregates, lay.lanes, lane0 + v, q, p.chunks, lay.frames, p.chunk_len, m[v]);
      dm[v] = acc_t(0);
      init[v] = (want_dm && has_init && t_begin == 0 && active) ? to_acc(il[v * is]) : acc_t(0);
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
        if (want_dm) {
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
              if (want_dm && (f >= 1 || has_init)) {
                const acc_t prev = f >= 1 ? to_acc(yps[i].v[v]) : init[v];
                dm[v] += state[v] * (prev - to_acc(xs[i].v[v]));
              }
            }
            if (!kAggregate && active) {
              store_pack<scalar_t, V>(gxl + f * gxf, out);
              if (f == 0 && has_init) {
                scalar_t* gil = p.grad_initial + lane_offset(lay, kGradInitial, c);
                const int64_t gis = inner_stride(lay, kGradInitial);
#pragma unroll
                for (int v = 0; v < V; ++v) gil[v * gis] = from_acc<scalar_t>(m[v] * state[v]);
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
        for (int v = 0; v < V; ++v) p.aggregates[q * lay.lanes + lane0 + v] = a[v];
      }
    } else if (want_dm) {
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
        if (p.chunks == 1) {
          acc_t* gml = p.grad_momentum + lane_offset(lay, kGradMomentum, c);
          const int64_t gms = inner_stride(lay, kGradMomentum);
#pragma unroll
          for (int v = 0; v < V; ++v) gml[v * gms] = dm[v];
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) p.dm_partials[q * lay.lanes + lane0 + v] = dm[v];
        }
      }
    }
  }
}

// ============================================================================ frame segments
//
// A work unit is (lane, chunk); the block walks the chunk's frames in tiles of kThreads * V,
// thread t holding frames tile0 + t * V + [0, V).

template <typename scalar_t, int V, bool kAggregate>
__global__ void __launch_bounds__(kThreads) forward_frames_kernel(const ForwardParams<scalar_t> p) {
  using acc_t = typename AccOf<scalar_t>::type;
  constexpr int64_t TILE = int64_t(kThreads) * V;
  __shared__ ScanPair<acc_t> warp_maps[kWarps];

  const Layout& lay = p.layout;
  const int lane_id = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t units = lay.lanes * p.chunks;
  const bool reset = p.initial == nullptr;
  const int64_t xf = lay.frame_stride[kX], yf = lay.frame_stride[kY];

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t q = unit / lay.lanes;
    const int64_t lane = unit % lay.lanes;
    if (kAggregate && q == p.chunks - 1) continue;  // block-uniform
    const LaneCoords c = lane_coords(lay, lane);
    const scalar_t* xl = p.x + lane_offset(lay, kX, c);
    scalar_t* yl = p.y + lane_offset(lay, kY, c);
    const acc_t m = p.m ? p.m[lane_offset(lay, kMomentum, c)] : p.m_value;
    const acc_t one_minus_m = acc_t(1) - m;
    const int64_t t_begin = q * p.chunk_len;
    const int64_t t_end = t_begin + p.chunk_len < lay.frames ? t_begin + p.chunk_len : lay.frames;
    acc_t carry = acc_t(0);
    if (!kAggregate) {
      const acc_t start = reset ? acc_t(0) : to_acc(p.initial[lane_offset(lay, kInitial, c)]);
      carry = q == 0 ? start : forward_chunk_carry(p.aggregates, lay.lanes, lane, q, p.chunk_len, m, start, reset);
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
    if (kAggregate && threadIdx.x == 0) p.aggregates[q * lay.lanes + lane] = carry;
  }
}

template <typename scalar_t, int V>
struct BackwardFrames {
  Pack<scalar_t, V> grad_y, x, y;  // y: frames f0 .. f0+V-1 (y_{f-1} of the next frame)
  scalar_t y_before;               // y at frame f0 - 1
};

template <typename scalar_t, int V>
__device__ __forceinline__ BackwardFrames<scalar_t, V> load_backward_frames(const BackwardParams<scalar_t>& p,
                                                                            const scalar_t* gyl, const scalar_t* xl,
                                                                            const scalar_t* yl, int64_t f0,
                                                                            int64_t end, bool want_dm) {
  const Layout& lay = p.layout;
  BackwardFrames<scalar_t, V> r;
  r.x = r.y = zero_pack<scalar_t, V>();
  r.y_before = from_acc<scalar_t>(0);
  r.grad_y = load_frames<scalar_t, V>(gyl, f0, end, lay.frame_stride[kGradY]);
  if (want_dm) {
    r.x = load_frames<scalar_t, V>(xl, f0, end, lay.frame_stride[kX]);
    r.y = load_frames<scalar_t, V>(yl, f0, end, lay.frame_stride[kY]);
    r.y_before = (f0 >= 1 && f0 < end) ? yl[(f0 - 1) * lay.frame_stride[kY]] : from_acc<scalar_t>(0);
  }
  return r;
}

template <typename scalar_t, int V, bool kAggregate>
__global__ void __launch_bounds__(kThreads) backward_frames_kernel(const BackwardParams<scalar_t> p) {
  using acc_t = typename AccOf<scalar_t>::type;
  constexpr int64_t TILE = int64_t(kThreads) * V;
  __shared__ ScanPair<acc_t> warp_maps[kWarps];
  __shared__ acc_t warp_dm[kWarps];

  const Layout& lay = p.layout;
  const int lane_id = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t units = lay.lanes * p.chunks;
  const bool has_init = p.initial != nullptr;
  const bool want_dm = p.want_dm && !kAggregate;

  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t q = unit / lay.lanes;
    const int64_t lane = unit % lay.lanes;
    if (kAggregate && q == 0) continue;  // block-uniform
    const LaneCoords c = lane_coords(lay, lane);
    const scalar_t* gyl = p.grad_y + lane_offset(lay, kGradY, c);
    scalar_t* gxl = p.grad_x + lane_offset(lay, kGradX, c);
    const scalar_t* xl = want_dm ? p.x + lane_offset(lay, kX, c) : nullptr;
    const scalar_t* yl = want_dm ? p.y + lane_offset(lay, kY, c) : nullptr;
    const acc_t m = p.m ? p.m[lane_offset(lay, kMomentum, c)] : p.m_value;
    const acc_t one_minus_m = acc_t(1) - m;
    const int64_t t_begin = q * p.chunk_len;
    const int64_t t_end = t_begin + p.chunk_len < lay.frames ? t_begin + p.chunk_len : lay.frames;
    const acc_t init = (want_dm && has_init) ? to_acc(p.initial[lane_offset(lay, kInitial, c)]) : acc_t(0);
    acc_t carry = (kAggregate || q == p.chunks - 1)
                      ? acc_t(0)
                      : backward_chunk_carry(p.aggregates, lay.lanes, lane, q, p.chunks, lay.frames, p.chunk_len, m);
    acc_t dm = acc_t(0);

    const int64_t tiles = (t_end - t_begin + TILE - 1) / TILE;
    BackwardFrames<scalar_t, V> cur = load_backward_frames<scalar_t, V>(
        p, gyl, xl, yl, t_begin + (tiles - 1) * TILE + int64_t(threadIdx.x) * V, t_end, want_dm);
    for (int64_t k = tiles - 1; k >= 0; --k) {
      const int64_t f0 = t_begin + k * TILE + int64_t(threadIdx.x) * V;
      BackwardFrames<scalar_t, V> next = cur;
      if (k > 0) next = load_backward_frames<scalar_t, V>(p, gyl, xl, yl, f0 - TILE, t_end, want_dm);

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
          if (want_dm && (f >= 1 || has_init)) {
            const acc_t prev = f == 0 ? init : to_acc(i > 0 ? cur.y.v[i - 1] : cur.y_before);
            dm += a * (prev - to_acc(cur.x.v[i]));
          }
          if (f == 0 && has_init) p.grad_initial[lane_offset(lay, kGradInitial, c)] = from_acc<scalar_t>(m * a);
        }
        store_frames<scalar_t, V>(gxl, f0, t_end, lay.frame_stride[kGradX], out);
      }
      carry = scan_apply(tile_map, carry);
      __syncthreads();  // warp_maps is rewritten by the next tile
      cur = next;
    }

    if (kAggregate) {
      if (threadIdx.x == 0) p.aggregates[q * lay.lanes + lane] = carry;
    } else if (want_dm) {  // a fixed reduction tree: bitwise reproducible
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) dm += __shfl_xor_sync(kFullMask, dm, d);
      if (lane_id == 0) warp_dm[warp] = dm;
      __syncthreads();
      if (threadIdx.x == 0) {
        acc_t sum = acc_t(0);
        for (int w = 0; w < kWarps; ++w) sum += warp_dm[w];
        if (p.chunks == 1) {
          p.grad_momentum[lane_offset(lay, kGradMomentum, c)] = sum;
        } else {
          p.dm_partials[q * lay.lanes + lane] = sum;
        }
      }
      __syncthreads();
    }
  }
}

// Per-lane dm from the chunks' partials, summed in chunk order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_chunk_partials_kernel(const Layout layout, const acc_t* partials, int64_t chunks, acc_t* grad_momentum) {
  for (int64_t lane = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; lane < layout.lanes;
       lane += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = acc_t(0);
    for (int64_t q = 0; q < chunks; ++q) sum += partials[q * layout.lanes + lane];
    grad_momentum[lane_offset(layout, kGradMomentum, lane_coords(layout, lane))] = sum;
  }
}

// ============================================================================ host side

size_t element_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat32:
      return 4;
    default:
      return 8;
  }
}

size_t acc_size(DType dtype) { return dtype == DType::kFloat64 ? 8 : 4; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits `frames` into chunks of a multiple of `tile` frames so that about `want_units` units
// exist when each chunk is one unit per `units_per_chunk`.
void choose_chunks(int64_t frames, int64_t tile, int64_t units_per_chunk, int64_t want_units, CudaPlan* plan) {
  const int64_t want_chunks = units_per_chunk >= want_units ? 1 : ceil_div(want_units, units_per_chunk);
  int64_t chunk_len = ceil_div(ceil_div(frames, want_chunks), tile) * tile;
  if (chunk_len < tile) chunk_len = tile;
  plan->chunk_len = chunk_len;
  plan->chunks = ceil_div(frames, chunk_len);
}

template <typename scalar_t>
ForwardParams<scalar_t> forward_params(const CudaPlan& plan, const Layout& layout, const CudaOperands& ops,
                                       double momentum_value, void* workspace) {
  using acc_t = typename AccOf<scalar_t>::type;
  ForwardParams<scalar_t> p;
  p.layout = layout;
  p.x = static_cast<const scalar_t*>(ops.ptr[kX]);
  p.y = static_cast<scalar_t*>(ops.ptr[kY]);
  p.m = static_cast<const acc_t*>(ops.ptr[kMomentum]);
  p.m_value = static_cast<acc_t>(momentum_value);
  p.initial = static_cast<const scalar_t*>(ops.ptr[kInitial]);
  p.aggregates = plan.chunks > 1 ? static_cast<acc_t*>(workspace) : nullptr;
  p.chunk_len = plan.chunk_len;
  p.chunks = plan.chunks;
  return p;
}

template <typename scalar_t>
BackwardParams<scalar_t> backward_params(const CudaPlan& plan, const Layout& layout, const CudaOperands& ops,
                                         double momentum_value, bool want_dm, void* workspace) {
  using acc_t = typename AccOf<scalar_t>::type;
  BackwardParams<scalar_t> p;
  p.layout = layout;
  p.grad_y = static_cast<const scalar_t*>(ops.ptr[kGradY]);
  p.x = static_cast<const scalar_t*>(ops.ptr[kX]);
  p.y = static_cast<const scalar_t*>(ops.ptr[kY]);
  p.grad_x = static_cast<scalar_t*>(ops.ptr[kGradX]);
  p.m = static_cast<const acc_t*>(ops.ptr[kMomentum]);
  p.m_value = static_cast<acc_t>(momentum_value);
  p.initial = static_cast<const scalar_t*>(ops.ptr[kInitial]);
  p.grad_initial = static_cast<scalar_t*>(ops.ptr[kGradInitial]);
  p.grad_momentum = static_cast<acc_t*>(ops.ptr[kGradMomentum]);
  acc_t* ws = static_cast<acc_t*>(workspace);
  p.aggregates = plan.chunks > 1 ? ws : nullptr;
  p.dm_partials = (plan.chunks > 1 && want_dm) ? ws + plan.chunks * layout.lanes : nullptr;
  p.chunk_len = plan.chunk_len;
  p.chunks = plan.chunks;
  p.want_dm = want_dm;
  return p;
}

// Work units of the lane kernels: column groups x chunks.
int64_t lane_units(const CudaPlan& plan, const Layout& layout, int rows) {
  const int64_t cols = kThreads / rows;
  return ceil_div(layout.lanes / plan.vector, cols) * plan.chunks;
}

// Every launch goes through here. VIDMEM_CUDA_EMULATION is defined only by the kernel
// emulation test (tests/cuda_emulation), which runs these kernels on emulated CPU threads.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KernelArgs...), int64_t units, cudaStream_t stream, const Args&... args) {
  const unsigned grid = static_cast<unsigned>(units < 1 ? 1 : (units < kMaxGrid ? units : kMaxGrid));
#ifdef VIDMEM_CUDA_EMULATION
  cuda_emulation::launch(grid, kThreads, [&] { kernel(args...); });
  (void)stream;
#else
  kernel<<<grid, kThreads, 0, stream>>>(args...);
#endif
  return cudaGetLastError();
}

template <typename scalar_t, int V>
cudaError_t launch_forward(const CudaPlan& plan, const ForwardParams<scalar_t>& p, cudaStream_t stream) {
  constexpr int L = lane_frames(V, false);
  const Layout& lay = p.layout;
  const bool two_pass = plan.chunks > 1;  // the aggregate pass first
  cudaError_t err = cudaSuccess;
  switch (plan.kernel) {
    case CudaKernel::kLanes:
      return launch_kernel(forward_lanes_kernel<scalar_t, V, 1, L, false>, lane_units(plan, lay, 1), stream, p);
    case CudaKernel::kLaneChunks: {
      const int64_t units = lane_units(plan, lay, kChunkRows);
      if (two_pass && (err = launch_kernel(forward_lanes_kernel<scalar_t, V, kChunkRows, L, true>, units, stream,
                                           p)) != cudaSuccess) {
        return err;
      }
      return launch_kernel(forward_lanes_kernel<scalar_t, V, kChunkRows, L, false>, units, stream, p);
    }
    case CudaKernel::kFrameSegments: {
      const int64_t units = lay.lanes * plan.chunks;
      if (two_pass &&
          (err = launch_kernel(forward_frames_kernel<scalar_t, V, true>, units, stream, p)) != cudaSuccess) {
        return err;
      }
      return launch_kernel(forward_frames_kernel<scalar_t, V, false>, units, stream, p);
    }
  }
  return cudaErrorInvalidValue;
}

template <typename scalar_t, int V>
cudaError_t launch_backward(const CudaPlan& plan, const BackwardParams<scalar_t>& p, cudaStream_t stream) {
  using acc_t = typename AccOf<scalar_t>::type;
  constexpr int L = lane_frames(V, true);
  const Layout& lay = p.layout;
  const bool two_pass = plan.chunks > 1;
  cudaError_t err = cudaSuccess;
  switch (plan.kernel) {
    case CudaKernel::kLanes:
      err = launch_kernel(backward_lanes_kernel<scalar_t, V, 1, L, false>, lane_units(plan, lay, 1), stream, p);
      break;
    case CudaKernel::kLaneChunks: {
      const int64_t units = lane_units(plan, lay, kChunkRows);
      if (two_pass && (err = launch_kernel(backward_lanes_kernel<scalar_t, V, kChunkRows, L, true>, units, stream,
                                           p)) != cudaSuccess) {
        return err;
      }
      err = launch_kernel(backward_lanes_kernel<scalar_t, V, kChunkRows, L, false>, units, stream, p);
      break;
    }
    case CudaKernel::kFrameSegments: {
      const int64_t units = lay.lanes * plan.chunks;
      if (two_pass &&
          (err = launch_kernel(backward_frames_kernel<scalar_t, V, true>, units, stream, p)) != cudaSuccess) {
        return err;
      }
      err = launch_kernel(backward_frames_kernel<scalar_t, V, false>, units, stream, p);
      break;
    }
    default:
      return cudaErrorInvalidValue;
  }
  if (err != cudaSuccess || !(p.want_dm && two_pass)) return err;
  const acc_t* partials = p.dm_partials;
  return launch_kernel(sum_chunk_partials_kernel<acc_t>, ceil_div(lay.lanes, kThreads), stream, lay, partials,
                       plan.chunks, p.grad_momentum);
}

template <typename scalar_t>
cudaError_t forward_typed(const CudaPlan& plan, const Layout& layout, const CudaOperands& ops, double momentum_value,
                          void* workspace, cudaStream_t stream) {
  constexpr int kVector = 16 / sizeof(scalar_t);
  const ForwardParams<scalar_t> p = forward_params<scalar_t>(plan, layout, ops, momentum_value, workspace);
  return plan.vector == kVector ? launch_forward<scalar_t, kVector>(plan, p, stream)
                                : launch_forward<scalar_t, 1>(plan, p, stream);
}

template <typename scalar_t>
cudaError_t backward_typed(const CudaPlan& plan, const Layout& layout, const CudaOperands& ops,
                           double momentum_value, bool want_dm, void* workspace, cudaStream_t stream) {
  constexpr int kVector = 16 / sizeof(scalar_t);
  const BackwardParams<scalar_t> p =
      backward_params<scalar_t>(plan, layout, ops, momentum_value, want_dm, workspace);
  return plan.vector == kVector ? launch_backward<scalar_t, kVector>(plan, p, stream)
                                : launch_backward<scalar_t, 1>(plan, p, stream);
}

}  // namespace

cudaError_t plan_cuda(const Layout& layout, DType dtype, const CudaOperands& ops, bool backward, bool want_dm,
                      int device, CudaPlan* plan) {
  int sms = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  if (sms < 1) sms = 1;

  // The tensors read or written frame by frame.
  int full_ops[4];
  int n_full = 0;
  if (backward) {
    full_ops[n_full++] = kGradY;
    full_ops[n_full++] = kGradX;
    if (want_dm) {
      full_ops[n_full++] = kX;
      full_ops[n_full++] = kY;
    }
  } else {
    full_ops[n_full++] = kX;
    full_ops[n_full++] = kY;
  }
  const int64_t vec = static_cast<int64_t>(16 / element_size(dtype));
  const int64_t frames = layout.frames, lanes = layout.lanes;
  const int64_t inner = layout.size[layout.dims - 1];

  bool frames_contiguous = frames > 1;
  for (int i = 0; i < n_full; ++i) frames_contiguous &= layout.frame_stride[full_ops[i]] == 1;

  *plan = CudaPlan{};
  plan->chunk_len = frames > 0 ? frames : 1;
  plan->chunks = 1;
  // A block of kThreads per lane pays off for long frame runs, or when lanes are too few for a
  // thread each.
  if (frames_contiguous && (frames >= 512 || lanes < int64_t(sms) * 256)) {
    bool vector_ok = true;  // whole 16-byte vectors of frames, each lane's run aligned
    for (int i = 0; i < n_full; ++i) {
      const int op = full_ops[i];
      vector_ok &= aligned16(ops.ptr[op]);
      for (int d = 0; d < layout.dims; ++d) vector_ok &= layout.stride[op][d] % vec == 0;
    }
    plan->kernel = CudaKernel::kFrameSegments;
    plan->vector = vector_ok ? static_cast<int>(vec) : 1;
    choose_chunks(frames, int64_t(kThreads) * plan->vector, lanes, int64_t(sms) * 8, plan);
  } else {
    bool vector_ok = inner % vec == 0;  // 16 bytes of adjacent lanes, aligned in every frame
    for (int i = 0; i < n_full; ++i) {
      const int op = full_ops[i];
      vector_ok &= aligned16(ops.ptr[op]) && inner_stride(layout, op) == 1 && layout.frame_stride[op] % vec == 0;
      for (int d = 0; d + 1 < layout.dims; ++d) vector_ok &= layout.stride[op][d] % vec == 0;
    }
    plan->vector = vector_ok ? static_cast<int>(vec) : 1;
    const int64_t lanevecs = lanes / plan->vector;
    const int64_t rows_tile = int64_t(kChunkRows) * lane_frames(plan->vector, backward);
    if (lanevecs >= int64_t(sms) * 512 || frames <= rows_tile) {
      plan->kernel = CudaKernel::kLanes;
    } else {
      plan->kernel = CudaKernel::kLaneChunks;
      const int64_t groups = ceil_div(lanevecs, kThreads / kChunkRows);
      choose_chunks(frames, rows_tile, groups, int64_t(sms) * 8, plan);
    }
  }
  if (plan->chunks > 1) {
    const size_t per_buffer = static_cast<size_t>(plan->chunks * lanes) * acc_size(dtype);
    plan->workspace_bytes = per_buffer * ((backward && want_dm) ? 2 : 1);
  }
  return cudaSuccess;
}

cudaError_t forward_cuda(const CudaPlan& plan, const Layout& layout, DType dtype, const CudaOperands& ops,
                         double momentum_value, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16:
      return forward_typed<__half>(plan, layout, ops, momentum_value, workspace, stream);
    case DType::kBFloat16:
      return forward_typed<__nv_bfloat16>(plan, layout, ops, momentum_value, workspace, stream);
    case DType::kFloat32:
      return forward_typed<float>(plan, layout, ops, momentum_value, workspace, stream);
    case DType::kFloat64:
      return forward_typed<double>(plan, layout, ops, momentum_value, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t backward_cuda(const CudaPlan& plan, const Layout& layout, DType dtype, const CudaOperands& ops,
                          double momentum_value, bool want_dm, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16:
      return backward_typed<__half>(plan, layout, ops, momentum_value, want_dm, workspace, stream);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16>(plan, layout, ops, momentum_value, want_dm, workspace, stream);
    case DType::kFloat32:
      return backward_typed<float>(plan, layout, ops, momentum_value, want_dm, workspace, stream);
    case DType::kFloat64:
      return backward_typed<double>(plan, layout, ops, momentum_value, want_dm, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace momentum
}  // namespace vidmem
