// Temporal momentum on the CPU: forward and backward scans over frames.
//
// Work is split into tasks of consecutive lanes of the innermost lane axis (at::parallel_for
// over tasks; every lane's arithmetic is the same whatever the split, so results do not depend
// on the thread count). Each task runs one micro-kernel of temporal_momentum_cpu_simd.h, on the
// instruction set chosen at run time (AVX-512, AVX2 or portable C++; all give the same bits):
//   - lanes contiguous (e.g. (F, B, N, C) over F, or (B, C, F, H, W) over F, where each
//     (b, c) is a contiguous H*W block per frame): the task's frames outermost, a vector of
//     lanes innermost, so memory streams once, frame after frame;
//   - frames contiguous (frames last): tiles of vector-width lanes x frames, transposed in
//     registers so that the recurrence runs across SIMD lanes;
//   - anything else: scalar loops with runtime strides.
// When the lanes make too few tasks for the frames, the frames are split into chunks as well:
// a first pass stores each chunk's aggregate, a second folds the aggregates in a fixed order
// into each chunk's carry (temporal_momentum.h, shared with the CUDA kernels).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "common/dtype.h"
#include "temporal_momentum/temporal_momentum.h"
#include "temporal_momentum/temporal_momentum_cpu_simd.h"
#include "temporal_momentum/temporal_momentum_cpu_streaming.h"
#include "temporal_momentum/temporal_momentum_host.h"

namespace vidmem {
namespace momentum {
namespace {

// Lanes per task. Unit inner stride: a block of contiguous lanes walks its frames (each frame a
// contiguous run; the block's state stays in L1). Frames contiguous: tiles of vector-width
// lanes x frames, a few tiles per task. Otherwise (no unit stride at all) few lanes per task:
// their independent recurrences interleave and the streams stay few for the TLB and prefetchers.
constexpr int64_t kBlockLanes = 2048;
constexpr int64_t kTileBlockElements = 16384;  // lanes x frames of a frames-contiguous task
constexpr int64_t kMaxTileBlockLanes = 4096;
constexpr int64_t kStridedBlockLanes = 8;
constexpr int64_t kChunkFrames = 1024;  // frames per chunk when lanes alone make too few tasks
constexpr int64_t kMaxVectorLanes = 16;  // the widest vector of any path (buffer padding)
// Outputs are written with non-temporal stores when the call's data would not stay cached for the
// next op anyway (stream_outputs: from a size measured once per process, or
// VIDMEM_EXT_CPU_STREAMING_BYTES): streaming saves reading every output line before it is written.

enum class Path { kUnit, kTiles, kStrided };

// Chunking depends on the shape only, so results do not depend on the thread count.
int64_t cpu_chunk_len(int64_t tasks_per_chunk, int64_t frames) {
  if (tasks_per_chunk >= 4 || frames < 4 * kChunkFrames) return frames > 0 ? frames : 1;
  return kChunkFrames;
}

int64_t block_lanes_for(Path path, int64_t inner, int64_t lanes, int64_t frames) {
  // Few frames per lane: more lanes per task, so that a task still moves tens of kilobytes.
  // Tiles: at least two row groups of 16. The tile kernels take up to four a step, but at least
  // 64 lanes a task ran slower on 1536 x 4096 (forward, 2 threads, time over clone, the two in
  // turn in one process: bf16 2.72x against 2.31x, fp16 3.05x against 2.49x).
  if (path == Path::kTiles) {
    const int64_t lanes = (kTileBlockElements / std::max<int64_t>(frames, 1) + 31) / 32 * 32;
    return std::min(kMaxTileBlockLanes, std::max<int64_t>(32, lanes));
  }
  if (path == Path::kStrided) return kStridedBlockLanes;
  // Split a row evenly into blocks of at most kBlockLanes, each a whole number of cache lines
  // (of fp32), so that neighbouring tasks rarely share a line; and into at least kMinTasks tasks
  // in all while blocks keep kMinBlockLanes, so that threads get even shares (from the shape
  // alone: the chunking below depends on it and must not depend on the thread count).
  constexpr int64_t kMinTasks = 16, kMinBlockLanes = 64;
  const int64_t rows = std::max<int64_t>(1, lanes / std::max<int64_t>(inner, 1));
  int64_t per_row = (inner + kBlockLanes - 1) / kBlockLanes;
  const int64_t for_tasks = std::min((kMinTasks + rows - 1) / rows, (inner + kMinBlockLanes - 1) / kMinBlockLanes);
  per_row = std::max(per_row, for_tasks);
  const int64_t even = (inner + per_row - 1) / per_row;
  return std::min(kBlockLanes, (even + 15) / 16 * 16);
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

  TaskGrid(const Layout& layout, Path path) {
    inner = layout.size[layout.dims - 1];
    block_lanes = block_lanes_for(path, inner, layout.lanes, layout.frames);
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

// Tasks per thread at least: a call of a few thousand elements is not worth waking a thread.
int64_t task_grain(const TaskGrid& grid, int64_t frames) {
  constexpr int64_t kMinElementsPerThread = 32768;
  const int64_t per_task = std::max<int64_t>(1, grid.block_lanes * std::min(frames, grid.chunk_len));
  return std::max<int64_t>(1, kMinElementsPerThread / per_task);
}

// Per-lane momentum of a block into `out` (padded with zeros to a whole vector); returns
// whether some lane is exactly 0 or 1 (then the kernels take the exact-endpoint step). With a
// float momentum the kernels take m_value itself, and `out` is filled only when the caller reads
// it (chunk carries, the initial state's gradient): a short call would spend a sixth of its
// stores on it.
template <typename acc_t>
bool load_momentum(const Layout& layout, const LaneBlock& b, const acc_t* m, acc_t m_value, acc_t* out,
                   bool float_values_read) {
  bool endpoint = false;
  if (m == nullptr) {
    if (float_values_read) std::fill(out, out + b.count, m_value);
    endpoint = m_value == acc_t(0) || m_value == acc_t(1);
  } else {
    const acc_t* base = m + lane_offset(layout, kMomentum, b.coords);
    const int64_t s = inner_stride(layout, kMomentum);
    for (int64_t j = 0; j < b.count; ++j) {
      out[j] = base[j * s];
      endpoint |= out[j] == acc_t(0) || out[j] == acc_t(1);
    }
  }
  std::fill(out + b.count, out + b.count + kMaxVectorLanes, acc_t(0));
  return endpoint;
}

bool unit_inner(const Layout& layout, int op) {
  return layout.size[layout.dims - 1] == 1 || inner_stride(layout, op) == 1;
}

// ---------------------------------------------------------------------------- strided fallback

// Neither the lanes nor the frames are contiguous: scalar loops with runtime strides (the same
// operations per element as the vector kernels, so the same bits).
template <typename scalar_t, typename acc_t>
void forward_strided(const cpu::ForwardJob<scalar_t>& job) {
  for (int64_t t = job.t_begin; t < job.t_end; ++t) {
    for (int64_t j = 0; j < job.lanes; ++j) {
      const acc_t v = static_cast<acc_t>(job.x[t * job.x_frame_stride + j * job.x_lane_stride]);
      const acc_t m = job.m ? job.m[j] : job.m_value;
      job.state[j] = (t == 0 && job.reset_at_frame0) ? v : ema_step(m, acc_t(1) - m, job.state[j], v);
      if (job.y) job.y[t * job.y_frame_stride + j * job.y_lane_stride] = static_cast<scalar_t>(job.state[j]);
    }
  }
}

template <typename scalar_t, typename acc_t>
void backward_strided(const cpu::BackwardJob<scalar_t>& job) {
  for (int64_t t = job.t_end - 1; t >= job.t_begin; --t) {
    const bool unscaled = t == 0 && !job.has_initial;
    for (int64_t j = 0; j < job.lanes; ++j) {
      const acc_t m = job.m ? job.m[j] : job.m_value;
      const acc_t gy = static_cast<acc_t>(job.grad_y[t * job.grad_y_frame_stride + j * job.grad_y_lane_stride]);
      const acc_t a = ema_reverse_step(m, job.a[j], gy);
      job.a[j] = a;
      if (!job.grad_x) continue;
      job.grad_x[t * job.grad_x_frame_stride + j * job.grad_x_lane_stride] =
          static_cast<scalar_t>(unscaled ? a : ema_input_grad(m, acc_t(1) - m, a));
      if (!job.dm || unscaled) continue;  // without initial, y_0 = x_0 does not depend on m
      const acc_t xv = static_cast<acc_t>(job.x[t * job.x_frame_stride + j * job.x_lane_stride]);
      const acc_t prev =
          t > 0 ? static_cast<acc_t>(job.y[(t - 1) * job.y_frame_stride + j * job.y_lane_stride]) : job.initial[j];
      job.dm[j] += a * (prev - xv);
    }
  }
}

// ---------------------------------------------------------------------------- forward

template <typename scalar_t>
void forward_cpu(const Layout& layout, const scalar_t* x, scalar_t* y, const acc_type<scalar_t>* m,
                 double m_value, const scalar_t* initial) {
  using acc_t = acc_type<scalar_t>;
  const cpu::KernelTable<scalar_t>& table = cpu::kernel_table<scalar_t>(cpu::selected_isa());
  const Path path = unit_inner(layout, kX) && unit_inner(layout, kY)                    ? Path::kUnit
                    : layout.frame_stride[kX] == 1 && layout.frame_stride[kY] == 1 ? Path::kTiles
                                                                                       : Path::kStrided;
  const TaskGrid grid(layout, path);
  const bool reset = initial == nullptr;
  // x read, y written
  const bool streaming = stream_outputs(2 * layout.frames * layout.lanes * int64_t(sizeof(scalar_t)));
  const int64_t frames = layout.frames, lanes = layout.lanes;
  std::vector<acc_t> aggregates(grid.chunks > 1 ? (grid.chunks - 1) * lanes : 0);

  // kStore = false: the aggregate pass (zero start, frame 0 still resets); true: the output pass.
  auto run = [&](auto store_tag, int64_t begin, int64_t end) {
    constexpr bool kStore = decltype(store_tag)::value;
    std::vector<acc_t> mbuf(grid.block_lanes + kMaxVectorLanes), state(grid.block_lanes + kMaxVectorLanes);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t q = task / grid.per_chunk;
      const LaneBlock b = grid.block(layout, task % grid.per_chunk);
      const bool endpoint = load_momentum(layout, b, m, static_cast<acc_t>(m_value), mbuf.data(), grid.chunks > 1);
      const scalar_t* init = initial ? initial + lane_offset(layout, kInitial, b.coords) : nullptr;
      const int64_t is = inner_stride(layout, kInitial);
      if (q > 0 || !reset) {  // else the kernel sets the state from frame 0
        std::fill(state.begin(), state.begin() + b.count + kMaxVectorLanes, zero_state<acc_t>());
      }
      if (kStore && (init != nullptr || q > 0)) {  // else a zero start (frame 0 resets anyway)
        for (int64_t j = 0; j < b.count; ++j) {
          const acc_t start = init ? static_cast<acc_t>(init[j * is]) : zero_state<acc_t>();
          state[j] = q == 0 ? start
                            : forward_chunk_carry(aggregates.data(), lanes, b.lane + j, q, grid.chunk_len, mbuf[j],
                                                  start, reset);
        }
      }
      cpu::ForwardJob<scalar_t> job;
      job.x = x + lane_offset(layout, kX, b.coords);
      job.y = kStore ? y + lane_offset(layout, kY, b.coords) : nullptr;
      job.lanes = b.count;
      job.x_lane_stride = inner_stride(layout, kX);
      job.y_lane_stride = inner_stride(layout, kY);
      job.x_frame_stride = layout.frame_stride[kX];
      job.y_frame_stride = layout.frame_stride[kY];
      job.t_begin = q * grid.chunk_len;
      job.t_end = std::min(frames, job.t_begin + grid.chunk_len);
      job.reset_at_frame0 = reset;
      job.non_temporal = streaming;
      job.m = m ? mbuf.data() : nullptr;
      job.m_value = static_cast<acc_t>(m_value);
      job.state = state.data();
      if (path == Path::kUnit) {
        table.forward_unit[m != nullptr][endpoint](job);
      } else if (path == Path::kTiles) {
        table.forward_tiles[m != nullptr][endpoint](job);
      } else {
        forward_strided<scalar_t, acc_t>(job);
      }
      if (!kStore) {
        for (int64_t j = 0; j < b.count; ++j) aggregates[q * lanes + b.lane + j] = state[j];
      }
    }
    if (kStore && streaming) cpu::finish_streaming_stores();
  };
  if (grid.chunks > 1) {
    at::parallel_for(0, (grid.chunks - 1) * grid.per_chunk, task_grain(grid, frames),
                     [&](int64_t begin, int64_t end) { run(std::false_type{}, begin, end); });
  }
  at::parallel_for(0, grid.chunks * grid.per_chunk, task_grain(grid, frames),
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

template <typename scalar_t>
void backward_cpu(const Layout& layout, const BackwardPtrs& p, const acc_type<scalar_t>* m, double m_value,
                  bool momentum_grad) {
  using acc_t = acc_type<scalar_t>;
  const auto* gy = static_cast<const scalar_t*>(p.grad_y);
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* y = static_cast<const scalar_t*>(p.y);
  auto* gx = static_cast<scalar_t*>(p.grad_x);
  const auto* initial = static_cast<const scalar_t*>(p.initial);
  auto* ginit = static_cast<scalar_t*>(p.grad_initial);
  auto* gm = static_cast<acc_t*>(p.grad_momentum);
  const bool has_init = initial != nullptr;
  const cpu::KernelTable<scalar_t>& table = cpu::kernel_table<scalar_t>(cpu::selected_isa());

  const int64_t frames = layout.frames, lanes = layout.lanes;
  const bool unit = unit_inner(layout, kGradY) && unit_inner(layout, kGradX) &&
                    (!momentum_grad || (unit_inner(layout, kX) && unit_inner(layout, kY)));
  const bool tiles = layout.frame_stride[kGradY] == 1 && layout.frame_stride[kGradX] == 1 &&
                     (!momentum_grad || (layout.frame_stride[kX] == 1 && layout.frame_stride[kY] == 1));
  const Path path = unit ? Path::kUnit : tiles ? Path::kTiles : Path::kStrided;
  const TaskGrid grid(layout, path);
  // grad_y read, grad_x written, and x and y read for dm
  const bool streaming = stream_outputs((momentum_grad ? 4 : 2) * frames * lanes * int64_t(sizeof(scalar_t)));
  std::vector<acc_t> aggregates(grid.chunks > 1 ? grid.chunks * lanes : 0);
  std::vector<acc_t> dm_partials(grid.chunks > 1 && momentum_grad ? grid.chunks * lanes : 0);

  auto run = [&](auto store_tag, int64_t begin, int64_t end) {
    constexpr bool kStore = decltype(store_tag)::value;
    const int64_t padded = grid.block_lanes + kMaxVectorLanes;
    std::vector<acc_t> mbuf(padded), a(padded), dm(padded), init(padded);
    for (int64_t task = begin; task < end; ++task) {
      // The aggregate pass needs chunks 1 .. chunks-1 (chunk 0's is never folded).
      const int64_t q = task / grid.per_chunk + (kStore ? 0 : 1);
      const LaneBlock b = grid.block(layout, task % grid.per_chunk);
      const int64_t n = b.count;
      const bool endpoint =
          load_momentum(layout, b, m, static_cast<acc_t>(m_value), mbuf.data(), grid.chunks > 1 || has_init);
      const int64_t used = n + kMaxVectorLanes;
      std::fill(a.begin(), a.begin() + used, acc_t(0));
      if (momentum_grad) {
        std::fill(dm.begin(), dm.begin() + used, acc_t(0));
        std::fill(init.begin(), init.begin() + used, acc_t(0));
      }
      if (kStore && q < grid.chunks - 1) {  // the last chunk starts from a zero a
        for (int64_t j = 0; j < n; ++j) {
          a[j] = backward_chunk_carry(aggregates.data(), lanes, b.lane + j, q, grid.chunks, frames, grid.chunk_len,
                                      mbuf[j]);
        }
      }
      const int64_t t_begin = q * grid.chunk_len, t_end = std::min(frames, t_begin + grid.chunk_len);
      const bool dm_here = kStore && momentum_grad;
      if (dm_here && has_init && t_begin == 0) {
        const scalar_t* ib = initial + lane_offset(layout, kInitial, b.coords);
        const int64_t is = inner_stride(layout, kInitial);
        for (int64_t j = 0; j < n; ++j) init[j] = static_cast<acc_t>(ib[j * is]);
      }
      cpu::BackwardJob<scalar_t> job;
      job.grad_y = gy + lane_offset(layout, kGradY, b.coords);
      job.grad_x = kStore ? gx + lane_offset(layout, kGradX, b.coords) : nullptr;
      job.x = dm_here ? x + lane_offset(layout, kX, b.coords) : nullptr;
      job.y = dm_here ? y + lane_offset(layout, kY, b.coords) : nullptr;
      job.lanes = n;
      job.grad_y_lane_stride = inner_stride(layout, kGradY);
      job.grad_x_lane_stride = inner_stride(layout, kGradX);
      job.x_lane_stride = inner_stride(layout, kX);
      job.y_lane_stride = inner_stride(layout, kY);
      job.grad_y_frame_stride = layout.frame_stride[kGradY];
      job.grad_x_frame_stride = layout.frame_stride[kGradX];
      job.x_frame_stride = layout.frame_stride[kX];
      job.y_frame_stride = layout.frame_stride[kY];
      job.t_begin = t_begin;
      job.t_end = t_end;
      job.has_initial = has_init;
      job.non_temporal = streaming;
      job.m = m ? mbuf.data() : nullptr;
      job.m_value = static_cast<acc_t>(m_value);
      job.initial = init.data();
      job.a = a.data();
      job.dm = dm_here ? dm.data() : nullptr;
      if (path == Path::kUnit) {
        table.backward_unit[m != nullptr][dm_here][endpoint](job);
      } else if (path == Path::kTiles) {
        table.backward_tiles[m != nullptr][dm_here][endpoint](job);
      } else {
        backward_strided<scalar_t, acc_t>(job);
      }
      if (!kStore) {
        for (int64_t j = 0; j < n; ++j) aggregates[q * lanes + b.lane + j] = a[j];
        continue;
      }
      if (has_init && t_begin == 0) {
        scalar_t* gib = ginit + lane_offset(layout, kGradInitial, b.coords);
        const int64_t gis = inner_stride(layout, kGradInitial);
        for (int64_t j = 0; j < n; ++j) gib[j * gis] = static_cast<scalar_t>(initial_grad(mbuf[j], a[j]));
      }
      if (momentum_grad) {
        if (grid.chunks > 1) {
          for (int64_t j = 0; j < n; ++j) dm_partials[q * lanes + b.lane + j] = dm[j];
        } else {
          acc_t* gmb = gm + lane_offset(layout, kGradMomentum, b.coords);
          const int64_t gms = inner_stride(layout, kGradMomentum);
          for (int64_t j = 0; j < n; ++j) gmb[j * gms] = dm[j];
        }
      }
    }
    if (kStore && streaming) cpu::finish_streaming_stores();
  };
  if (grid.chunks > 1) {
    at::parallel_for(0, (grid.chunks - 1) * grid.per_chunk, task_grain(grid, frames),
                     [&](int64_t begin, int64_t end) { run(std::false_type{}, begin, end); });
  }
  at::parallel_for(0, grid.chunks * grid.per_chunk, task_grain(grid, frames),
                   [&](int64_t begin, int64_t end) { run(std::true_type{}, begin, end); });
  if (momentum_grad && grid.chunks > 1) {  // chunk partials summed in chunk order: deterministic
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

at::Tensor temporal_momentum_cpu(const at::Tensor& x, const std::optional<at::Tensor>& momentum, double momentum_value,
                                 int64_t dim, const std::optional<at::Tensor>& initial) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "temporal_momentum (CPU kernel): x must be on the CPU");
  return run_forward(x, momentum, momentum_value, dim, initial, [&](const PreparedCall& call, const Args& args) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_momentum_cpu", [&] {
      using acc_t = acc_type<scalar_t>;
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
  return run_backward(
      grad_y, x, y, momentum, momentum_value, dim, initial, momentum_grad,
      [&](const PreparedCall& call, const Args& args) {
        BackwardPtrs p{data_or_null(call.ops[kGradY]),
                       data_or_null(call.ops[kX]),
                       data_or_null(call.ops[kY]),
                       call.ops[kGradX].data_ptr(),
                       data_or_null(call.ops[kInitial]),
                       mutable_data_or_null(call.ops[kGradInitial]),
                       mutable_data_or_null(call.ops[kGradMomentum])};
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_momentum_backward_cpu",
                                        [&] {
                                          using acc_t = acc_type<scalar_t>;
                                          backward_cpu<scalar_t>(
                                              call.layout, p,
                                              static_cast<const acc_t*>(data_or_null(call.ops[kMomentum])),
                                              args.momentum_value, momentum_grad);
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
