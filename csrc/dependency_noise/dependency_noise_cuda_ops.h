// The CUDA ops of dependency noise minus the torch-CUDA specifics: checks, outputs, the params,
// the plan, the workspace and the launch (`params_out`, when given, receives the params). The glue
// (dependency_noise_glue.cpp) adds the device guard and the current stream; the kernel emulation
// tests (tests/cuda_emulation) run the same code on CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common/cuda_check.h"
#include "common/torch_dtype.h"
#include "dependency_noise/dependency_noise_cuda.h"
#include "dependency_noise/dependency_noise_host.h"

namespace vidmem {

inline at::Tensor noise_workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

inline at::Tensor fill_on_device(at::Tensor& out, double lambda_i, int64_t random_search_times,
                                 int64_t linear_search_times, int64_t frame_dim, int64_t seed, int64_t offset,
                                 int device, cudaStream_t stream, FillParams* params_out = nullptr) {
  return run_fill(out, lambda_i, random_search_times, linear_search_times, frame_dim,
                  [&](at::Tensor& work, const NoiseOutShape& shape, at::Tensor& alphas) {
                    const DType dtype = to_dtype(work.scalar_type(), "dependency_noise_fill_: out");
                    FillParams params{};
                    params.out = work.data_ptr();
                    params.batch = shape.batch;
                    params.pre = shape.pre;
                    params.frames = shape.frames;
                    params.post = shape.post;
                    params.lambda = lambda_i;
                    params.random_search_times = random_search_times;
                    params.linear_search_times = linear_search_times;
                    params.seed = static_cast<uint64_t>(seed);
                    params.offset = static_cast<uint64_t>(offset);
                    params.alphas = alphas.data_ptr();
                    check_cuda(plan_fill(params, dtype, device), "dependency_noise_fill_", "planning the kernels");
                    const at::Tensor workspace = noise_workspace(params.workspace_bytes, work);
                    params.workspace = workspace.data_ptr();
                    check_cuda(fill_cuda(params, dtype, stream), "dependency_noise_fill_", "launching the kernels");
                    if (params_out != nullptr) *params_out = params;
                  });
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> step_on_device(const at::Tensor& prev,
                                                                     const at::Tensor& candidates, double lambda_i,
                                                                     int64_t linear_search_times, int device,
                                                                     cudaStream_t stream,
                                                                     StepParams* params_out = nullptr) {
  return run_step(prev, candidates, lambda_i, linear_search_times,
                  [&](const at::Tensor& p, const at::Tensor& n, at::Tensor& frame, at::Tensor& alpha,
                      at::Tensor& index) {
                    const DType dtype = to_dtype(p.scalar_type(), "dependency_noise_step: prev");
                    StepParams params{};
                    params.prev = p.const_data_ptr();
                    params.candidates = n.const_data_ptr();
                    params.frame = frame.data_ptr();
                    params.alpha = alpha.data_ptr();
                    params.index = index.data_ptr<int64_t>();
                    params.batch = p.size(0);
                    params.numel = p.numel() / p.size(0);
                    params.num_candidates = n.size(0);
                    params.lambda = lambda_i;
                    params.linear_search_times = linear_search_times;
                    check_cuda(plan_step(params, dtype, device), "dependency_noise_step", "planning the kernels");
                    const at::Tensor workspace = noise_workspace(params.workspace_bytes, p);
                    params.workspace = workspace.data_ptr();
                    check_cuda(step_cuda(params, dtype, stream), "dependency_noise_step", "launching the kernels");
                    if (params_out != nullptr) *params_out = params;
                  });
}

}  // namespace vidmem
