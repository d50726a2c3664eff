// The dependency-noise CUDA entry points (dependency_noise.cu), called by the torch glue
// (dependency_noise_cuda_ops.h, dependency_noise_glue.cpp): the params of dependency_noise.h, a
// dtype and a stream; no torch types.
#pragma once

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "dependency_noise/dependency_noise.h"

namespace vidmem {

// Fill the plan fields of the params (chunks, grid, workspace layout) for `device`.
cudaError_t plan_fill(FillParams& params, DType dtype, int device);
cudaError_t plan_step(StepParams& params, DType dtype, int device);

// params.workspace holds params.workspace_bytes, any content.
cudaError_t fill_cuda(const FillParams& params, DType dtype, cudaStream_t stream);
cudaError_t step_cuda(const StepParams& params, DType dtype, cudaStream_t stream);

}  // namespace vidmem
