// Launchers of the CUDA dependency-noise kernels (csrc/dependency_noise/dependency_noise.cu), called by the
// torch glue (csrc/dependency_noise/dependency_noise_glue.cpp). Plain pointers and sizes only: no torch here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace vidmem {

// Storage dtype of the tensors; fp16/bf16/fp32 compute in fp32, fp64 in fp64.
enum class NoiseDtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// The fused generator on a contiguous out viewed as (batch, pre, frames, post).
struct NoiseFillLaunch {
  void* out;
  NoiseDtype dtype;
  int64_t batch, pre, frames, post;
  double lambda;
  int64_t random_search_times, linear_search_times;
  uint64_t seed, offset;
  void* alphas;     // (batch, frames) in the compute dtype; frame 0 must be zero on entry
  void* workspace;  // dependency_noise_fill_workspace_bytes(...) bytes, any content
};

size_t dependency_noise_fill_workspace_bytes(int64_t batch, int64_t frame_numel, NoiseDtype dtype);
cudaError_t launch_dependency_noise_fill(const NoiseFillLaunch& args, cudaStream_t stream);

// The step op on contiguous prev (batch, numel) and candidates (R, batch, numel).
struct NoiseStepLaunch {
  const void* prev;
  const void* candidates;
  void* frame;      // (batch, numel), prev's dtype
  void* alpha;      // (batch,), the compute dtype
  int64_t* index;   // (batch,)
  NoiseDtype dtype;
  int64_t batch, numel, num_candidates;
  double lambda;
  int64_t linear_search_times;
  void* workspace;  // dependency_noise_step_workspace_bytes(...) bytes, any content
};

size_t dependency_noise_step_workspace_bytes(int64_t batch, int64_t numel, int64_t num_candidates, NoiseDtype dtype);
cudaError_t launch_dependency_noise_step(const NoiseStepLaunch& args, cudaStream_t stream);

}  // namespace vidmem
