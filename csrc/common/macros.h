// Macros shared by the C++ CPU kernels and the CUDA kernels.
// No torch headers here: nvcc compiles the .cu files that include this file
// on machines whose torch has no CUDA.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VIDMEM_HD __host__ __device__ __forceinline__
#define VIDMEM_DEVICE_CODE 1
#else
#define VIDMEM_HD inline
#endif
