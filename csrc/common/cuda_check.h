// One CUDA status check. No torch headers: the launchers in the .cu files return the first
// failed status (VIDMEM_CUDA_TRY); the glue turns a failed status into an exception that names
// the op and what failed (a RuntimeError in Python).
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#define VIDMEM_CUDA_TRY(...)                                         \
  do {                                                               \
    const cudaError_t vidmem_cuda_status_ = (__VA_ARGS__);           \
    if (vidmem_cuda_status_ != cudaSuccess) return vidmem_cuda_status_; \
  } while (0)

namespace vidmem {

inline void check_cuda(cudaError_t status, const char* op, const char* what) {
  if (status == cudaSuccess) return;
  throw std::runtime_error(std::string(op) + ": " + what + " failed: " + cudaGetErrorString(status));
}

}  // namespace vidmem
