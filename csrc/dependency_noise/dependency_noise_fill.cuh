// The fused generator's kernel: one launch per frame (docs/semantics.md, "Dependency noise").
// Block (c, b) writes chunk c of batch item b's frame and reduces the sums the next frame's search
// needs; the last block of b to finish (a ticket counter) runs the search for the next frame.
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

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) fill_frame_kernel(const FillParams p, const int64_t frame) {
  using acc_t = acc_type<scalar_t>;
  scalar_t* const out_data = static_cast<scalar_t*>(p.out);  // contiguous (batch, pre, frames, post)
  acc_t* const alphas = static_cast<acc_t*>(p.alphas);       // (batch, frames)
  char* const workspace = static_cast<char*>(p.workspace);
  double* const partials = reinterpret_cast<double*>(workspace);  // (batch, chunks, 3): the chunks' FrameSums
  // (2, batch, kParamWords): the next frame's ComposeParams, double-buffered by frame parity
  acc_t* const coefficients = reinterpret_cast<acc_t*>(workspace + p.coefficients_offset);
  // (batch,): blocks of the current frame done, reset by the last one
  unsigned int* const counters = reinterpret_cast<unsigned int*>(workspace + p.counters_offset);
  const acc_t lambda = static_cast<acc_t>(p.lambda);
  const int64_t frame_numel = p.pre * p.post;
  __shared__ double scratch[3][kWarps];
  __shared__ bool last_block;
  const bool need_sums = frame + 1 < p.frames;
  const int64_t stride_pre = p.frames * p.post;
  const int64_t stride_batch = p.pre * stride_pre;
  const int64_t chunk_index = blockIdx.x;
  const int64_t first = chunk_index * p.chunk;
  const int64_t end = min_i64(frame_numel, first + p.chunk);

  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    scalar_t* const out = out_data + b * stride_batch + frame * p.post;
    ComposeParams<acc_t> params{acc_t(1), acc_t(0), acc_t(0), acc_t(1)};
    if (frame > 0) {
      const acc_t* stored = coefficients + ((frame & 1) * p.batch + b) * kParamWords;
      params.sqrt_alpha = stored[0];
      params.sqrt_one_minus_alpha = stored[1];
      params.correction = stored[2];
      params.alpha = stored[3];
    }
    const NormalStream normals = make_normal_stream(p.seed, p.offset, b, kElementNormals, frame);
    const NormalStream next_normals = make_normal_stream(p.seed, p.offset, b, kElementNormals, frame + 1);

    FrameSums sums{0.0, 0.0, 0.0};
    for (int64_t group = first / 4 + threadIdx.x; group * 4 < end; group += kThreads) {
      acc_t normal[4], next_normal[4];
      normals.group<acc_t>(static_cast<uint64_t>(group), normal);
      if (need_sums) next_normals.group<acc_t>(static_cast<uint64_t>(group), next_normal);
      const int64_t e = group * 4;
      int64_t row = e / p.post, col = e - row * p.post;
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (e + l < end) {
          const int64_t at = row * stride_pre + col;
          acc_t value = normal[l];
          if (frame > 0) value = compose_conditioned(Storage<scalar_t>::load(out + at - p.post), normal[l], params);
          value = Storage<scalar_t>::store(out + at, value);  // the next frame sees the value as stored
          if (need_sums) sums.add(value, next_normal[l]);
          if (++col == p.post) {
            col = 0;
            ++row;
          }
        }
      }
    }
    if (!need_sums) continue;  // uniform over the block

    sums = block_sum(sums, scratch);
    if (threadIdx.x == 0) {
      double* partial = partials + (b * p.chunks + chunk_index) * 3;
      partial[0] = sums.weighted_value;
      partial[1] = sums.weight_squared;
      partial[2] = sums.weighted_normal;
      __threadfence();  // publish the partial before taking a ticket
      const unsigned int ticket = atomicAdd(counters + b, 1u);
      last_block = ticket == static_cast<unsigned int>(p.chunks - 1);
    }
    __syncthreads();
    if (last_block) {
      __threadfence();  // see every other block's partial
      FrameSums total{0.0, 0.0, 0.0};
      for (int64_t c = threadIdx.x; c < p.chunks; c += kThreads) {  // fixed order: thread, then chunk
        const double* partial = partials + (b * p.chunks + c) * 3;
        total.add(FrameSums{__ldcg(partial), __ldcg(partial + 1), __ldcg(partial + 2)});
      }
      total = block_sum(total, scratch);
      if (threadIdx.x == 0) {
        const NormalStream statistics = make_normal_stream(p.seed, p.offset, b, kCandidateStatistics, frame + 1);
        const ComposeParams<acc_t> next = generator_search(total, frame_numel, statistics, p.random_search_times,
                                                           lambda, p.linear_search_times);
        acc_t* stored = coefficients + (((frame + 1) & 1) * p.batch + b) * kParamWords;
        stored[0] = next.sqrt_alpha;
        stored[1] = next.sqrt_one_minus_alpha;
        stored[2] = next.correction;
        stored[3] = next.alpha;
        alphas[b * p.frames + frame + 1] = next.alpha;
        counters[b] = 0u;  // ready for the next frame's launch
      }
    }
    __syncthreads();  // last_block and scratch are reused by the next batch item
  }
}

}  // namespace noise
}  // namespace vidmem
