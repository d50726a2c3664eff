// The CUDA ops of temporal momentum minus the torch-CUDA specifics: checks, output allocation,
// the lane layout, the params, the plan, the workspace and the launch. The glue
// (temporal_momentum_glue.cpp) adds the device guard and the current stream; the kernel
// emulation test (tests/cuda_emulation) runs the same code on CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "common/cuda_check.h"
#include "common/torch_dtype.h"
#include "temporal_momentum/temporal_momentum_cuda.h"
#include "temporal_momentum/temporal_momentum_host.h"

namespace vidmem {
namespace momentum {

inline at::Tensor workspace_for(const CudaPlan& plan, const at::Tensor& like) {
  if (plan.workspace_bytes == 0) return at::Tensor();
  return at::empty({static_cast<int64_t>(plan.workspace_bytes)}, like.options().dtype(at::kByte));
}

// `plan_out`, when given, receives the plan (nothing is planned for empty tensors).
inline at::Tensor forward_on_device(const at::Tensor& x, const std::optional<at::Tensor>& momentum,
                                    double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial,
                                    int device, cudaStream_t stream, CudaPlan* plan_out = nullptr) {
  return run_forward(x, momentum, momentum_value, dim, initial, [&](const PreparedCall& call, const Args& args) {
    const DType dtype = to_dtype(x.scalar_type(), "temporal_momentum: x");
    ForwardParams params{};
    params.layout = call.layout;
    params.x = data_or_null(call.ops[kX]);
    params.y = mutable_data_or_null(call.ops[kY]);
    params.momentum = data_or_null(call.ops[kMomentum]);
    params.momentum_value = args.momentum_value;
    params.initial = data_or_null(call.ops[kInitial]);
    check_cuda(plan_forward(params, dtype, device), "temporal_momentum", "planning the forward kernel");
    const at::Tensor workspace = workspace_for(params.plan, x);
    params.workspace = mutable_data_or_null(workspace);
    check_cuda(forward_cuda(params, dtype, stream), "temporal_momentum", "launching the forward kernel");
    if (plan_out != nullptr) *plan_out = params.plan;
  });
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_on_device(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& momentum,
    double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial, bool momentum_grad, int device,
    cudaStream_t stream, CudaPlan* plan_out = nullptr) {
  return run_backward(grad_y, x, y, momentum, momentum_value, dim, initial, momentum_grad,
                      [&](const PreparedCall& call, const Args& args) {
                        const DType dtype = to_dtype(x.scalar_type(), "temporal_momentum_backward: x");
                        BackwardParams params{};
                        params.layout = call.layout;
                        params.grad_y = data_or_null(call.ops[kGradY]);
                        params.x = data_or_null(call.ops[kX]);
                        params.y = data_or_null(call.ops[kY]);
                        params.grad_x = mutable_data_or_null(call.ops[kGradX]);
                        params.momentum = data_or_null(call.ops[kMomentum]);
                        params.momentum_value = args.momentum_value;
                        params.initial = data_or_null(call.ops[kInitial]);
                        params.grad_initial = mutable_data_or_null(call.ops[kGradInitial]);
                        params.grad_momentum = mutable_data_or_null(call.ops[kGradMomentum]);
                        params.momentum_grad = momentum_grad;
                        check_cuda(plan_backward(params, dtype, device), "temporal_momentum_backward",
                                   "planning the backward kernel");
                        const at::Tensor workspace = workspace_for(params.plan, x);
                        params.workspace = mutable_data_or_null(workspace);
                        check_cuda(backward_cuda(params, dtype, stream), "temporal_momentum_backward",
                                   "launching the backward kernel");
                        if (plan_out != nullptr) *plan_out = params.plan;
                      });
}

}  // namespace momentum
}  // namespace vidmem
