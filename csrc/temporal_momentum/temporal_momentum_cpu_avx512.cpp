// Temporal momentum CPU kernels for AVX-512 (F, BW, VL, DQ): temporal_momentum_cpu_simd_avx512.inc
// compiled inside this set's `#pragma GCC target` region, and the kernel tables of every dtype.
// Each instruction set is its own translation unit, so they build in parallel;
// temporal_momentum_cpu_simd.h says how a path is chosen.
#include "temporal_momentum/temporal_momentum_cpu_simd.h"

#if defined(VIDMEM_X86_SIMD)

namespace vidmem {
namespace momentum {
namespace cpu {

// GCC's own intrinsics headers seed some results with a self-initialised "undefined" vector,
// which -Wmaybe-uninitialized reports wherever they inline; nothing here reads undefined data.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define VIDMEM_AVX512_NAMESPACE avx512
#define VIDMEM_AVX512_BF16 0
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")
#pragma GCC optimize("fp-contract=off")
#include "temporal_momentum/temporal_momentum_cpu_simd_avx512.inc"
namespace avx512 {
VIDMEM_MOMENTUM_CPU_TABLES
}  // namespace avx512
#pragma GCC pop_options
#undef VIDMEM_AVX512_NAMESPACE
#undef VIDMEM_AVX512_BF16

#pragma GCC diagnostic pop

}  // namespace cpu
}  // namespace momentum
}  // namespace vidmem

#endif  // VIDMEM_X86_SIMD
