// Torch glue of the CUDA dependency-noise kernels: checks, device guard, stream, workspace, and
// the plain launchers of dependency_noise.cu (declared in dependency_noise_cuda.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dependency_noise/dependency_noise_host.h"
#include "dependency_noise/dependency_noise_cuda.h"

namespace vidmem {
namespace {

NoiseDtype noise_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return NoiseDtype::kFloat32;
    case at::kDouble:
      return NoiseDtype::kFloat64;
    case at::kHalf:
      return NoiseDtype::kFloat16;
    case at::kBFloat16:
      return NoiseDtype::kBFloat16;
    default:
      TORCH_CHECK(false, "dependency noise: unsupported dtype ", dtype);
  }
}

at::Tensor workspace_bytes(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

at::Tensor dependency_noise_fill_cuda(at::Tensor& out, double lambda_i, int64_t random_search_times,
                                      int64_t linear_search_times, int64_t frame_dim, int64_t seed, int64_t offset) {
  frame_dim = check_fill_args(out, lambda_i, random_search_times, linear_search_times, frame_dim);
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor alphas = at::zeros({out.size(0), out.size(frame_dim)}, out.options().dtype(noise_acc_dtype(out.scalar_type())));
  if (out.numel() == 0) return alphas;

  at::Tensor work = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  const NoiseOutShape shape = noise_out_shape(work, frame_dim);
  const NoiseDtype dtype = noise_dtype(work.scalar_type());
  at::Tensor workspace =
      workspace_bytes(dependency_noise_fill_workspace_bytes(shape.batch, shape.pre * shape.post, dtype), work);
  NoiseFillLaunch args{};
  args.out = work.data_ptr();
  args.dtype = dtype;
  args.batch = shape.batch;
  args.pre = shape.pre;
  args.frames = shape.frames;
  args.post = shape.post;
  args.lambda = lambda_i;
  args.random_search_times = random_search_times;
  args.linear_search_times = linear_search_times;
  args.seed = static_cast<uint64_t>(seed);
  args.offset = static_cast<uint64_t>(offset);
  args.alphas = alphas.data_ptr();
  args.workspace = workspace.data_ptr();
  C10_CUDA_CHECK(launch_dependency_noise_fill(args, c10::cuda::getCurrentCUDAStream()));
  if (!work.is_same(out)) out.copy_(work);
  return alphas;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dependency_noise_step_cuda(const at::Tensor& prev,
                                                                          const at::Tensor& candidates,
                                                                          double lambda_i,
                                                                          int64_t linear_search_times) {
  check_step_args(prev, candidates, lambda_i, linear_search_times);
  const c10::cuda::CUDAGuard guard(prev.device());
  const int64_t batch = prev.size(0);
  const int64_t numel = batch == 0 ? 0 : prev.numel() / batch;
  const at::Tensor p = prev.contiguous();
  const at::Tensor n = candidates.contiguous();
  at::Tensor frame = at::empty_like(p);
  at::Tensor alpha = at::empty({batch}, prev.options().dtype(noise_acc_dtype(prev.scalar_type())));
  at::Tensor index = at::empty({batch}, prev.options().dtype(at::kLong));
  if (batch == 0) return {frame, alpha, index};

  const NoiseDtype dtype = noise_dtype(prev.scalar_type());
  at::Tensor workspace =
      workspace_bytes(dependency_noise_step_workspace_bytes(batch, numel, candidates.size(0), dtype), p);
  NoiseStepLaunch args{};
  args.prev = p.data_ptr();
  args.candidates = n.data_ptr();
  args.frame = frame.data_ptr();
  args.alpha = alpha.data_ptr();
  args.index = index.data_ptr<int64_t>();
  args.dtype = dtype;
  args.batch = batch;
  args.numel = numel;
  args.num_candidates = candidates.size(0);
  args.lambda = lambda_i;
  args.linear_search_times = linear_search_times;
  args.workspace = workspace.data_ptr();
  C10_CUDA_CHECK(launch_dependency_noise_step(args, c10::cuda::getCurrentCUDAStream()));
  return {frame, alpha, index};
}

}  // namespace
}  // namespace vidmem

TORCH_LIBRARY_IMPL(vidmem_ext, CUDA, m) {
  m.impl("dependency_noise_step", &vidmem::dependency_noise_step_cuda);
  m.impl("dependency_noise_fill_", &vidmem::dependency_noise_fill_cuda);
}
