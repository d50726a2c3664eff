// The CUDA ops of temporal momentum minus the torch-CUDA specifics: checks, output allocation,
// the lane layout, the plan, the workspace and the launch. The glue
// (csrc/temporal_momentum/temporal_momentum_glue.cpp) adds the device guard and the current stream; the
// kernel emulation test (tests/cuda_emulation) runs the same code on CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "temporal_momentum/temporal_momentum_cuda.h"
#include "temporal_momentum/temporal_momentum_host.h"

namespace vidmem {
namespace momentum {

inline DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kFloat:
      return DType::kFloat32;
    default:
      return DType::kFloat64;
  }
}

inline void check_cuda_status(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, "temporal_momentum: ", what, " failed: ", cudaGetErrorString(status));
}

inline CudaOperands cuda_operands(const Operands& ops) {
  CudaOperands out;
  for (int op = 0; op < kNumOperands; ++op) out.ptr[op] = ops[op].defined() ? ops[op].data_ptr() : nullptr;
  return out;
}

inline at::Tensor workspace_for(const CudaPlan& plan, const at::Tensor& like) {
  if (plan.workspace_bytes == 0) return at::Tensor();
  return at::empty({static_cast<int64_t>(plan.workspace_bytes)}, like.options().dtype(at::kByte));
}

// `plan_out`, when given, receives the plan (nothing is planned for empty tensors).
inline at::Tensor forward_on_device(const at::Tensor& x, const std::optional<at::Tensor>& momentum,
                                    double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial,
                                    int device, cudaStream_t stream, CudaPlan* plan_out = nullptr) {
  return run_forward(x, momentum, momentum_value, dim, initial, [&](const PreparedCall& call, const Args& args) {
    const CudaOperands ptrs = cuda_operands(call.ops);
    const DType dtype = cuda_dtype(x.scalar_type());
    CudaPlan plan;
    check_cuda_status(plan_cuda(call.layout, dtype, ptrs, false, false, device, &plan), "planning the forward kernel");
    at::Tensor workspace = workspace_for(plan, x);
    check_cuda_status(forward_cuda(plan, call.layout, dtype, ptrs, args.momentum_value,
                                   workspace.defined() ? workspace.data_ptr() : nullptr, stream),
                      "launching the forward kernel");
    if (plan_out != nullptr) *plan_out = plan;
  });
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_on_device(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& momentum,
    double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial, bool momentum_grad, int device,
    cudaStream_t stream, CudaPlan* plan_out = nullptr) {
  const bool want_dm = momentum_grad;
  return run_backward(
      grad_y, x, y, momentum, momentum_value, dim, initial, want_dm, [&](const PreparedCall& call, const Args& args) {
        const CudaOperands ptrs = cuda_operands(call.ops);
        const DType dtype = cuda_dtype(x.scalar_type());
        CudaPlan plan;
        check_cuda_status(plan_cuda(call.layout, dtype, ptrs, true, want_dm, device, &plan),
                          "planning the backward kernel");
        at::Tensor workspace = workspace_for(plan, x);
        check_cuda_status(backward_cuda(plan, call.layout, dtype, ptrs, args.momentum_value, want_dm,
                                        workspace.defined() ? workspace.data_ptr() : nullptr, stream),
                          "launching the backward kernel");
        if (plan_out != nullptr) *plan_out = plan;
      });
}

}  // namespace momentum
}  // namespace vidmem
