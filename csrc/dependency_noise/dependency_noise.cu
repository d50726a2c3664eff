// CUDA kernels of dependency noise (SEMANTICS.md section 2). CUDA headers and our own only (no
// torch), so CI compiles this file with nvcc against a CPU-only torch; the torch glue is
// dependency_noise_glue.cpp. The per-element and scalar math (Philox, Box-Muller, the search,
// composing a frame) is csrc/common/philox.h and dependency_noise.h, shared with the CPU.
//
// Fused generator: one launch per frame. Block (c, b) writes chunk c of batch item b's frame f
// and reduces the sums over it that frame f + 1's search needs; the last block of b to finish
// (a ticket counter per batch item) adds the chunk sums in chunk order, runs the scalar search
// and leaves frame f + 1's coefficients for the next launch. No float atomics: the result does
// not depend on the order in which blocks run.
//
// Same bits as the CPU (fp32/fp16/bf16): the shared math rounds every operation on its own (no
// fused multiply-adds, see mul_rn in csrc/common/philox.h), and the sums are taken in double, so they
// round to the same float as the CPU's despite the different order; the searches then decide alike.
//
// Step op: a statistics kernel (per-chunk sums), a search kernel (one block per batch item: the
// chunk sums added in a fixed-order tree, then the search) and a write kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "dependency_noise/dependency_noise.h"
#include "dependency_noise/dependency_noise_cuda.h"

namespace vidmem {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxChunks = 1024;  // blocks per batch item and frame: the partial sums stay O(B)
constexpr int64_t kMaxGridY = 65535;
constexpr int kParamWords = 4;  // sqrt(alpha), sqrt(1 - alpha), correction, alpha

// ----------------------------------------------------------------------------- storage types

template <typename scalar_t>
struct Storage;

template <>
struct Storage<float> {
  using acc_t = float;
  static __device__ __forceinline__ float load(const float* p) { return *p; }
  // Stores v and returns the value as stored.
  static __device__ __forceinline__ float store(float* p, float v) {
    *p = v;
    return v;
  }
};

template <>
struct Storage<double> {
  using acc_t = double;
  static __device__ __forceinline__ double load(const double* p) { return *p; }
  static __device__ __forceinline__ double store(double* p, double v) {
    *p = v;
    return v;
  }
};

template <>
struct Storage<__half> {
  using acc_t = float;
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ float store(__half* p, float v) {
    const __half rounded = __float2half_rn(v);
    *p = rounded;
    return __half2float(rounded);
  }
};

template <>
struct Storage<__nv_bfloat16> {
  using acc_t = float;
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
  static __device__ __forceinline__ float store(__nv_bfloat16* p, float v) {
    const __nv_bfloat16 rounded = __float2bfloat16_rn(v);
    *p = rounded;
    return __bfloat162float(rounded);
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
struct FillArgs {
  using acc_t = typename Storage<scalar_t>::acc_t;
  scalar_t* out;  // contiguous (batch, pre, frames, post)
  int64_t batch, pre, frames, post, frame_numel, chunk, chunks;
  acc_t lambda;
  int64_t num_candidates, linear_search_times;
  uint64_t seed, offset;
  acc_t* alphas;            // (batch, frames)
  double* partials;         // (batch, chunks, 3): the chunks' FrameSums
  acc_t* params;            // (2, batch, kParamWords): double-buffered by frame parity
  unsigned int* counters;   // (batch,): blocks of the current frame done, reset by the last one
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) fill_frame_kernel(const FillArgs<scalar_t> a, const int64_t frame) {
  using acc_t = typename Storage<scalar_t>::acc_t;
  __shared__ double scratch[3][kWarps];
  __shared__ bool last_block;
  const bool need_sums = frame + 1 < a.frames;
  const int64_t stride_pre = a.frames * a.post;
  const int64_t stride_batch = a.pre * stride_pre;
  const int64_t chunk_index = blockIdx.x;
  const int64_t first = chunk_index * a.chunk;
  const int64_t end = min_i64(a.frame_numel, first + a.chunk);

  for (int64_t b = blockIdx.y; b < a.batch; b += gridDim.y) {
    scalar_t* const out = a.out + b * stride_batch + frame * a.post;
    ComposeParams<acc_t> params{acc_t(1), acc_t(0), acc_t(0), acc_t(1)};
    if (frame > 0) {
      const acc_t* stored = a.params + ((frame & 1) * a.batch + b) * kParamWords;
      params.sqrt_alpha = stored[0];
      params.sqrt_one_minus_alpha = stored[1];
      params.correction = stored[2];
      params.alpha = stored[3];
    }
    const NormalStream normals = make_normal_stream(a.seed, a.offset, b, kElementNormals, frame);
    const NormalStream next_normals = make_normal_stream(a.seed, a.offset, b, kElementNormals, frame + 1);

    FrameSums sums{0.0, 0.0, 0.0};
    for (int64_t group = first / 4 + threadIdx.x; group * 4 < end; group += kThreads) {
      acc_t normal[4], next_normal[4];
      normals.group<acc_t>(static_cast<uint64_t>(group), normal);
      if (need_sums) next_normals.group<acc_t>(static_cast<uint64_t>(group), next_normal);
      const int64_t e = group * 4;
      int64_t row = e / a.post, col = e - row * a.post;
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (e + l < end) {
          const int64_t at = row * stride_pre + col;
          acc_t value = normal[l];
          if (frame > 0) value = compose_conditioned(Storage<scalar_t>::load(out + at - a.post), normal[l], params);
          value = Storage<scalar_t>::store(out + at, value);  // the next frame sees the value as stored
          if (need_sums) sums.add(value, next_normal[l]);
          if (++col == a.post) {
            col = 0;
            ++row;
          }
        }
      }
    }
    if (!need_sums) continue;  // uniform over the block

    sums = block_sum(sums, scratch);
    if (threadIdx.x == 0) {
      double* partial = a.partials + (b * a.chunks + chunk_index) * 3;
      partial[0] = sums.weighted_value;
      partial[1] = sums.weight_squared;
      partial[2] = sums.weighted_normal;
      __threadfence();  // publish the partial before taking a ticket
      const unsigned int ticket = atomicAdd(a.counters + b, 1u);
      last_block = ticket == static_cast<unsigned int>(a.chunks - 1);
    }
    __syncthreads();
    if (last_block) {
      __threadfence();  // see every other block's partial
      FrameSums total{0.0, 0.0, 0.0};
      for (int64_t c = threadIdx.x; c < a.chunks; c += kThreads) {  // fixed order: thread, then chunk
        const double* partial = a.partials + (b * a.chunks + c) * 3;
        total.add(FrameSums{__ldcg(partial), __ldcg(partial + 1), __ldcg(partial + 2)});
      }
      total = block_sum(total, scratch);
      if (threadIdx.x == 0) {
        const NormalStream statistics = make_normal_stream(a.seed, a.offset, b, kCandidateStatistics, frame + 1);
        const ComposeParams<acc_t> next = generator_search(total, a.frame_numel, statistics, a.num_candidates,
                                                           a.lambda, a.linear_search_times);
        acc_t* stored = a.params + (((frame + 1) & 1) * a.batch + b) * kParamWords;
        stored[0] = next.sqrt_alpha;
        stored[1] = next.sqrt_one_minus_alpha;
        stored[2] = next.correction;
        stored[3] = next.alpha;
        a.alphas[b * a.frames + frame + 1] = next.alpha;
        a.counters[b] = 0u;  // ready for the next frame's launch
      }
    }
    __syncthreads();  // last_block and scratch are reused by the next batch item
  }
}

template <typename scalar_t>
struct FillWorkspace {
  using acc_t = typename Storage<scalar_t>::acc_t;
  size_t partials_bytes, params_bytes, counters_bytes;

  FillWorkspace(int64_t batch, int64_t chunks)
      : partials_bytes(align_up(sizeof(double) * 3 * batch * chunks)),
        params_bytes(align_up(sizeof(acc_t) * 2 * kParamWords * batch)),
        counters_bytes(align_up(sizeof(unsigned int) * batch)) {}
  size_t total() const { return partials_bytes + params_bytes + counters_bytes; }
};

template <typename scalar_t>
cudaError_t launch_fill(const NoiseFillLaunch& args, cudaStream_t stream) {
  using acc_t = typename Storage<scalar_t>::acc_t;
  FillArgs<scalar_t> a;
  a.out = static_cast<scalar_t*>(args.out);
  a.batch = args.batch;
  a.pre = args.pre;
  a.frames = args.frames;
  a.post = args.post;
  a.frame_numel = args.pre * args.post;
  if (a.batch == 0 || a.frames == 0 || a.frame_numel == 0) return cudaSuccess;
  a.chunk = chunk_size_for(a.frame_numel);
  a.chunks = chunk_count(a.frame_numel, a.chunk);
  a.lambda = static_cast<acc_t>(args.lambda);
  a.num_candidates = args.random_search_times;
  a.linear_search_times = args.linear_search_times;
  a.seed = args.seed;
  a.offset = args.offset;
  a.alphas = static_cast<acc_t*>(args.alphas);
  const FillWorkspace<scalar_t> layout(a.batch, a.chunks);
  char* workspace = static_cast<char*>(args.workspace);
  a.partials = reinterpret_cast<double*>(workspace);
  a.params = reinterpret_cast<acc_t*>(workspace + layout.partials_bytes);
  a.counters = reinterpret_cast<unsigned int*>(workspace + layout.partials_bytes + layout.params_bytes);

  cudaError_t status = cudaMemsetAsync(a.counters, 0, sizeof(unsigned int) * a.batch, stream);
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned int>(a.chunks), static_cast<unsigned int>(min_i64(a.batch, kMaxGridY)));
  for (int64_t frame = 0; frame < a.frames; ++frame) {
    fill_frame_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(a, frame);
    status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

// ----------------------------------------------------------------------------- step op

template <typename scalar_t>
struct StepArgs {
  using acc_t = typename Storage<scalar_t>::acc_t;
  const scalar_t* prev;        // (batch, numel)
  const scalar_t* candidates;  // (R, batch, numel)
  scalar_t* frame;
  acc_t* alpha;
  int64_t* index;
  int64_t batch, numel, num_candidates, chunk, chunks;
  acc_t lambda;
  int64_t linear_search_times;
  double* partials;     // (batch, chunks, R + 1): sum w p, then sum w n_k (products in acc_t, sums in double)
  acc_t* coefficients;  // (batch, 2): sqrt(alpha), sqrt(1 - alpha)
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) step_stats_kernel(const StepArgs<scalar_t> a) {
  using acc_t = typename Storage<scalar_t>::acc_t;
  __shared__ double scratch[kWarps];
  const int64_t chunk_index = blockIdx.x;
  const int64_t first = chunk_index * a.chunk;
  const int64_t end = min_i64(a.numel, first + a.chunk);
  const int64_t stats = a.num_candidates + 1;
  for (int64_t b = blockIdx.y; b < a.batch; b += gridDim.y) {
    const scalar_t* prev = a.prev + b * a.numel;
    for (int64_t k = -1; k < a.num_candidates; ++k) {
      const scalar_t* values = k < 0 ? prev : a.candidates + (k * a.batch + b) * a.numel;
      double sum = 0.0;
      for (int64_t e = first + threadIdx.x; e < end; e += kThreads) {
        sum = add_rn(sum, weighted_term(Storage<scalar_t>::load(prev + e), Storage<scalar_t>::load(values + e)));
      }
      sum = block_sum(sum, scratch);
      if (threadIdx.x == 0) a.partials[(b * a.chunks + chunk_index) * stats + (k + 1)] = sum;
    }
  }
}

// One block per batch item. Each of the R + 1 statistics is the sum of up to kMaxChunks chunk
// partials: thread t adds chunks t, t + kThreads, ... in order and block_sum adds the threads' sums
// in a fixed tree, so the result does not depend on scheduling, and no thread walks
// chunks x (R + 1) partials alone. The totals go to the chunk-0 slots (each read, by thread 0,
// before its total is written); thread 0 then runs the search.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) step_search_kernel(const StepArgs<scalar_t> a) {
  using acc_t = typename Storage<scalar_t>::acc_t;
  __shared__ double scratch[kWarps];
  const int64_t stats = a.num_candidates + 1;
  const double n = static_cast<double>(a.numel);
  for (int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {  // block-uniform
    double* sums = a.partials + b * a.chunks * stats;
    for (int64_t slot = 0; slot < stats; ++slot) {
      double part = 0.0;
      for (int64_t c = threadIdx.x; c < a.chunks; c += kThreads) part = add_rn(part, sums[c * stats + slot]);
      const double total = block_sum(part, scratch);
      if (threadIdx.x == 0) sums[slot] = total;
    }
    if (threadIdx.x == 0) {
      const auto mean_of = [&](int64_t slot) { return sums[slot] / n; };  // in double
      const auto statistic = [&](int64_t k) { return mean_of(k + 1); };
      const SearchResult<acc_t> found =
          search_on_means<acc_t>(mean_of(0), a.num_candidates, statistic, a.lambda, a.linear_search_times);
      a.alpha[b] = found.alpha;
      a.index[b] = found.index;
      a.coefficients[2 * b] = sqrt(found.alpha);
      a.coefficients[2 * b + 1] = sqrt(sub_rn(acc_t(1), found.alpha));
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) step_write_kernel(const StepArgs<scalar_t> a) {
  const int64_t total = a.batch * a.numel;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t b = i / a.numel, e = i - b * a.numel;
    const scalar_t* chosen = a.candidates + (a.index[b] * a.batch + b) * a.numel;
    Storage<scalar_t>::store(a.frame + i, compose_plain(Storage<scalar_t>::load(a.prev + i),
                                                        Storage<scalar_t>::load(chosen + e),
                                                        a.coefficients[2 * b], a.coefficients[2 * b + 1]));
  }
}

template <typename scalar_t>
size_t step_workspace_bytes(int64_t batch, int64_t numel, int64_t num_candidates) {
  using acc_t = typename Storage<scalar_t>::acc_t;
  const int64_t chunks = chunk_count(numel, chunk_size_for(numel));
  return align_up(sizeof(double) * batch * chunks * (num_candidates + 1)) + align_up(sizeof(acc_t) * 2 * batch);
}

template <typename scalar_t>
cudaError_t launch_step(const NoiseStepLaunch& args, cudaStream_t stream) {
  using acc_t = typename Storage<scalar_t>::acc_t;
  if (args.batch == 0) return cudaSuccess;
  StepArgs<scalar_t> a;
  a.prev = static_cast<const scalar_t*>(args.prev);
  a.candidates = static_cast<const scalar_t*>(args.candidates);
  a.frame = static_cast<scalar_t*>(args.frame);
  a.alpha = static_cast<acc_t*>(args.alpha);
  a.index = args.index;
  a.batch = args.batch;
  a.numel = args.numel;
  a.num_candidates = args.num_candidates;
  a.chunk = chunk_size_for(args.numel);
  a.chunks = chunk_count(args.numel, a.chunk);
  a.lambda = static_cast<acc_t>(args.lambda);
  a.linear_search_times = args.linear_search_times;
  char* workspace = static_cast<char*>(args.workspace);
  a.partials = reinterpret_cast<double*>(workspace);
  a.coefficients =
      reinterpret_cast<acc_t*>(workspace + align_up(sizeof(double) * a.batch * a.chunks * (a.num_candidates + 1)));

  const dim3 stats_grid(static_cast<unsigned int>(a.chunks), static_cast<unsigned int>(min_i64(a.batch, kMaxGridY)));
  step_stats_kernel<scalar_t><<<stats_grid, kThreads, 0, stream>>>(a);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  step_search_kernel<scalar_t><<<static_cast<unsigned int>(min_i64(a.batch, kMaxGridY)), kThreads, 0, stream>>>(a);
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const int64_t total = a.batch * a.numel;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = min_i64((total + kThreads - 1) / kThreads, int64_t(1) << 20);
  step_write_kernel<scalar_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

// ----------------------------------------------------------------------------- launchers

size_t dependency_noise_fill_workspace_bytes(int64_t batch, int64_t frame_numel, NoiseDtype dtype) {
  const int64_t chunks = chunk_count(frame_numel, chunk_size_for(frame_numel));
  return dtype == NoiseDtype::kFloat64 ? FillWorkspace<double>(batch, chunks).total()
                                       : FillWorkspace<float>(batch, chunks).total();
}

cudaError_t launch_dependency_noise_fill(const NoiseFillLaunch& args, cudaStream_t stream) {
  switch (args.dtype) {
    case NoiseDtype::kFloat32:
      return launch_fill<float>(args, stream);
    case NoiseDtype::kFloat64:
      return launch_fill<double>(args, stream);
    case NoiseDtype::kFloat16:
      return launch_fill<__half>(args, stream);
    case NoiseDtype::kBFloat16:
      return launch_fill<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

size_t dependency_noise_step_workspace_bytes(int64_t batch, int64_t numel, int64_t num_candidates, NoiseDtype dtype) {
  return dtype == NoiseDtype::kFloat64 ? step_workspace_bytes<double>(batch, numel, num_candidates)
                                       : step_workspace_bytes<float>(batch, numel, num_candidates);
}

cudaError_t launch_dependency_noise_step(const NoiseStepLaunch& args, cudaStream_t stream) {
  switch (args.dtype) {
    case NoiseDtype::kFloat32:
      return launch_step<float>(args, stream);
    case NoiseDtype::kFloat64:
      return launch_step<double>(args, stream);
    case NoiseDtype::kFloat16:
      return launch_step<__half>(args, stream);
    case NoiseDtype::kBFloat16:
      return launch_step<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vidmem
