// Stand-in for the CUDA runtime API, for running the project's CUDA kernels on the CPU in
// tests (see ../README.md). Only what csrc/ uses is here, plus the emulator's settings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchFailure = 4,
  cudaErrorInvalidConfiguration = 9,
};
typedef enum cudaError cudaError_t;
typedef struct CUstream_st* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMaxGridDimX = 5, cudaDevAttrMaxGridDimY = 6, cudaDevAttrMultiProcessorCount = 16 };

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace cuda_emulation {

// The order in which the blocks of a grid run (one after another).
enum class BlockOrder : int { kInOrder = 0, kReversed = 1, kShuffled = 2 };

struct Device {
  int sm_count = 132;
  int max_grid_x = 0x7fffffff;  // the real limits; tests lower them to make the kernels' grid-stride
  int max_grid_y = 65535;       // loops run more than once
  BlockOrder block_order = BlockOrder::kInOrder;
  cudaError_t last_error = cudaSuccess;
  std::string last_message;  // what went wrong in the last failed launch
};
inline Device& device() {
  static Device d;
  return d;
}

}  // namespace cuda_emulation

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = cuda_emulation::device().sm_count;
      return cudaSuccess;
    case cudaDevAttrMaxGridDimX:
      *value = cuda_emulation::device().max_grid_x;
      return cudaSuccess;
    case cudaDevAttrMaxGridDimY:
      *value = cuda_emulation::device().max_grid_y;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emulation::device().last_error;
  cuda_emulation::device().last_error = cudaSuccess;
  return e;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    default:
      return cuda_emulation::device().last_message.c_str();
  }
}

// Streams are not emulated: work runs at once, in call order.
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t /*stream*/ = nullptr) {
  if (p == nullptr && bytes > 0) return cudaErrorInvalidValue;
  if (bytes > 0) std::memset(p, value, bytes);
  return cudaSuccess;
}
