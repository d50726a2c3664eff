// CUDA kernels of dependency noise (docs/semantics.md, "Dependency noise"): the kernels are in
// dependency_noise_fill.cuh and dependency_noise_step.cuh; this file plans a call (chunks, grid,
// workspace) and launches them. CUDA headers and our own only (no torch), so CI compiles this file
// with nvcc against a CPU-only torch; the torch glue is dependency_noise_glue.cpp. The per-element and scalar math (Philox, Box-Muller, the search,
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
// alike. Exception: the step op's statistics outside float's range (|prev| beyond exp's range, see
// weighted_term) are searched in double on the double means, whose last bits depend on the
// summation order, so there CPU and GPU may differ in alpha's last bits or on near-ties. Every kernel launches through launch_kernel (common/launch.h), so the emulator in
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
#include "dependency_noise/dependency_noise_device.cuh"
#include "dependency_noise/dependency_noise_fill.cuh"
#include "dependency_noise/dependency_noise_step.cuh"

namespace vidmem {
namespace {

using namespace noise;  // NOLINT: the kernels and their constants

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

// ----------------------------------------------------------------------------- launchers

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

template <typename scalar_t>
cudaError_t launch_step(const StepParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const dim3 stats_grid(static_cast<unsigned int>(p.chunks), static_cast<unsigned int>(p.grid_y));
  VIDMEM_CUDA_TRY(launch_kernel(step_stats_kernel<scalar_t>, stats_grid, kThreads, stream, p));
  const dim3 search_grid(static_cast<unsigned int>(min_i64(p.batch, p.max_grid_x)));
  VIDMEM_CUDA_TRY(launch_kernel(step_search_kernel<scalar_t>, search_grid, kThreads, stream, p));
  const int64_t total = p.batch * p.numel;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = min_i64((total + kThreads - 1) / kThreads, p.max_grid_x);
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
  int max_x = 0;
  VIDMEM_CUDA_TRY(cudaDeviceGetAttribute(&max_x, cudaDevAttrMaxGridDimX, device));
  p.max_grid_x = min_i64(int64_t(1) << 20, max_x < 1 ? 1 : max_x);
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
