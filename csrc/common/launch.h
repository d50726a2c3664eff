// The one launch path of every CUDA kernel of both ops. Include from .cu files only.
//
// VIDMEM_CUDA_EMULATION is defined only by the kernel emulation tests (tests/cuda_emulation),
// which run the kernels on emulated CPU threads instead of a GPU; there the emulator also
// reports the launch-limit errors a GPU reports (block size, grid size).
#pragma once

#include <cuda_runtime.h>

namespace vidmem {

template <typename... KernelArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t stream,
                          const Args&... args) {
#ifdef VIDMEM_CUDA_EMULATION
  cuda_emulation::launch(grid, block, [&] { kernel(args...); });
  (void)stream;
#else
  kernel<<<grid, block, 0, stream>>>(args...);
#endif
  return cudaGetLastError();
}

}  // namespace vidmem
