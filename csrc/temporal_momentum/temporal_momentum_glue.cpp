// Binds the temporal momentum CUDA kernels to torch: device checks, the device guard and the
// current stream; everything else is temporal_momentum_cuda_ops.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "temporal_momentum/temporal_momentum_cuda_ops.h"

namespace vidmem {
namespace momentum {
namespace {

void check_on_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), "temporal_momentum (CUDA kernel): ", name, " must be a CUDA tensor, got ",
                    t.device());
}

at::Tensor temporal_momentum_cuda(const at::Tensor& x, const std::optional<at::Tensor>& momentum,
                                  double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial) {
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  return forward_on_device(x, momentum, momentum_value, dim, initial, x.get_device(), stream);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_momentum_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& momentum,
    double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial, bool momentum_grad) {
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  return backward_on_device(grad_y, x, y, momentum, momentum_value, dim, initial, momentum_grad, x.get_device(),
                            stream);
}

}  // namespace
}  // namespace momentum
}  // namespace vidmem

TORCH_LIBRARY_IMPL(vidmem_ext, CUDA, m) {
  m.impl("temporal_momentum", &vidmem::momentum::temporal_momentum_cuda);
  m.impl("temporal_momentum_backward", &vidmem::momentum::temporal_momentum_backward_cuda);
}
