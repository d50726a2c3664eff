// Argument checks of the dependency-noise ops, shared by the CPU kernels and the CUDA glue
// (the ops can be called through torch.ops directly, not only through vidmem_ext/noise.py).
// Torch headers: include this from .cpp files only, never from .cu files.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "dependency_noise/dependency_noise.h"

namespace vidmem {

inline bool is_noise_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
}

inline at::ScalarType noise_acc_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_search_args(double lambda_i, int64_t linear_search_times) {
  TORCH_CHECK(std::isfinite(lambda_i) && lambda_i >= 0, "lambda_i must be a finite float >= 0, got ", lambda_i);
  TORCH_CHECK_VALUE(0 <= linear_search_times && linear_search_times <= kMaxLinearSearchTimes,
                    "linear_search_times must be in [0, ", kMaxLinearSearchTimes, "], got ", linear_search_times);
}

// Checks dependency_noise_fill_'s arguments; returns frame_dim in [1, out.dim()).
inline int64_t check_fill_args(const at::Tensor& out, double lambda_i, int64_t random_search_times,
                               int64_t linear_search_times, int64_t frame_dim) {
  check_search_args(lambda_i, linear_search_times);
  TORCH_CHECK_VALUE(1 <= random_search_times && random_search_times <= kMaxRandomSearchTimes,
                    "random_search_times must be in [1, ", kMaxRandomSearchTimes, "], got ", random_search_times);
  TORCH_CHECK(out.dim() >= 2, "out must have at least 2 dims (batch and frames), got shape ", out.sizes());
  TORCH_CHECK(-out.dim() <= frame_dim && frame_dim < out.dim() && frame_dim % out.dim() != 0,
              "frame_dim must index a non-batch axis of out (1..", out.dim() - 1, "), got ", frame_dim);
  TORCH_CHECK(is_noise_dtype(out.scalar_type()), "out must be float16, bfloat16, float32 or float64, got ",
              out.scalar_type());
  frame_dim = (frame_dim + out.dim()) % out.dim();
  const int64_t frame_numel = out.size(0) == 0 || out.size(frame_dim) == 0
                                  ? 0
                                  : out.numel() / (out.size(0) * out.size(frame_dim));
  TORCH_CHECK(frame_numel <= kMaxFrameNumel && out.size(0) <= kMaxBatch, "out: frames of ", frame_numel,
              " elements (at most ", kMaxFrameNumel, ") and a batch of ", out.size(0), " (at most ", kMaxBatch,
              ") exceed what the Philox stream layout addresses");
  return frame_dim;
}

inline void check_step_args(const at::Tensor& prev, const at::Tensor& candidates, double lambda_i,
                            int64_t linear_search_times) {
  check_search_args(lambda_i, linear_search_times);
  TORCH_CHECK(prev.dim() >= 1, "prev must have a batch axis: shape (B, ...)");
  TORCH_CHECK(candidates.dim() == prev.dim() + 1 && candidates.sizes().slice(1) == prev.sizes(),
              "candidates must have shape (R, *prev.shape) with prev of shape ", prev.sizes(), ", got ",
              candidates.sizes());
  TORCH_CHECK(candidates.size(0) >= 1, "candidates must hold at least one candidate (R >= 1)");
  TORCH_CHECK(candidates.scalar_type() == prev.scalar_type(), "candidates dtype ", candidates.scalar_type(),
              " differs from prev dtype ", prev.scalar_type());
  TORCH_CHECK(candidates.device() == prev.device(), "candidates are on ", candidates.device(), " but prev is on ",
              prev.device());
  TORCH_CHECK(is_noise_dtype(prev.scalar_type()), "prev must be float16, bfloat16, float32 or float64, got ",
              prev.scalar_type());
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

}  // namespace vidmem
