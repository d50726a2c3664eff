// Runs the temporal momentum CUDA kernels (csrc/temporal_momentum/temporal_momentum.cu, unchanged) and the
// code of the CUDA ops (csrc/temporal_momentum/temporal_momentum_cuda_ops.h) on CPU tensors through the emulator
// in include/. Built by tests/test_temporal_momentum_cuda_emulation.py.
#include <torch/extension.h>

// The emulator must come after the torch headers: it defines __global__, __shared__ and friends.
#include <cuda_runtime.h>

#define VIDMEM_CUDA_EMULATION 1
#include "temporal_momentum/temporal_momentum.cu"
#include "temporal_momentum/temporal_momentum_cuda_ops.h"

namespace {

namespace vm = vidmem::momentum;

pybind11::dict describe(const vm::CudaPlan& plan) {
  static const char* names[] = {"lanes", "lane_chunks", "frame_segments"};
  pybind11::dict d;
  d["kernel"] = names[static_cast<int>(plan.kernel)];
  d["vector"] = plan.vector;
  d["chunk_len"] = plan.chunk_len;
  d["chunks"] = plan.chunks;
  d["workspace_bytes"] = plan.workspace_bytes;
  return d;
}

std::tuple<at::Tensor, pybind11::dict> forward(const at::Tensor& x, const std::optional<at::Tensor>& momentum,
                                               double momentum_value, int64_t dim,
                                               const std::optional<at::Tensor>& initial, int sm_count) {
  cuda_emulation::device().sm_count = sm_count;
  vm::CudaPlan plan{};
  at::Tensor y = vm::forward_on_device(x, momentum, momentum_value, dim, initial, 0, nullptr, &plan);
  return {y, describe(plan)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, pybind11::dict> backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& momentum,
    double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial, bool momentum_grad, int sm_count) {
  cuda_emulation::device().sm_count = sm_count;
  vm::CudaPlan plan{};
  auto [gx, gm, gi] = vm::backward_on_device(grad_y, x, y, momentum, momentum_value, dim, initial, momentum_grad, 0,
                                             nullptr, &plan);
  return {gx, gm, gi, describe(plan)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "temporal momentum CUDA kernels run by a CPU emulator (tests only)";
  m.def("forward", &forward, "y and the plan", pybind11::arg("x"), pybind11::arg("momentum"),
        pybind11::arg("momentum_value"), pybind11::arg("dim"), pybind11::arg("initial"), pybind11::arg("sm_count"));
  m.def("backward", &backward, "(grad_x, grad_momentum, grad_initial) and the plan", pybind11::arg("grad_y"),
        pybind11::arg("x"), pybind11::arg("y"), pybind11::arg("momentum"), pybind11::arg("momentum_value"),
        pybind11::arg("dim"), pybind11::arg("initial"), pybind11::arg("momentum_grad"), pybind11::arg("sm_count"));
}
