// Temporal momentum CPU kernels for AVX-512 (F, BW, VL, DQ): temporal_momentum_cpu_simd_avx512.inc
// in its own `#pragma GCC target` region, with the kernel tables of every dtype. Each instruction
// set is its own translation unit, so they build in parallel; temporal_momentum_cpu_simd.h says how
// a path is chosen.
#include "temporal_momentum/temporal_momentum_cpu_simd.h"

#if defined(VIDMEM_X86_SIMD)
#include "temporal_momentum/temporal_momentum_cpu_x86_begin.inc"

#define VIDMEM_AVX512_NAMESPACE avx512
#define VIDMEM_AVX512_BF16 0
#include "temporal_momentum/temporal_momentum_cpu_simd_avx512.inc"
#undef VIDMEM_AVX512_NAMESPACE
#undef VIDMEM_AVX512_BF16

#include "temporal_momentum/temporal_momentum_cpu_x86_end.inc"
#endif  // VIDMEM_X86_SIMD
