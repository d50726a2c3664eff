// Temporal momentum CUDA kernels: forward and backward scans over frames. The kernels are in
// temporal_momentum_lanes.cuh and temporal_momentum_frames.cuh; this file plans a call (which
// kernel, vector width, chunks) and launches them.
//
// When lanes are too few to fill the GPU, the frames are also split into chunks: a first launch
// stores each chunk's aggregate and the second folds the aggregates before (after, backward) a
// chunk in a fixed order (temporal_momentum.h). Nothing is reduced with atomics, so results are
// bitwise reproducible. All index math is 64-bit; every kernel loops over its work units with a
// grid stride.
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/cuda_check.h"
#include "common/dtype.h"
#include "common/launch.h"
#include "common/static_switch.h"
#include "temporal_momentum/temporal_momentum.h"
#include "temporal_momentum/temporal_momentum_cuda.h"
#include "temporal_momentum/temporal_momentum_device.cuh"
#include "temporal_momentum/temporal_momentum_frames.cuh"
#include "temporal_momentum/temporal_momentum_lanes.cuh"

namespace vidmem {
namespace momentum {
namespace {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits `frames` into chunks of a multiple of `tile` frames so that about `want_units` units
// exist when each chunk is one unit per `units_per_chunk`.
void choose_chunks(int64_t frames, int64_t tile, int64_t units_per_chunk, int64_t want_units, CudaPlan* plan) {
  const int64_t want_chunks = units_per_chunk >= want_units ? 1 : ceil_div(want_units, units_per_chunk);
  int64_t chunk_len = ceil_div(ceil_div(frames, want_chunks), tile) * tile;
  if (chunk_len < tile) chunk_len = tile;
  plan->chunk_len = chunk_len;
  plan->chunks = ceil_div(frames, chunk_len);
}

// Chooses the kernel from the layout, the alignment of the operands read or written frame by
// frame (`full_ops`, indexed by Operand) and the device's SM count.
cudaError_t choose_plan(const Layout& layout, DType dtype, const void* const* full_ptrs, const int* full_ops,
                        int n_full, bool backward, bool momentum_grad, int device, CudaPlan* plan) {
  int sms = 0;
  VIDMEM_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (sms < 1) sms = 1;
  int max_grid_x = 0;
  VIDMEM_CUDA_TRY(cudaDeviceGetAttribute(&max_grid_x, cudaDevAttrMaxGridDimX, device));

  const int64_t vec = static_cast<int64_t>(16 / element_size(dtype));
  const int64_t frames = layout.frames, lanes = layout.lanes;
  const int64_t inner = layout.size[layout.dims - 1];

  bool frames_contiguous = frames > 1;
  for (int i = 0; i < n_full; ++i) frames_contiguous &= layout.frame_stride[full_ops[i]] == 1;

  *plan = CudaPlan{};
  plan->max_grid = max_grid_x < 1 ? 1 : (max_grid_x < kMaxGrid ? max_grid_x : kMaxGrid);
  plan->chunk_len = frames > 0 ? frames : 1;
  plan->chunks = 1;
  // A block of kThreads per lane pays off for long frame runs, or when lanes are too few for a
  // thread each.
  if (frames_contiguous && (frames >= 512 || lanes < int64_t(sms) * 256)) {
    bool vector_ok = true;  // whole 16-byte vectors of frames, each lane's run aligned
    for (int i = 0; i < n_full; ++i) {
      const int op = full_ops[i];
      vector_ok &= aligned16(full_ptrs[i]);
      for (int d = 0; d < layout.dims; ++d) vector_ok &= layout.stride[op][d] % vec == 0;
    }
    plan->kernel = CudaKernel::kFrameSegments;
    plan->vector = vector_ok ? static_cast<int>(vec) : 1;
    choose_chunks(frames, int64_t(kThreads) * plan->vector, lanes, int64_t(sms) * 8, plan);
  } else {
    bool vector_ok = inner % vec == 0;  // 16 bytes of adjacent lanes, aligned in every frame
    for (int i = 0; i < n_full; ++i) {
      const int op = full_ops[i];
      vector_ok &= aligned16(full_ptrs[i]) && inner_stride(layout, op) == 1 && layout.frame_stride[op] % vec == 0;
      for (int d = 0; d + 1 < layout.dims; ++d) vector_ok &= layout.stride[op][d] % vec == 0;
    }
    plan->vector = vector_ok ? static_cast<int>(vec) : 1;
    const int64_t lanevecs = lanes / plan->vector;
    const int64_t rows_tile = int64_t(kChunkRows) * lane_frames(plan->vector, backward);
    if (lanevecs >= int64_t(sms) * 512 || frames <= rows_tile) {
      plan->kernel = CudaKernel::kLanes;
    } else {
      plan->kernel = CudaKernel::kLaneChunks;
      const int64_t groups = ceil_div(lanevecs, kThreads / kChunkRows);
      choose_chunks(frames, rows_tile, groups, int64_t(sms) * 8, plan);
    }
  }
  if (plan->chunks > 1) {
    const size_t per_buffer = static_cast<size_t>(plan->chunks * lanes) * element_size(acc_dtype(dtype));
    plan->workspace_bytes = per_buffer * ((backward && momentum_grad) ? 2 : 1);
  }
  return cudaSuccess;
}

// Blocks for `units` work units, at most the plan's max_grid (the kernels loop over the rest with a
// grid stride).
dim3 grid_for(const CudaPlan& plan, int64_t units) {
  return dim3(static_cast<unsigned>(units < 1 ? 1 : (units < plan.max_grid ? units : plan.max_grid)));
}

// Work units of the lane kernels: column groups x chunks.
int64_t lane_units(const CudaPlan& plan, const Layout& layout, int rows) {
  const int64_t cols = kThreads / rows;
  return ceil_div(layout.lanes / plan.vector, cols) * plan.chunks;
}

template <typename scalar_t, int V>
cudaError_t launch_forward(const ForwardParams& p, cudaStream_t stream) {
  constexpr int L = lane_frames(V, false);
  const CudaPlan& plan = p.plan;
  const bool two_pass = plan.chunks > 1;  // the aggregate pass first
  switch (plan.kernel) {
    case CudaKernel::kLanes:
      return launch_kernel(forward_lanes_kernel<scalar_t, V, 1, L, false>, grid_for(plan, lane_units(plan, p.layout, 1)),
                           kThreads, stream, p);
    case CudaKernel::kLaneChunks: {
      const dim3 grid = grid_for(plan, lane_units(plan, p.layout, kChunkRows));
      if (two_pass) {
        VIDMEM_CUDA_TRY(
            launch_kernel(forward_lanes_kernel<scalar_t, V, kChunkRows, L, true>, grid, kThreads, stream, p));
      }
      return launch_kernel(forward_lanes_kernel<scalar_t, V, kChunkRows, L, false>, grid, kThreads, stream, p);
    }
    case CudaKernel::kFrameSegments: {
      const dim3 grid = grid_for(plan, p.layout.lanes * plan.chunks);
      if (two_pass) {
        VIDMEM_CUDA_TRY(launch_kernel(forward_frames_kernel<scalar_t, V, true>, grid, kThreads, stream, p));
      }
      return launch_kernel(forward_frames_kernel<scalar_t, V, false>, grid, kThreads, stream, p);
    }
  }
  return cudaErrorInvalidValue;
}

template <typename scalar_t, int V>
cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  constexpr int L = lane_frames(V, true);
  const CudaPlan& plan = p.plan;
  const Layout& lay = p.layout;
  const bool two_pass = plan.chunks > 1;
  switch (plan.kernel) {
    case CudaKernel::kLanes:
      VIDMEM_CUDA_TRY(launch_kernel(backward_lanes_kernel<scalar_t, V, 1, L, false>,
                                    grid_for(plan, lane_units(plan, lay, 1)), kThreads, stream, p));
      break;
    case CudaKernel::kLaneChunks: {
      const dim3 grid = grid_for(plan, lane_units(plan, lay, kChunkRows));
      if (two_pass) {
        VIDMEM_CUDA_TRY(
            launch_kernel(backward_lanes_kernel<scalar_t, V, kChunkRows, L, true>, grid, kThreads, stream, p));
      }
      VIDMEM_CUDA_TRY(
          launch_kernel(backward_lanes_kernel<scalar_t, V, kChunkRows, L, false>, grid, kThreads, stream, p));
      break;
    }
    case CudaKernel::kFrameSegments: {
      const dim3 grid = grid_for(plan, lay.lanes * plan.chunks);
      if (two_pass) {
        VIDMEM_CUDA_TRY(launch_kernel(backward_frames_kernel<scalar_t, V, true>, grid, kThreads, stream, p));
      }
      VIDMEM_CUDA_TRY(launch_kernel(backward_frames_kernel<scalar_t, V, false>, grid, kThreads, stream, p));
      break;
    }
    default:
      return cudaErrorInvalidValue;
  }
  if (!(p.momentum_grad && two_pass)) return cudaSuccess;
  // The momentum-gradient partials follow the aggregates in the workspace.
  const acc_t* partials = static_cast<const acc_t*>(p.workspace) + plan.chunks * lay.lanes;
  return launch_kernel(sum_chunk_partials_kernel<acc_t>, grid_for(plan, ceil_div(lay.lanes, kThreads)), kThreads, stream,
                       lay, partials, plan.chunks, static_cast<acc_t*>(p.grad_momentum));
}

}  // namespace

cudaError_t plan_forward(ForwardParams& params, DType dtype, int device) {
  const void* const ptrs[] = {params.x, params.y};
  const int ops[] = {kX, kY};
  return choose_plan(params.layout, dtype, ptrs, ops, 2, false, false, device, &params.plan);
}

cudaError_t plan_backward(BackwardParams& params, DType dtype, int device) {
  const void* const ptrs[] = {params.grad_y, params.grad_x, params.x, params.y};
  const int ops[] = {kGradY, kGradX, kX, kY};  // x and y only for the momentum gradient
  return choose_plan(params.layout, dtype, ptrs, ops, params.momentum_grad ? 4 : 2, true, params.momentum_grad, device,
              &params.plan);
}

cudaError_t forward_cuda(const ForwardParams& params, DType dtype, cudaStream_t stream) {
  return DTYPE_SWITCH(dtype, __half, __nv_bfloat16, scalar_t, [&] {
    constexpr int kVector = 16 / sizeof(scalar_t);
    return params.plan.vector == kVector ? launch_forward<scalar_t, kVector>(params, stream)
                                         : launch_forward<scalar_t, 1>(params, stream);
  });
}

cudaError_t backward_cuda(const BackwardParams& params, DType dtype, cudaStream_t stream) {
  return DTYPE_SWITCH(dtype, __half, __nv_bfloat16, scalar_t, [&] {
    constexpr int kVector = 16 / sizeof(scalar_t);
    return params.plan.vector == kVector ? launch_backward<scalar_t, kVector>(params, stream)
                                         : launch_backward<scalar_t, 1>(params, stream);
  });
}

}  // namespace momentum
}  // namespace vidmem
