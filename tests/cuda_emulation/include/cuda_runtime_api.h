// Stand-in for the CUDA runtime API, for running the project's CUDA kernels on the CPU in
// tests (see ../README.md). Only what csrc/ uses is here.
#pragma once

#include <cstdint>

enum cudaError { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 4 };
typedef enum cudaError cudaError_t;
typedef struct CUstream_st* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

namespace cuda_emulation {
struct Device {
  int sm_count = 132;
  cudaError_t last_error = cudaSuccess;
};
inline Device& device() {
  static Device d;
  return d;
}
}  // namespace cuda_emulation

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = cuda_emulation::device().sm_count;
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emulation::device().last_error;
  cuda_emulation::device().last_error = cudaSuccess;
  return e;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : (e == cudaErrorInvalidValue ? "invalid argument" : "emulated launch failure");
}
