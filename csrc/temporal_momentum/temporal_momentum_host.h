// Host side of temporal momentum shared by the CPU kernel and the CUDA glue: argument checks
// for direct callers of torch.ops.vidmem_ext.*, the joint collapse of lane axes into a Layout,
// and the contiguous fallback when too many lane axes remain.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "common/torch_dtype.h"
#include "temporal_momentum/temporal_momentum.h"

namespace vidmem {
namespace momentum {

inline bool is_full_operand(int op) { return op <= kGradX; }

// The checked arguments of one call.
struct Args {
  int64_t dim;
  at::Tensor momentum;  // acc dtype, expanded to the frame slice; undefined for a float momentum
  double momentum_value;
  std::vector<int64_t> slice_shape;
};

// The Python front end checks the same with Python exception types; these guard direct calls
// of torch.ops.vidmem_ext.* (and the checks raise ValueError / TypeError / IndexError too).
inline Args check_args(const at::Tensor& x, const std::optional<at::Tensor>& momentum, double momentum_value,
                       int64_t dim, const std::optional<at::Tensor>& initial) {
  const auto dtype = x.scalar_type();
  const at::ScalarType acc = acc_scalar_type(dtype, "temporal_momentum: x");  // checks x's dtype
  TORCH_CHECK_INDEX(x.dim() > 0, "temporal_momentum: dim: x is 0-dimensional and has no frame axis");
  TORCH_CHECK_INDEX(dim >= -x.dim() && dim < x.dim(), "temporal_momentum: dim ", dim, " is out of range for x with ",
                    x.dim(), " dimensions");
  Args args;
  args.dim = dim < 0 ? dim + x.dim() : dim;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (d != args.dim) args.slice_shape.push_back(x.size(d));
  }
  args.momentum_value = momentum_value;
  if (momentum.has_value()) {
    const at::Tensor& m = *momentum;
    TORCH_CHECK_VALUE(m.device() == x.device(), "temporal_momentum: momentum is on ", m.device(), " but x is on ",
                      x.device());
    TORCH_CHECK_TYPE(at::isFloatingType(m.scalar_type()), "temporal_momentum: momentum must be floating point, got ",
                      m.scalar_type());
    TORCH_CHECK_VALUE(at::is_expandable_to(m.sizes(), args.slice_shape), "temporal_momentum: momentum of shape ",
                      m.sizes(), " does not broadcast to one frame slice ", at::IntArrayRef(args.slice_shape));
    args.momentum = m.to(acc).expand(args.slice_shape);
  } else {
    TORCH_CHECK_VALUE(momentum_value >= 0.0 && momentum_value <= 1.0,
                      "temporal_momentum: momentum must be in [0, 1], got ", momentum_value);
  }
  if (initial.has_value()) {
    const at::Tensor& s = *initial;
    TORCH_CHECK_VALUE(s.sizes() == at::IntArrayRef(args.slice_shape),
                      "temporal_momentum: initial must have the frame-slice shape ", at::IntArrayRef(args.slice_shape),
                      ", got ", s.sizes());
    TORCH_CHECK_VALUE(s.scalar_type() == dtype, "temporal_momentum: initial must have x's dtype ", dtype, ", got ",
                      s.scalar_type());
    TORCH_CHECK_VALUE(s.device() == x.device(), "temporal_momentum: initial is on ", s.device(), " but x is on ",
                      x.device());
  }
  return args;
}

inline void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), "temporal_momentum_backward: ", name, " must have x's shape ", x.sizes(),
                    ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "temporal_momentum_backward: ", name, " must have x's dtype ",
                    x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "temporal_momentum_backward: ", name, " is on ", t.device(),
                    " but x is on ", x.device());
}

using Operands = std::array<at::Tensor, kNumOperands>;  // undefined where a call does not use one

// Data pointers of operands that may be undefined (nullptr then).
inline const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
inline void* mutable_data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// Collapse the lane axes of every defined operand jointly. Axes of size 1 drop out; the others
// are ordered by the strides of `order_op` (an output allocated like x, so dense), outermost
// first, and neighbours merge when every operand steps over them as over one axis. Returns
// false when more than kMaxLaneDims axes remain.
inline bool collapse_lanes(const at::Tensor& x, int64_t dim, const Operands& ops, int order_op, Layout& layout) {
  auto stride_of = [&](int op, int64_t d) -> int64_t {
    const at::Tensor& t = ops[op];
    if (!t.defined()) return 0;
    return is_full_operand(op) ? t.stride(d) : t.stride(d < dim ? d : d - 1);
  };
  std::vector<int64_t> axes;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (d != dim && x.size(d) != 1) axes.push_back(d);
  }
  std::stable_sort(axes.begin(), axes.end(),
                   [&](int64_t a, int64_t b) { return stride_of(order_op, a) > stride_of(order_op, b); });

  struct Axis {
    int64_t size;
    std::array<int64_t, kNumOperands> stride;
  };
  std::vector<Axis> merged;
  for (int64_t d : axes) {
    Axis axis{x.size(d), {}};
    for (int op = 0; op < kNumOperands; ++op) axis.stride[op] = stride_of(op, d);
    if (!merged.empty()) {
      Axis& outer = merged.back();
      bool mergeable = true;
      for (int op = 0; op < kNumOperands; ++op) mergeable &= outer.stride[op] == axis.stride[op] * axis.size;
      if (mergeable) {
        outer.size *= axis.size;
        outer.stride = axis.stride;
        continue;
      }
    }
    merged.push_back(axis);
  }
  if (merged.empty()) merged.push_back(Axis{1, {}});
  if (merged.size() > static_cast<size_t>(kMaxLaneDims)) return false;

  layout = Layout{};
  layout.frames = x.size(dim);
  layout.dims = static_cast<int>(merged.size());
  layout.lanes = 1;
  for (int d = 0; d < layout.dims; ++d) {
    layout.size[d] = merged[d].size;
    layout.lanes *= merged[d].size;
    for (int op = 0; op < kNumOperands; ++op) layout.stride[op][d] = merged[d].stride[op];
  }
  for (int op = 0; op < kNumOperands; ++op) {
    layout.frame_stride[op] = (is_full_operand(op) && ops[op].defined()) ? ops[op].stride(dim) : 0;
  }
  return true;
}

// A call's operands and layout. When the lane axes do not collapse into kMaxLaneDims, the
// kernels run on contiguous copies of the inputs and write contiguous temporaries, which
// `finish` copies into the real outputs (such layouts need at least 7 non-adjacent axes).
struct PreparedCall {
  Layout layout;
  Operands ops;
  Operands outputs;  // the caller's outputs where temporaries stand in for them
};

inline PreparedCall prepare_call(const at::Tensor& x, int64_t dim, const Operands& ops, int order_op,
                                 std::initializer_list<int> output_ops) {
  PreparedCall call;
  call.ops = ops;
  if (collapse_lanes(x, dim, ops, order_op, call.layout)) return call;
  for (int op = 0; op < kNumOperands; ++op) {
    if (!ops[op].defined()) continue;
    const bool is_output = std::find(output_ops.begin(), output_ops.end(), op) != output_ops.end();
    if (is_output) {
      call.outputs[op] = ops[op];
      call.ops[op] = at::empty(ops[op].sizes(), ops[op].options());
    } else {
      call.ops[op] = ops[op].contiguous();
    }
  }
  const bool collapsed = collapse_lanes(x, dim, call.ops, order_op, call.layout);
  TORCH_INTERNAL_ASSERT(collapsed, "temporal_momentum: contiguous operands must collapse to two lane axes");
  return call;
}

inline void finish_call(PreparedCall& call) {
  for (int op = 0; op < kNumOperands; ++op) {
    if (call.outputs[op].defined()) call.outputs[op].copy_(call.ops[op]);
  }
}

// The device-independent part of a forward call: checks, the output, the operands and the
// layout. `launch(call, args)` runs the kernel on the prepared call; nothing runs for empty x.
template <typename Launch>
at::Tensor run_forward(const at::Tensor& x, const std::optional<at::Tensor>& momentum, double momentum_value,
                       int64_t dim, const std::optional<at::Tensor>& initial, Launch&& launch) {
  const Args args = check_args(x, momentum, momentum_value, dim, initial);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  Operands ops;
  ops[kX] = x;
  ops[kY] = y;
  ops[kMomentum] = args.momentum;
  if (initial.has_value()) ops[kInitial] = *initial;
  PreparedCall call = prepare_call(x, args.dim, ops, kY, {kY});
  launch(call, args);
  finish_call(call);
  return y;
}

// The same for backward: (grad_x, per-lane grad_momentum or empty, grad_initial or empty).
// x and y are operands only when the momentum gradient is wanted (it reads y_{t-1} - x_t).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                            const at::Tensor& y,
                                                            const std::optional<at::Tensor>& momentum,
                                                            double momentum_value, int64_t dim,
                                                            const std::optional<at::Tensor>& initial,
                                                            bool momentum_grad, Launch&& launch) {
  const Args args = check_args(x, momentum, momentum_value, dim, initial);
  check_like_x(grad_y, x, "grad_y");
  check_like_x(y, x, "y");
  const auto acc_options =
      x.options().dtype(acc_scalar_type(x.scalar_type(), "temporal_momentum_backward: x"));
  const bool empty = x.numel() == 0;  // then no frame writes the slice grads: they are zero
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_m = !momentum_grad ? at::empty({0}, acc_options)
                      : empty  ? at::zeros(args.slice_shape, acc_options)
                               : at::empty(args.slice_shape, acc_options);
  at::Tensor grad_init = !initial.has_value() ? at::empty({0}, x.options())
                         : empty              ? at::zeros_like(*initial)
                                              : at::empty_like(*initial);
  if (empty) return {grad_x, grad_m, grad_init};
  Operands ops;
  ops[kGradY] = grad_y;
  ops[kGradX] = grad_x;
  ops[kMomentum] = args.momentum;
  if (initial.has_value()) {
    ops[kInitial] = *initial;
    ops[kGradInitial] = grad_init;
  }
  if (momentum_grad) {
    ops[kX] = x;
    ops[kY] = y;
    ops[kGradMomentum] = grad_m;
  }
  PreparedCall call = prepare_call(x, args.dim, ops, kGradX, {kGradX, kGradInitial, kGradMomentum});
  launch(call, args);
  finish_call(call);
  return {grad_x, grad_m, grad_init};
}

}  // namespace momentum
}  // namespace vidmem
