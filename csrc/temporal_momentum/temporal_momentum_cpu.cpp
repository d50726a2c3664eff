// Temporal momentum on the CPU: forward and backward scans over frames.
//
// Work is split into tasks of up to kBlockLanes consecutive lanes of the innermost lane axis
// (at::parallel_for over tasks). A task keeps its lanes' state in a small buffer and walks the
// frames outermost, lanes innermost, so each frame is one contiguous run that the compiler
// vectorizes when the innermost stride is 1 (any other stride takes the same loop with a
// runtime stride). When the lanes make too few tasks for the frames, the frames are split into
// chunks as well: a first pass stores each chunk's aggregate, a second folds the aggregates in
// a fixed order into each chunk's carry (temporal_momentum.h, shared with the CUDA kernels).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/ExpandUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "temporal_momentum/temporal_momentum.h"
#include "temporal_momentum/temporal_momentum_host.h"

namespace vidmem {
namespace momentum {
namespace {

// Lanes per task. With a unit inner stride: long contiguous runs per frame, state in L1/L2.
// Otherwise (typically the frame axis is the contiguous one) each lane is its own stream, so a
// task takes few lanes: their independent recurrences interleave and the streams stay few
// enough for the TLB and the prefetchers.
constexpr int64_t kBlockLanes = 16384;
constexpr int64_t kStridedBlockLanes = 8;
constexpr int64_t kChunkFrames = 1024;  // frames per chunk when lanes alone make too few tasks

// Chunking depends on the shape only, so results do not depend on the thread count.
int64_t cpu_chunk_len(int64_t tasks_per_chunk, int64_t frames) {
  if (tasks_per_chunk >= 4 || frames < 4 * kChunkFrames) return frames > 0 ? frames : 1;
  return kChunkFrames;
}

// The lanes of one task: `count` lanes from `lane` on, consecutive along the innermost axis.
struct LaneBlock {
  int64_t lane;
  int64_t count;
  LaneCoords coords;
};

struct TaskGrid {
  int64_t inner;      // size of the innermost lane axis
  int64_t per_row;    // tasks per row of the innermost axis
  int64_t per_chunk;  // tasks per frame chunk
  int64_t chunk_len;
  int64_t chunks;

  int64_t block_lanes;

  TaskGrid(const Layout& layout, bool unit_stride) {
    block_lanes = unit_stride ? kBlockLanes : kStridedBlockLanes;
    inner = layout.size[layout.dims - 1];
    per_row = (inner + block_lanes - 1) / block_lanes;
    per_chunk = (layout.lanes / inner) * per_row;
    chunk_len = cpu_chunk_len(per_chunk, layout.frames);
    chunks = (layout.frames + chunk_len - 1) / chunk_len;
  }

  LaneBlock block(const Layout& layout, int64_t task) const {
    const int64_t row = task / per_row;
    const int64_t first = (task % per_row) * block_lanes;
    LaneBlock b;
    b.lane = row * inner + first;
    b.count = std::min(block_lanes, inner - first);
    b.coords = lane_coords(layout, b.lane);
    return b;
  }
};

template <typename acc_t>
void load_momentum(const Layout& layout, const LaneBlock& b, const acc_t* m, acc_t m_value, acc_t* out) {
  if (m == nullptr) {
    for (int64_t j = 0; j < b.count; ++j) out[j] = m_value;
    return;
  }
  const acc_t* base = m + lane_offset(layout, kMomentum, b.coords);
  const int64_t s = inner_stride(layout, kMomentum);
  for (int64_t j = 0; j < b.count; ++j) out[j] = base[j * s];
}

// ---------------------------------------------------------------------------- forward

// One frame for a run of lanes. kUnit: x and y have inner stride 1 (then it vectorizes).
template <typename scalar_t, typename acc_t, bool kUnit, bool kStore>
inline void forward_frame(const scalar_t* __restrict x, scalar_t* __restrict y, acc_t* __restrict state,
                          const acc_t* __restrict m, int64_t n, int64_t xs, int64_t ys, bool reset) {
  if (kUnit) xs = ys = 1;
  if (reset) {
    for (int64_t j = 0; j < n; ++j) {
      const acc_t v = static_cast<acc_t>(x[j * xs]);
      state[j] = v;
      if (kStore) y[j * ys] = static_cast<scalar_t>(v);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const acc_t v = ema_step(m[j], acc_t(1) - m[j], state[j], static_cast<acc_t>(x[j * xs]));
      state[j] = v;
      if (kStore) y[j * ys] = static_cast<scalar_t>(v);
    }
  }
}

template <typename scalar_t, typename acc_t, bool kUnit, bool kStore>
void forward_frames(const Layout& layout, const scalar_t* x, scalar_t* y, const LaneBlock& b, int64_t t_begin,
                    int64_t t_end, bool reset_at_frame0, const acc_t* m, acc_t* state) {
  const scalar_t* xb = x + lane_offset(layout, kX, b.coords);
  scalar_t* yb = kStore ? y + lane_offset(layout, kY, b.coords) : nullptr;
  const int64_t xs = inner_stride(layout, kX), ys = inner_stride(layout, kY);
  const int64_t xf = layout.frame_stride[kX], yf = layout.frame_stride[kY];
  for (int64_t t = t_begin; t < t_end; ++t) {
    forward_frame<scalar_t, acc_t, kUnit, kStore>(xb + t * xf, kStore ? yb + t * yf : nullptr, state, m, b.count, xs,
                                                  ys, t == 0 && reset_at_frame0);
  }
}

template <typename scalar_t>
void forward_cpu(const Layout& layout, const scalar_t* x, scalar_t* y, const at::opmath_type<scalar_t>* m,
                 double m_value, const scalar_t* initial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t inner = layout.size[layout.dims - 1];
  const bool unit = inner == 1 || (inner_stride(layout, kX) == 1 && inner_stride(layout, kY) == 1);
  const TaskGrid grid(layout, unit);
  const bool reset = initial == nullptr;
  const int64_t frames = layout.frames, lanes = layout.lanes;
  std::vector<acc_t> aggregates(grid.chunks > 1 ? (grid.chunks - 1) * lanes : 0);

  // kStore = false: the aggregate pass (zero start, frame 0 still resets); true: the output pass.
  auto run = [&](auto store_tag, int64_t begin, int64_t end) {
    constexpr bool kStore = decltype(store_tag)::value;
    std::vector<acc_t> mbuf(kBlockLanes), state(kBlockLanes);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t q = task / grid.per_chunk;
      const LaneBlock b = grid.block(layout, task % grid.per_chunk);
      load_momentum(layout, b, m, static_cast<acc_t>(m_value), mbuf.data());
      const scalar_t* init = initial ? initial + lane_offset(layout, kInitial, b.coords) : nullptr;
      const int64_t is = inner_stride(layout, kInitial);
      for (int64_t j = 0; j < b.count; ++j) {
        const acc_t start = init ? static_cast<acc_t>(init[j * is]) : acc_t(0);
        if (!kStore || q == 0) {
          state[j] = kStore ? start : acc_t(0);
        } else {
          state[j] = forward_chunk_carry(aggregates.data(), lanes, b.lane + j, q, grid.chunk_len, mbuf[j], start, reset);
        }
      }
      const int64_t t_begin = q * grid.chunk_len, t_end = std::min(frames, t_begin + grid.chunk_len);
      if (unit) {
        forward_frames<scalar_t, acc_t, true, kStore>(layout, x, y, b, t_begin, t_end, reset, mbuf.data(), state.data());
      } else {
        forward_frames<scalar_t, acc_t, false, kStore>(layout, x, y, b, t_begin, t_end, reset, mbuf.data(),
                                                       state.data());
      }
      if (!kStore) {
        for (int64_t j = 0; j < b.count; ++j) aggregates[q * lanes + b.lane + j] = state[j];
      }
    }
  };
  if (grid.chunks > 1) {
    at::parallel_for(0, (grid.chunks - 1) * grid.per_chunk, 1,
                     [&](int64_t begin, int64_t end) { run(std::false_type{}, begin, end); });
  }
  at::parallel_for(0, grid.chunks * grid.per_chunk, 1,
                   [&](int64_t begin, int64_t end) { run(std::true_type{}, begin, end); });
}

// ---------------------------------------------------------------------------- backward

struct BackwardPtrs {
  const void* grad_y;
  const void* x;
  const void* y;
  void* grad_x;
  const void* initial;
  void* grad_initial;
  void* grad_momentum;
};

// a_t = dy_t + m a_{t+1} for a run of lanes, then dx_t.
template <typename scalar_t, typename acc_t, bool kUnit, bool kStore>
inline void backward_frame(const scalar_t* __restrict gy, scalar_t* __restrict gx, acc_t* __restrict a,
                           const acc_t* __restrict m, int64_t n, int64_t gys, int64_t gxs, bool unscaled) {
  if (kUnit) gys = gxs = 1;
  for (int64_t j = 0; j < n; ++j) a[j] = ema_reverse_step(m[j], a[j], static_cast<acc_t>(gy[j * gys]));
  if (!kStore) return;
  if (unscaled) {  // frame 0 without initial: y_0 = x_0
    for (int64_t j = 0; j < n; ++j) gx[j * gxs] = static_cast<scalar_t>(a[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) gx[j * gxs] = static_cast<scalar_t>(ema_input_grad(m[j], acc_t(1) - m[j], a[j]));
  }
}

// dm += a_t (prev_t - x_t), prev_t = y_{t-1} (or the initial state at t = 0).
template <typename scalar_t, typename acc_t, typename prev_t, bool kUnit>
inline void momentum_grad_frame(const prev_t* __restrict prev, const scalar_t* __restrict x,
                                const acc_t* __restrict a, acc_t* __restrict dm, int64_t n, int64_t ps, int64_t xs) {
  if (kUnit) ps = xs = 1;
  for (int64_t j = 0; j < n; ++j) dm[j] += a[j] * (static_cast<acc_t>(prev[j * ps]) - static_cast<acc_t>(x[j * xs]));
}

template <typename scalar_t>
void backward_cpu(const Layout& layout, const BackwardPtrs& p, const at::opmath_type<scalar_t>* m, double m_value,
                  bool want_dm) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* gy = static_cast<const scalar_t*>(p.grad_y);
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* y = static_cast<const scalar_t*>(p.y);
  auto* gx = static_cast<scalar_t*>(p.grad_x);
  const auto* initial = static_cast<const scalar_t*>(p.initial);
  auto* ginit = static_cast<scalar_t*>(p.grad_initial);
  auto* gm = static_cast<acc_t*>(p.grad_momentum);
  const bool has_init = initial != nullptr;

  const int64_t frames = layout.frames, lanes = layout.lanes;
  const int64_t inner = layout.size[layout.dims - 1];
  auto unit_stride = [&](int op) { return inner == 1 || inner_stride(layout, op) == 1; };
  const bool unit = unit_stride(kGradY) && unit_stride(kGradX) && (!want_dm || (unit_stride(kX) && unit_stride(kY)));
  const TaskGrid grid(layout, unit);
  std::vector<acc_t> aggregates(grid.chunks > 1 ? grid.chunks * lanes : 0);
  std::vector<acc_t> dm_partials(grid.chunks > 1 && want_dm ? grid.chunks * lanes : 0);

  auto run = [&](auto store_tag, int64_t begin, int64_t end) {
    constexpr bool kStore = decltype(store_tag)::value;
    std::vector<acc_t> mbuf(kBlockLanes), a(kBlockLanes), dm(kBlockLanes), init(kBlockLanes);
    for (int64_t task = begin; task < end; ++task) {
      // The aggregate pass needs chunks 1 .. chunks-1 (chunk 0's is never folded).
      const int64_t q = task / grid.per_chunk + (kStore ? 0 : 1);
      const LaneBlock b = grid.block(layout, task % grid.per_chunk);
      const int64_t n = b.count;
      load_momentum(layout, b, m, static_cast<acc_t>(m_value), mbuf.data());
      for (int64_t j = 0; j < n; ++j) {
        a[j] = kStore ? backward_chunk_carry(aggregates.data(), lanes, b.lane + j, q, grid.chunks, frames,
                                             grid.chunk_len, mbuf[j])
                      : acc_t(0);
        dm[j] = acc_t(0);
      }
      const int64_t t_begin = q * grid.chunk_len, t_end = std::min(frames, t_begin + grid.chunk_len);
      const scalar_t* gyb = gy + lane_offset(layout, kGradY, b.coords);
      scalar_t* gxb = gx + lane_offset(layout, kGradX, b.coords);
      const scalar_t* xb = want_dm ? x + lane_offset(layout, kX, b.coords) : nullptr;
      const scalar_t* yb = want_dm ? y + lane_offset(layout, kY, b.coords) : nullptr;
      const int64_t gys = inner_stride(layout, kGradY), gxs = inner_stride(layout, kGradX);
      const int64_t xs = inner_stride(layout, kX), ys = inner_stride(layout, kY);
      const bool dm_here = kStore && want_dm;
      if (dm_here && has_init && t_begin == 0) {
        const scalar_t* ib = initial + lane_offset(layout, kInitial, b.coords);
        const int64_t is = inner_stride(layout, kInitial);
        for (int64_t j = 0; j < n; ++j) init[j] = static_cast<acc_t>(ib[j * is]);
      }
      for (int64_t t = t_end - 1; t >= t_begin; --t) {
        const scalar_t* gyt = gyb + t * layout.frame_stride[kGradY];
        scalar_t* gxt = gxb + t * layout.frame_stride[kGradX];
        const bool unscaled = t == 0 && !has_init;
        if (unit) {
          backward_frame<scalar_t, acc_t, true, kStore>(gyt, gxt, a.data(), mbuf.data(), n, gys, gxs, unscaled);
        } else {
          backward_frame<scalar_t, acc_t, false, kStore>(gyt, gxt, a.data(), mbuf.data(), n, gys, gxs, unscaled);
        }
        if (!dm_here || unscaled) continue;  // without initial, y_0 = x_0 does not depend on m
        const scalar_t* xt = xb + t * layout.frame_stride[kX];
        if (t > 0) {
          const scalar_t* yprev = yb + (t - 1) * layout.frame_stride[kY];
          if (unit) {
            momentum_grad_frame<scalar_t, acc_t, scalar_t, true>(yprev, xt, a.data(), dm.data(), n, ys, xs);
          } else {
            momentum_grad_frame<scalar_t, acc_t, scalar_t, false>(yprev, xt, a.data(), dm.data(), n, ys, xs);
          }
        } else {
          momentum_grad_frame<scalar_t, acc_t, acc_t, false>(init.data(), xt, a.data(), dm.data(), n, 1, xs);
        }
      }
      if (!kStore) {
        for (int64_t j = 0; j < n; ++j) aggregates[q * lanes + b.lane + j] = a[j];
        continue;
      }
      if (has_init && t_begin == 0) {
        scalar_t* gib = ginit + lane_offset(layout, kGradInitial, b.coords);
        const int64_t gis = inner_stride(layout, kGradInitial);
        for (int64_t j = 0; j < n; ++j) gib[j * gis] = static_cast<scalar_t>(mbuf[j] * a[j]);
      }
      if (want_dm) {
        if (grid.chunks > 1) {
          for (int64_t j = 0; j < n; ++j) dm_partials[q * lanes + b.lane + j] = dm[j];
        } else {
          acc_t* gmb = gm + lane_offset(layout, kGradMomentum, b.coords);
          const int64_t gms = inner_stride(layout, kGradMomentum);
          for (int64_t j = 0; j < n; ++j) gmb[j * gms] = dm[j];
        }
      }
    }
  };
  if (grid.chunks > 1) {
    at::parallel_for(0, (grid.chunks - 1) * grid.per_chunk, 1,
                     [&](int64_t begin, int64_t end) { run(std::false_type{}, begin, end); });
  }
  at::parallel_for(0, grid.chunks * grid.per_chunk, 1,
                   [&](int64_t begin, int64_t end) { run(std::true_type{}, begin, end); });
  if (want_dm && grid.chunks > 1) {  // chunk partials summed in chunk order: deterministic
    at::parallel_for(0, grid.per_chunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const LaneBlock b = grid.block(layout, task);
        acc_t* gmb = gm + lane_offset(layout, kGradMomentum, b.coords);
        const int64_t gms = inner_stride(layout, kGradMomentum);
        for (int64_t j = 0; j < b.count; ++j) {
          acc_t sum = acc_t(0);
          for (int64_t q = 0; q < grid.chunks; ++q) sum += dm_partials[q * lanes + b.lane + j];
          gmb[j * gms] = sum;
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------- ops

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

at::Tensor temporal_momentum_cpu(const at::Tensor& x, const std::optional<at::Tensor>& momentum, double momentum_value,
                                 int64_t dim, const std::optional<at::Tensor>& initial) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "temporal_momentum (CPU kernel): x must be on the CPU");
  return run_forward(x, momentum, momentum_value, dim, initial, [&](const PreparedCall& call, const Args& args) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_momentum_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      forward_cpu<scalar_t>(call.layout, call.ops[kX].const_data_ptr<scalar_t>(), call.ops[kY].data_ptr<scalar_t>(),
                            static_cast<const acc_t*>(data_or_null(call.ops[kMomentum])), args.momentum_value,
                            static_cast<const scalar_t*>(data_or_null(call.ops[kInitial])));
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_momentum_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& momentum,
    double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial, bool momentum_grad) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "temporal_momentum_backward (CPU kernel): x must be on the CPU");
  // With a float momentum the per-lane dm is still well defined; the front end asks for it only
  // when a momentum tensor requires grad.
  const bool want_dm = momentum_grad;
  return run_backward(
      grad_y, x, y, momentum, momentum_value, dim, initial, want_dm, [&](const PreparedCall& call, const Args& args) {
        BackwardPtrs p{data_or_null(call.ops[kGradY]),
                       data_or_null(call.ops[kX]),
                       data_or_null(call.ops[kY]),
                       call.ops[kGradX].data_ptr(),
                       data_or_null(call.ops[kInitial]),
                       call.ops[kGradInitial].defined() ? call.ops[kGradInitial].data_ptr() : nullptr,
                       call.ops[kGradMomentum].defined() ? call.ops[kGradMomentum].data_ptr() : nullptr};
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_momentum_backward_cpu",
                                        [&] {
                                          using acc_t = at::opmath_type<scalar_t>;
                                          backward_cpu<scalar_t>(
                                              call.layout, p,
                                              static_cast<const acc_t*>(data_or_null(call.ops[kMomentum])),
                                              args.momentum_value, want_dm);
                                        });
      });
}

}  // namespace
}  // namespace momentum
}  // namespace vidmem

TORCH_LIBRARY_IMPL(vidmem_ext, CPU, m) {
  m.impl("temporal_momentum", &vidmem::momentum::temporal_momentum_cpu);
  m.impl("temporal_momentum_backward", &vidmem::momentum::temporal_momentum_backward_cpu);
}
