// Macros shared by the C++ CPU kernels and the CUDA kernels. No torch headers here: nvcc
// compiles the .cu files that include this file on machines whose torch has no CUDA.
#pragma once

// Forced inline on the host: the CPU kernels' vector loops call small functions per element,
// and a call would stop the compiler from vectorising them.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define VIDMEM_ALWAYS_INLINE __forceinline__
#elif defined(__GNUC__)
#define VIDMEM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define VIDMEM_ALWAYS_INLINE inline
#endif

// The same for a lambda (the attribute goes after its parameter list), host code only.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define VIDMEM_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#else
#define VIDMEM_ALWAYS_INLINE_LAMBDA
#endif

// Kept out of line on the host: a large body called from several places of one kernel.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define VIDMEM_NOINLINE __attribute__((noinline))
#else
#define VIDMEM_NOINLINE
#endif

// A function of the math shared by the CPU and the GPU (one definition, the same rounding).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define VIDMEM_HD __host__ __device__ __forceinline__
#else
#define VIDMEM_HD VIDMEM_ALWAYS_INLINE
#endif

// `#pragma unroll` for the device pass only (the host compilers do not all know the pragma).
#if defined(__CUDA_ARCH__)
#define VIDMEM_UNROLL _Pragma("unroll")
#else
#define VIDMEM_UNROLL
#endif
