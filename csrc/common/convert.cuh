// Device conversions between a storage type and its accumulation type (common/dtype.h), shared
// by the CUDA kernels of both ops. fp16 and bf16 round to nearest even, as the CPU kernels do.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/dtype.h"

namespace vidmem {

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_type<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
// NaN gets the bits the CPU kernels (and torch's scalar conversions) give: 0x7E00 with the sign for
// fp16, 0x7FC0 for bf16. CUDA's conversions give 0x7FFF either way.
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  if (isnan(v)) return __ushort_as_half(static_cast<unsigned short>(signbit(v) ? 0xFE00u : 0x7E00u));
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  if (isnan(v)) return __ushort_as_bfloat16(static_cast<unsigned short>(0x7FC0u));
  return __float2bfloat16_rn(v);
}

}  // namespace vidmem
