// Stand-in for cuda_fp16.h in the kernel emulation: c10::Half rounds to nearest even like the
// CUDA conversions.
#pragma once

#include <c10/util/Half.h>

using __half = c10::Half;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __ushort_as_half(unsigned short bits) { return __half(bits, __half::from_bits()); }
