// Device helpers of the temporal momentum kernels: block shape, 16-byte packs of frames or lanes,
// warp shuffles of scan pairs, and the kernel that sums the chunks' momentum-gradient partials.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/convert.cuh"
#include "common/dtype.h"
#include "temporal_momentum/temporal_momentum.h"

namespace vidmem {
namespace momentum {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunkRows = 8;  // thread rows of the lane-chunks kernel
constexpr int64_t kMaxGrid = int64_t(1) << 30;  // blocks per launch at most (a grid stride covers the rest)
constexpr unsigned kFullMask = 0xffffffffu;

// Frames per thread per tile in the lane kernels: loads in flight, bounded so that the
// registers holding them stay modest (32 elements forward, 16 backward, which holds 3 tensors).
constexpr int lane_frames(int vector, bool backward) {
  const int cap = backward ? 4 : 8;
  const int by_registers = (backward ? 16 : 32) / vector;  // vector <= 8, so >= 2
  return by_registers < cap ? by_registers : cap;
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
// The params' pointers in the kernels' types (the params are untyped, so that the glue fills them
// without knowing the kernels' types).
template <typename T>
__device__ __forceinline__ const T* typed(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
__device__ __forceinline__ T* typed(void* p) {
  return static_cast<T*>(p);
}

// The momentum of one lane: the broadcast tensor's entry, or the float.
template <typename acc_t, typename Params>
__device__ __forceinline__ acc_t lane_momentum(const Params& p, const LaneCoords& c) {
  return p.momentum ? typed<acc_t>(p.momentum)[lane_offset(p.layout, kMomentum, c)] : acc_t(p.momentum_value);
}

// The backward workspace: the chunk aggregates [chunk][lane], then (with momentum_grad) the
// chunks' momentum-gradient partials [chunk][lane].
template <typename acc_t>
__device__ __forceinline__ acc_t* dm_partials(const BackwardParams& p) {
  return typed<acc_t>(p.workspace) + p.plan.chunks * p.layout.lanes;
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

}  // namespace momentum
}  // namespace vidmem
