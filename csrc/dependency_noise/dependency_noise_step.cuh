// The step op's kernels: per-chunk statistics, the search (one block per batch item), the write.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/convert.cuh"
#include "common/dtype.h"
#include "dependency_noise/dependency_noise.h"
#include "dependency_noise/dependency_noise_device.cuh"

namespace vidmem {
namespace noise {

// Workspace: partial sums (batch, chunks, R + 1), in double: sum w p, then sum w n_k (products
// rounded in acc_t, or in double outside float's range: weighted_term); then the coefficients (batch, 2): sqrt(alpha), sqrt(1 - alpha).
template <typename acc_t>
__device__ __forceinline__ acc_t* step_coefficients(const StepParams& p) {
  return reinterpret_cast<acc_t*>(static_cast<char*>(p.workspace) + p.coefficients_offset);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) step_stats_kernel(const StepParams p) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* const prev_data = static_cast<const scalar_t*>(p.prev);         // (batch, numel)
  const scalar_t* const candidates = static_cast<const scalar_t*>(p.candidates);  // (R, batch, numel)
  double* const partials = static_cast<double*>(p.workspace);
  __shared__ double scratch[kWarps];
  const int64_t chunk_index = blockIdx.x;
  const int64_t first = chunk_index * p.chunk;
  const int64_t end = min_i64(p.numel, first + p.chunk);
  const int64_t stats = p.num_candidates + 1;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const scalar_t* prev = prev_data + b * p.numel;
    for (int64_t k = -1; k < p.num_candidates; ++k) {
      const scalar_t* values = k < 0 ? prev : candidates + (k * p.batch + b) * p.numel;
      double sum = 0.0;
      for (int64_t e = first + threadIdx.x; e < end; e += kThreads) {
        sum = add_rn(sum, weighted_term(Storage<scalar_t>::load(prev + e), Storage<scalar_t>::load(values + e)));
      }
      sum = block_sum(sum, scratch);
      if (threadIdx.x == 0) partials[(b * p.chunks + chunk_index) * stats + (k + 1)] = sum;
    }
  }
}

// One block per batch item. Each of the R + 1 statistics is the sum of the chunks' partials:
// thread t adds chunks t, t + kThreads, ... in order and block_sum adds the threads' sums in a
// fixed tree, so the result does not depend on scheduling and no thread walks chunks x (R + 1)
// partials alone. Each total goes to its chunk-0 slot (only thread 0 reads that slot again); thread
// 0 then runs the scalar search.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) step_search_kernel(const StepParams p) {
  using acc_t = acc_type<scalar_t>;
  __shared__ double scratch[kWarps];
  double* const partials = static_cast<double*>(p.workspace);
  acc_t* const coefficients = step_coefficients<acc_t>(p);
  const int64_t stats = p.num_candidates + 1;
  const double n = static_cast<double>(p.numel);
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) {  // block-uniform loop
    double* const sums = partials + b * p.chunks * stats;
    for (int64_t slot = 0; slot < stats; ++slot) {
      double part = 0.0;
      for (int64_t c = threadIdx.x; c < p.chunks; c += kThreads) part = add_rn(part, sums[c * stats + slot]);
      const double total = block_sum(part, scratch);
      if (threadIdx.x == 0) sums[slot] = total;
    }
    if (threadIdx.x == 0) {
      const auto mean_of = [&](int64_t slot) { return sums[slot] / n; };  // in double
      const auto statistic = [&](int64_t k) { return mean_of(k + 1); };
      const SearchResult<acc_t> found = search_on_means<acc_t>(mean_of(0), p.num_candidates, statistic,
                                                               static_cast<acc_t>(p.lambda), p.linear_search_times);
      static_cast<acc_t*>(p.alpha)[b] = found.alpha;
      p.index[b] = found.index;
      coefficients[2 * b] = sqrt(found.alpha);
      coefficients[2 * b + 1] = sqrt(sub_rn(acc_t(1), found.alpha));
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) step_write_kernel(const StepParams p) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* const prev = static_cast<const scalar_t*>(p.prev);
  const scalar_t* const candidates = static_cast<const scalar_t*>(p.candidates);
  scalar_t* const frame = static_cast<scalar_t*>(p.frame);
  const acc_t* const coefficients = step_coefficients<acc_t>(p);
  const int64_t total = p.batch * p.numel;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t b = i / p.numel, e = i - b * p.numel;
    const scalar_t* chosen = candidates + (p.index[b] * p.batch + b) * p.numel;
    Storage<scalar_t>::store(frame + i, compose_plain(Storage<scalar_t>::load(prev + i),
                                                      Storage<scalar_t>::load(chosen + e), coefficients[2 * b],
                                                      coefficients[2 * b + 1]));
  }
}

}  // namespace noise
}  // namespace vidmem
