// Temporal momentum CPU kernels for AVX2 (+F16C): the vector types that
// temporal_momentum_cpu_kernels.inc is written against, compiled inside this set's
// `#pragma GCC target` region, and the kernel tables. Each instruction set is its own translation
// unit, so they build in parallel; temporal_momentum_cpu_simd.h says how a path is chosen.
#include "temporal_momentum/temporal_momentum_cpu_simd.h"

#if defined(VIDMEM_X86_SIMD)

#include "temporal_momentum/temporal_momentum_cpu_x86_begin.inc"

#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#pragma GCC optimize("fp-contract=off")
namespace avx2 {

template <typename acc_t>
struct Vec;

VIDMEM_ALWAYS_INLINE bool aligned(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

template <>
struct Vec<float> {
  static constexpr int N = 8;
  using reg = __m256;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float a) { return _mm256_set1_ps(a); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg ema_exact(reg m, reg c, reg prev, reg x) {
    const reg r = _mm256_add_ps(_mm256_mul_ps(m, prev), _mm256_mul_ps(c, x));
    const reg with_one = _mm256_blendv_ps(r, prev, _mm256_cmp_ps(m, _mm256_set1_ps(1.0f), _CMP_EQ_OQ));
    return _mm256_blendv_ps(with_one, x, _mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_EQ_OQ));
  }
  static reg reverse_exact(reg m, reg next, reg grad_y) {
    const reg r = _mm256_add_ps(grad_y, _mm256_mul_ps(m, next));
    return _mm256_blendv_ps(r, grad_y, _mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_EQ_OQ));
  }
  static reg input_grad_exact(reg m, reg c, reg a) {
    const reg r = _mm256_mul_ps(c, a);
    return _mm256_blendv_ps(r, _mm256_setzero_ps(), _mm256_cmp_ps(m, _mm256_set1_ps(1.0f), _CMP_EQ_OQ));
  }
  static void transpose(reg (&r)[N]) {
    __m256 t[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    __m256 u[8];
    for (int i = 0; i < 2; ++i) {
      u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
      u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
      u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
  static reg load_cvt(const float* p) { return _mm256_loadu_ps(p); }
  static reg load_cvt(const c10::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static reg load_cvt(const c10::BFloat16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static void store_cvt(float* p, reg a, bool non_temporal) {
    if (non_temporal && aligned(p, 32)) {
      _mm256_stream_ps(p, a);
    } else {
      _mm256_storeu_ps(p, a);
    }
  }
  static void store_bits(void* p, __m128i bits, bool non_temporal) {
    if (non_temporal && aligned(p, 16)) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(p), bits);
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bits);
    }
  }
  static void store_cvt(c10::Half* p, reg a, bool non_temporal) {
    __m128i bits = _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const int nan = _mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    if (nan != 0) {  // rare: canonical NaN bits with the sign
      alignas(16) uint16_t h[8];
      alignas(32) uint32_t u[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(h), bits);
      _mm256_store_si256(reinterpret_cast<__m256i*>(u), _mm256_castps_si256(a));
      for (int i = 0; i < 8; ++i) {
        if (nan & (1 << i)) h[i] = static_cast<uint16_t>(((u[i] >> 16) & 0x8000u) | kHalfNaN);
      }
      bits = _mm_load_si128(reinterpret_cast<const __m128i*>(h));
    }
    store_bits(p, bits, non_temporal);
  }
  static void store_cvt(c10::BFloat16* p, reg a, bool non_temporal) {
    const __m256i u = _mm256_castps_si256(a);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(kBFloat16NaN), nan);
    // 32 -> 16 bits (every value fits): pack within 128-bit halves, then order the halves.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    store_bits(p, _mm256_castsi256_si128(packed), non_temporal);
  }
};

template <>
struct Vec<double> {
  static constexpr int N = 4;
  using reg = __m256d;
  static reg zero() { return _mm256_setzero_pd(); }
  static reg set1(double a) { return _mm256_set1_pd(a); }
  static reg load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, reg a) { _mm256_storeu_pd(p, a); }
  static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static reg ema_exact(reg m, reg c, reg prev, reg x) {
    const reg r = _mm256_add_pd(_mm256_mul_pd(m, prev), _mm256_mul_pd(c, x));
    const reg with_one = _mm256_blendv_pd(r, prev, _mm256_cmp_pd(m, _mm256_set1_pd(1.0), _CMP_EQ_OQ));
    return _mm256_blendv_pd(with_one, x, _mm256_cmp_pd(m, _mm256_setzero_pd(), _CMP_EQ_OQ));
  }
  static reg reverse_exact(reg m, reg next, reg grad_y) {
    const reg r = _mm256_add_pd(grad_y, _mm256_mul_pd(m, next));
    return _mm256_blendv_pd(r, grad_y, _mm256_cmp_pd(m, _mm256_setzero_pd(), _CMP_EQ_OQ));
  }
  static reg input_grad_exact(reg m, reg c, reg a) {
    const reg r = _mm256_mul_pd(c, a);
    return _mm256_blendv_pd(r, _mm256_setzero_pd(), _mm256_cmp_pd(m, _mm256_set1_pd(1.0), _CMP_EQ_OQ));
  }
  static void transpose(reg (&r)[N]) {
    const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
  static reg load_cvt(const double* p) { return _mm256_loadu_pd(p); }
  static void store_cvt(double* p, reg a, bool non_temporal) {
    if (non_temporal && aligned(p, 32)) {
      _mm256_stream_pd(p, a);
    } else {
      _mm256_storeu_pd(p, a);
    }
  }
};

#include "temporal_momentum/temporal_momentum_cpu_kernels.inc"

VIDMEM_MOMENTUM_CPU_TABLES

}  // namespace avx2
#pragma GCC pop_options

#include "temporal_momentum/temporal_momentum_cpu_x86_end.inc"

#endif  // VIDMEM_X86_SIMD
