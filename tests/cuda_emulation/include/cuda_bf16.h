// Stand-in for cuda_bf16.h in the kernel emulation: c10::BFloat16 rounds to nearest even like
// the CUDA conversions.
#pragma once

#include <c10/util/BFloat16.h>

using __nv_bfloat16 = c10::BFloat16;
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return __nv_bfloat16(bits, __nv_bfloat16::from_bits()); }
