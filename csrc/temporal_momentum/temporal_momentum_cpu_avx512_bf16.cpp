// Temporal momentum CPU kernels for AVX-512 with the BF16 conversion instruction: the same code as
// temporal_momentum_cpu_avx512.cpp, whose tables serve every other dtype. The instruction changes
// bf16 stores only, so only the bf16 table is built here (each table costs a tenth of the build).
#include "temporal_momentum/temporal_momentum_cpu_simd.h"

#if defined(VIDMEM_X86_SIMD)
#include "temporal_momentum/temporal_momentum_cpu_x86_begin.inc"

#define VIDMEM_AVX512_NAMESPACE avx512_bf16
#define VIDMEM_AVX512_BF16 1
#include "temporal_momentum/temporal_momentum_cpu_simd_avx512.inc"
#undef VIDMEM_AVX512_NAMESPACE
#undef VIDMEM_AVX512_BF16

#include "temporal_momentum/temporal_momentum_cpu_x86_end.inc"
#endif  // VIDMEM_X86_SIMD
