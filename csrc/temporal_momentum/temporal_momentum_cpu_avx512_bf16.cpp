// Temporal momentum CPU kernels for AVX-512 with the BF16 conversion instruction: the same code as
// temporal_momentum_cpu_avx512.cpp, whose tables serve every other dtype; the instruction changes
// bf16 stores only, so only the bf16 table is built here (each table costs a tenth of the build).
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

#define VIDMEM_AVX512_NAMESPACE avx512_bf16
#define VIDMEM_AVX512_BF16 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,f16c")
#pragma GCC optimize("fp-contract=off")
#include "temporal_momentum/temporal_momentum_cpu_simd_avx512.inc"
namespace avx512_bf16 {
template KernelTable<c10::BFloat16> make_table<c10::BFloat16>();
}  // namespace avx512_bf16
#pragma GCC pop_options
#undef VIDMEM_AVX512_NAMESPACE
#undef VIDMEM_AVX512_BF16

#pragma GCC diagnostic pop

}  // namespace cpu
}  // namespace momentum
}  // namespace vidmem

#endif  // VIDMEM_X86_SIMD
