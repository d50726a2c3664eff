// Launchers of the temporal momentum CUDA kernels (csrc/temporal_momentum/temporal_momentum.cu), called by
// the torch glue (csrc/temporal_momentum/temporal_momentum_glue.cpp). Plain pointers, the Layout of
// temporal_momentum.h, a dtype enum and a stream: no torch types.
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "temporal_momentum/temporal_momentum.h"

namespace vidmem {
namespace momentum {

enum class DType : int { kFloat16, kBFloat16, kFloat32, kFloat64 };

// Data pointers indexed by Operand (nullptr where a call does not use one). Momentum and
// grad_momentum are in the accumulation type (float, or double for float64 tensors).
struct CudaOperands {
  void* ptr[kNumOperands];
};

enum class CudaKernel : int {
  kLanes,          // regime (a): one thread per lane vector walks every frame
  kLaneChunks,     // regime (b), frame axis strided: thread rows split the frames, chunks split them further
  kFrameSegments,  // regime (b), frame axis contiguous: a block scans one lane's frames, chunks split them
};

struct CudaPlan {
  CudaKernel kernel;
  int vector;         // elements per memory access: 16 bytes' worth, or 1 when alignment does not allow it
  int64_t chunk_len;  // frames per chunk
  int64_t chunks;     // > 1: an aggregate pass runs first and the carries fold the aggregates in order
  size_t workspace_bytes;
};

// Chooses the kernel from the layout, the alignment of the pointers and the device's SM count.
cudaError_t plan_cuda(const Layout& layout, DType dtype, const CudaOperands& ops, bool backward, bool want_dm,
                      int device, CudaPlan* plan);

// y from x (ops kX, kY, optional kMomentum, kInitial). `workspace` holds plan.workspace_bytes.
cudaError_t forward_cuda(const CudaPlan& plan, const Layout& layout, DType dtype, const CudaOperands& ops,
                         double momentum_value, void* workspace, cudaStream_t stream);

// grad_x (and grad_initial, grad_momentum per lane when asked) from grad_y; x and y are read
// only for grad_momentum.
cudaError_t backward_cuda(const CudaPlan& plan, const Layout& layout, DType dtype, const CudaOperands& ops,
                          double momentum_value, bool want_dm, void* workspace, cudaStream_t stream);

}  // namespace momentum
}  // namespace vidmem
