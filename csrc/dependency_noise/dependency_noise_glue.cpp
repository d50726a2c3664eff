// Binds the dependency-noise CUDA kernels to torch: device checks, the device guard and the
// current stream; everything else is dependency_noise_cuda_ops.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dependency_noise/dependency_noise_cuda_ops.h"

namespace vidmem {
namespace {

at::Tensor dependency_noise_fill_cuda(at::Tensor& out, double lambda_i, int64_t random_search_times,
                                      int64_t linear_search_times, int64_t frame_dim, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(out.is_cuda(), "dependency_noise_fill_ (CUDA kernel): out must be a CUDA tensor, got ",
                    out.device());
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(out.get_device()).stream();
  return fill_on_device(out, lambda_i, random_search_times, linear_search_times, frame_dim, seed, offset,
                        out.get_device(), stream);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dependency_noise_step_cuda(const at::Tensor& prev,
                                                                          const at::Tensor& candidates,
                                                                          double lambda_i,
                                                                          int64_t linear_search_times) {
  TORCH_CHECK_VALUE(prev.is_cuda(), "dependency_noise_step (CUDA kernel): prev must be a CUDA tensor, got ",
                    prev.device());
  const c10::cuda::CUDAGuard guard(prev.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(prev.get_device()).stream();
  return step_on_device(prev, candidates, lambda_i, linear_search_times, prev.get_device(), stream);
}

}  // namespace
}  // namespace vidmem

TORCH_LIBRARY_IMPL(vidmem_ext, CUDA, m) {
  m.impl("dependency_noise_step", &vidmem::dependency_noise_step_cuda);
  m.impl("dependency_noise_fill_", &vidmem::dependency_noise_fill_cuda);
}
