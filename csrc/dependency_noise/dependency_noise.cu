// CUDA kernels of dependency noise (docs/semantics.md, "Dependency noise"). CUDA headers and our
// own only (no torch), so CI compiles this file with nvcc against a CPU-only torch; the torch glue
// is dependency_noise_glue.cpp. The per-element and scalar math (Philox, Box-Muller, the search,
// composing a frame) is csrc/common/philox.h and dependency_noise.h, shared with the CPU.
//
// Fused generator: one launch per frame. Block (c, b) writes chunk c of batch item b's frame f
// and reduces the sums over it that frame f + 1's search needs; the last block of b to finish
// (a ticket counter per batch item) adds the chunk sums in chunk order, runs the scalar search
// and leaves frame f + 1's coefficients for the next launch. No float atomics: the result does
// not depend on the order in which blocks run.
//
// Same bits as the CPU (fp32/fp16/bf16): the shared math rounds every operation on its own (no
// fused multiply-adds, see mul_rn in csrc/common/philox.h), and the sums are taken in double, so
// they round to the same float as the CPU's despite the different order; the searches then decide
// alike. Every kernel launches through launch_kernel (common/launch.h), so the emulator in
// tests/cuda_emulation runs them.
//
// Step op: a statistics kernel (per-chunk sums), a search kernel (one block per batch item: the
// chunk sums added in a fixed-order tree, then the search) and a write kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/convert.cuh"
#include "common/cuda_check.h"
#include "common/dtype.h"
#include "common/launch.h"
#include "common/static_switch.h"
#include "dependency_noise/dependency_noise.h"
#include "dependency_noise/dependency_noise_cuda.h"

namespace vidmem {
namespace {

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

// Elements per chunk (one block's share of one frame): a multiple of 4 * kThreads (one Philox group
// per thread and round), large enough that there are at most kMaxChunks chunks.
int64_t chunk_size_for(int64_t numel) {
  constexpr int64_t kUnit = 4 * kThreads;
  const int64_t wanted = (numel + kMaxChunks - 1) / kMaxChunks;
  const int64_t chunk = (wanted + kUnit - 1) / kUnit * kUnit;
  return chunk < kUnit ? kUnit : chunk;
}

int64_t chunk_count(int64_t numel, int64_t chunk) {
  const int64_t count = (numel + chunk - 1) / chunk;
  return count < 1 ? 1 : count;
}

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// ----------------------------------------------------------------------------- fused generator

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

template <typename scalar_t>
cudaError_t launch_fill(const FillParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.frames == 0 || p.pre * p.post == 0) return cudaSuccess;
  unsigned int* const counters = reinterpret_cast<unsigned int*>(static_cast<char*>(p.workspace) + p.counters_offset);
  VIDMEM_CUDA_TRY(cudaMemsetAsync(counters, 0, sizeof(unsigned int) * p.batch, stream));
  const dim3 grid(static_cast<unsigned int>(p.chunks), static_cast<unsigned int>(p.grid_y));
  for (int64_t frame = 0; frame < p.frames; ++frame) {
    VIDMEM_CUDA_TRY(launch_kernel(fill_frame_kernel<scalar_t>, grid, kThreads, stream, p, frame));
  }
  return cudaSuccess;
}

// ----------------------------------------------------------------------------- step op

// Workspace: partial sums (batch, chunks, R + 1), in double: sum w p, then sum w n_k (products
// rounded in acc_t); then the coefficients (batch, 2): sqrt(alpha), sqrt(1 - alpha).
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

template <typename scalar_t>
cudaError_t launch_step(const StepParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const dim3 stats_grid(static_cast<unsigned int>(p.chunks), static_cast<unsigned int>(p.grid_y));
  VIDMEM_CUDA_TRY(launch_kernel(step_stats_kernel<scalar_t>, stats_grid, kThreads, stream, p));
  const dim3 search_grid(static_cast<unsigned int>(min_i64(p.batch, int64_t(1) << 20)));
  VIDMEM_CUDA_TRY(launch_kernel(step_search_kernel<scalar_t>, search_grid, kThreads, stream, p));
  const int64_t total = p.batch * p.numel;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = min_i64((total + kThreads - 1) / kThreads, int64_t(1) << 20);
  return launch_kernel(step_write_kernel<scalar_t>, dim3(static_cast<unsigned int>(blocks)), kThreads, stream, p);
}

// Blocks along the batch: the device's grid y limit (the kernels loop over the rest).
cudaError_t grid_y_for(int64_t batch, int device, int64_t* grid_y) {
  int max_y = 0;
  VIDMEM_CUDA_TRY(cudaDeviceGetAttribute(&max_y, cudaDevAttrMaxGridDimY, device));
  *grid_y = min_i64(batch < 1 ? 1 : batch, max_y < 1 ? 1 : max_y);
  return cudaSuccess;
}

}  // namespace

// ----------------------------------------------------------------------------- entry points

cudaError_t plan_fill(FillParams& p, DType dtype, int device) {
  const int64_t frame_numel = p.pre * p.post;
  p.chunk = chunk_size_for(frame_numel);
  p.chunks = chunk_count(frame_numel, p.chunk);
  VIDMEM_CUDA_TRY(grid_y_for(p.batch, device, &p.grid_y));
  const size_t acc_bytes = element_size(acc_dtype(dtype));
  p.coefficients_offset = align_up(sizeof(double) * 3 * p.batch * p.chunks);
  p.counters_offset = p.coefficients_offset + align_up(acc_bytes * 2 * kParamWords * p.batch);
  p.workspace_bytes = p.counters_offset + align_up(sizeof(unsigned int) * p.batch);
  return cudaSuccess;
}

cudaError_t plan_step(StepParams& p, DType dtype, int device) {
  p.chunk = chunk_size_for(p.numel);
  p.chunks = chunk_count(p.numel, p.chunk);
  VIDMEM_CUDA_TRY(grid_y_for(p.batch, device, &p.grid_y));
  const size_t acc_bytes = element_size(acc_dtype(dtype));
  p.coefficients_offset = align_up(sizeof(double) * p.batch * p.chunks * (p.num_candidates + 1));
  p.workspace_bytes = p.coefficients_offset + align_up(acc_bytes * 2 * p.batch);
  return cudaSuccess;
}

cudaError_t fill_cuda(const FillParams& params, DType dtype, cudaStream_t stream) {
  return DTYPE_SWITCH(dtype, __half, __nv_bfloat16, scalar_t, [&] { return launch_fill<scalar_t>(params, stream); });
}

cudaError_t step_cuda(const StepParams& params, DType dtype, cudaStream_t stream) {
  return DTYPE_SWITCH(dtype, __half, __nv_bfloat16, scalar_t, [&] { return launch_step<scalar_t>(params, stream); });
}

}  // namespace vidmem
