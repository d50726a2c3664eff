// Argument checks of the dependency-noise ops, shared by the CPU kernels and the CUDA glue
// (the ops can be called through torch.ops directly, not only through vidmem_ext/noise.py).
// Errors name the op and raise ValueError / TypeError / IndexError in Python, as the momentum
// op's do. Torch headers: include this from .cpp files only, never from .cu files.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>

#include "common/torch_dtype.h"
#include "dependency_noise/dependency_noise.h"

namespace vidmem {

inline void check_search_args(const char* op, double lambda_i, int64_t linear_search_times) {
  TORCH_CHECK_VALUE(std::isfinite(lambda_i) && 0 <= lambda_i && lambda_i <= kMaxLambda, op,
                    ": lambda_i must be a finite float in [0, ", kMaxLambda, "], got ", lambda_i);
  TORCH_CHECK_VALUE(0 <= linear_search_times && linear_search_times <= kMaxLinearSearchTimes, op,
                    ": linear_search_times must be in [0, ", kMaxLinearSearchTimes, "], got ", linear_search_times);
}

// Checks dependency_noise_fill_'s arguments; returns frame_dim in [1, out.dim()).
inline int64_t check_fill_args(const at::Tensor& out, double lambda_i, int64_t random_search_times,
                               int64_t linear_search_times, int64_t frame_dim) {
  constexpr const char* op = "dependency_noise_fill_";
  check_search_args(op, lambda_i, linear_search_times);
  TORCH_CHECK_VALUE(1 <= random_search_times && random_search_times <= kMaxRandomSearchTimes, op,
                    ": random_search_times must be in [1, ", kMaxRandomSearchTimes, "], got ", random_search_times);
  TORCH_CHECK_VALUE(out.dim() >= 2, op, ": out must have at least 2 dims (batch and frames), got shape ",
                    out.sizes());
  TORCH_CHECK_INDEX(-out.dim() <= frame_dim && frame_dim < out.dim(), op, ": frame_dim ", frame_dim,
                    " is out of range for out with ", out.dim(), " dimensions");
  TORCH_CHECK_VALUE(frame_dim % out.dim() != 0, op, ": frame_dim must index a non-batch axis of out (1..",
                    out.dim() - 1, "), got ", frame_dim);
  to_dtype(out.scalar_type(), "dependency_noise_fill_: out");
  // As torch's own in-place ops: memory that several elements share (an expanded view) is refused
  // before any work; layouts it cannot decide (as_strided) are written element by element.
  TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes, op,
                    ": out has elements that share memory (an expanded view); pass a tensor of its own, e.g. "
                    "out.clone()");
  frame_dim = (frame_dim + out.dim()) % out.dim();
  // An empty out may have sizes whose product wraps (2**32 x 0 x 2**32): divide only when it is not
  // empty, where the product is at most numel.
  const int64_t frame_numel = out.numel() == 0 ? 0 : out.numel() / (out.size(0) * out.size(frame_dim));
  TORCH_CHECK_VALUE(frame_numel <= kMaxFrameNumel && out.size(0) <= kMaxBatch, op, ": out: frames of ", frame_numel,
                    " elements (at most ", kMaxFrameNumel, ") and a batch of ", out.size(0), " (at most ", kMaxBatch,
                    ") exceed what the Philox stream layout addresses");
  return frame_dim;
}

inline void check_step_args(const at::Tensor& prev, const at::Tensor& candidates, double lambda_i,
                            int64_t linear_search_times) {
  constexpr const char* op = "dependency_noise_step";
  check_search_args(op, lambda_i, linear_search_times);
  TORCH_CHECK_VALUE(prev.dim() >= 1, op, ": prev must have a batch axis: shape (B, ...)");
  TORCH_CHECK_VALUE(candidates.dim() == prev.dim() + 1 && candidates.sizes().slice(1) == prev.sizes(), op,
                    ": candidates must have shape (R, *prev.shape) with prev of shape ", prev.sizes(), ", got ",
                    candidates.sizes());
  TORCH_CHECK_VALUE(candidates.size(0) >= 1, op, ": candidates must hold at least one candidate (R >= 1)");
  TORCH_CHECK_VALUE(candidates.scalar_type() == prev.scalar_type(), op, ": candidates dtype ",
                    candidates.scalar_type(), " differs from prev dtype ", prev.scalar_type());
  TORCH_CHECK_VALUE(candidates.device() == prev.device(), op, ": candidates are on ", candidates.device(),
                    " but prev is on ", prev.device());
  to_dtype(prev.scalar_type(), "dependency_noise_step: prev");
}

// The frame layout of a contiguous out viewed as (batch, pre, frames, post).
struct NoiseOutShape {
  int64_t batch, pre, frames, post;
};

inline NoiseOutShape noise_out_shape(const at::Tensor& out, int64_t frame_dim) {
  NoiseOutShape shape{out.size(0), 1, out.size(frame_dim), 1};
  for (int64_t d = 1; d < frame_dim; ++d) shape.pre *= out.size(d);
  for (int64_t d = frame_dim + 1; d < out.dim(); ++d) shape.post *= out.size(d);
  return shape;
}

// The device-independent part of dependency_noise_fill_: checks, the alphas, a contiguous
// stand-in for a non-contiguous out. `launch(work, shape, alphas)` fills `work` (contiguous, viewed
// as (batch, pre, frames, post)) and the alphas of frames 1 on (frame 0's are zero on entry; the
// rest start unset, so that the emulation tests' poisoned allocations show an unwritten one);
// nothing runs for an empty out.
template <typename Launch>
at::Tensor run_fill(at::Tensor& out, double lambda_i, int64_t random_search_times, int64_t linear_search_times,
                    int64_t frame_dim, Launch&& launch) {
  frame_dim = check_fill_args(out, lambda_i, random_search_times, linear_search_times, frame_dim);
  const at::ScalarType acc = acc_scalar_type(out.scalar_type(), "dependency_noise_fill_: out");
  at::Tensor alphas = at::empty({out.size(0), out.size(frame_dim)}, out.options().dtype(acc));
  if (out.numel() == 0) return alphas.zero_();
  if (alphas.size(1) > 0) alphas.select(1, 0).zero_();
  at::Tensor work = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  launch(work, noise_out_shape(work, frame_dim), alphas);
  if (!work.is_same(out)) out.copy_(work);
  return alphas;
}

// The same for dependency_noise_step: `launch(prev, candidates, frame, alpha, index)` on contiguous
// prev (batch, numel) and candidates (R, batch, numel); nothing runs for an empty batch.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_step(const at::Tensor& prev, const at::Tensor& candidates,
                                                        double lambda_i, int64_t linear_search_times,
                                                        Launch&& launch) {
  check_step_args(prev, candidates, lambda_i, linear_search_times);
  const at::ScalarType acc = acc_scalar_type(prev.scalar_type(), "dependency_noise_step: prev");
  const int64_t batch = prev.size(0);
  const at::Tensor p = prev.contiguous();
  const at::Tensor n = candidates.contiguous();
  at::Tensor frame = at::empty_like(p);
  at::Tensor alpha = at::empty({batch}, prev.options().dtype(acc));
  at::Tensor index = at::empty({batch}, prev.options().dtype(at::kLong));
  if (batch == 0) return {frame, alpha, index};
  launch(p, n, frame, alpha, index);
  return {frame, alpha, index};
}

}  // namespace vidmem
