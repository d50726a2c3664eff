// The temporal momentum CUDA entry points (temporal_momentum.cu), called by the torch glue
// (temporal_momentum_cuda_ops.h, temporal_momentum_glue.cpp): the params of
// temporal_momentum.h, a dtype and a stream; no torch types.
#pragma once

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "temporal_momentum/temporal_momentum.h"

namespace vidmem {
namespace momentum {

// Fill params.plan from the layout, the operands' alignment and the device's SM count.
cudaError_t plan_forward(ForwardParams& params, DType dtype, int device);
cudaError_t plan_backward(BackwardParams& params, DType dtype, int device);

// y from x. params.workspace holds params.plan.workspace_bytes.
cudaError_t forward_cuda(const ForwardParams& params, DType dtype, cudaStream_t stream);

// grad_x (and grad_initial, and grad_momentum per lane when momentum_grad) from grad_y; x and y
// are read only for grad_momentum.
cudaError_t backward_cuda(const BackwardParams& params, DType dtype, cudaStream_t stream);

}  // namespace momentum
}  // namespace vidmem
