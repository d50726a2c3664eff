// Device helpers of the dependency noise kernels: block shape, loads and stores in the
// accumulation type, and the fixed-order block sums that keep results independent of scheduling.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/convert.cuh"
#include "common/dtype.h"
#include "dependency_noise/dependency_noise.h"

namespace vidmem {
namespace noise {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxChunks = 1024;  // blocks per batch item and frame: the partial sums stay O(B)
constexpr int kParamWords = 4;  // sqrt(alpha), sqrt(1 - alpha), correction, alpha

// ----------------------------------------------------------------------------- storage

// Loads in the accumulation type; a store returns the value as stored (rounded to the storage
// type), which is what the next frame reads back.
template <typename scalar_t>
struct Storage {
  static __device__ __forceinline__ acc_type<scalar_t> load(const scalar_t* p) { return to_acc(*p); }
  static __device__ __forceinline__ acc_type<scalar_t> store(scalar_t* p, acc_type<scalar_t> v) {
    const scalar_t rounded = from_acc<scalar_t>(v);
    *p = rounded;
    return to_acc(rounded);
  }
};

// ----------------------------------------------------------------------------- deterministic block sums

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, offset);
  return v;
}

// The sum of v over the block in a fixed order; valid in thread 0. Every thread must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  acc_t total = acc_t(0);
  if (warp == 0) total = warp_sum(lane < kWarps ? scratch[lane] : acc_t(0));
  __syncthreads();  // scratch may be reused
  return total;
}

__device__ __forceinline__ FrameSums block_sum(FrameSums sums, double (*scratch)[kWarps]) {
  return FrameSums{block_sum(sums.weighted_value, scratch[0]), block_sum(sums.weight_squared, scratch[1]),
                   block_sum(sums.weighted_normal, scratch[2])};
}

__host__ __device__ __forceinline__ int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

}  // namespace noise
}  // namespace vidmem
