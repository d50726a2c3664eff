// Temporal momentum CPU micro-kernels for each instruction set, chosen at run time.
//
// The kernel bodies (temporal_momentum_cpu_kernels.inc) are written once against a small
// vector type and compiled once per instruction set: portable C++ (the compiler's baseline
// target), AVX2 (+F16C), AVX-512 (F, BW, VL, DQ) and AVX-512 with the BF16 conversion
// instruction. Each set gets its own `#pragma GCC target` region, so the build needs no
// per-file flags and the library still loads on any x86-64 CPU. Fused multiply-add is off in
// every region (AVX-512F implies FMA, and GCC would otherwise contract the intrinsics' mul and
// add): the recurrence is rounded step by step and every path gives the same bits.
//
// VIDMEM_EXT_CPU_ISA=portable|avx2|avx512|avx512_nobf16 forces a path (read at every call);
// unset or "auto" takes the best one the CPU supports.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "common/dtype.h"
#include "common/macros.h"
#include "temporal_momentum/temporal_momentum.h"

// VIDMEM_PORTABLE_ONLY builds the portable path alone (what other architectures get).
// clang ignores `#pragma GCC target`, which the AVX2/AVX-512 regions below rely on: it builds the
// portable path alone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VIDMEM_PORTABLE_ONLY)
#include <immintrin.h>
#define VIDMEM_X86_SIMD 1
#endif

namespace vidmem {
namespace momentum {
namespace cpu {

// One task's forward frames [t_begin, t_end) over `lanes` lanes. Pointers are at the task's
// first lane, frame 0. `state` holds each lane's state on entry and receives it on exit; `m`
// is the per-lane momentum (a tensor momentum) or null (then m_value). Buffers indexed by
// lane are padded to a whole vector. y == null: compute the state only (chunk aggregates).
template <typename S>
struct ForwardJob {
  const S* x;
  S* y;
  int64_t lanes;
  int64_t x_lane_stride, y_lane_stride;    // used by the tile kernels
  int64_t x_frame_stride, y_frame_stride;  // used by the unit-stride kernels
  int64_t t_begin, t_end;
  bool reset_at_frame0;  // no initial: y_0 = x_0
  bool non_temporal;     // stream the output past the caches (large outputs)
  const acc_type<S>* m;
  acc_type<S> m_value;
  acc_type<S>* state;
};

// Backward frames [t_begin, t_end), walked from the end. `a` holds a_{t_end} on entry and
// a_{t_begin} on exit. grad_x == null: the a aggregate only. With dm (non-null): x, y, initial
// (per lane, acc type) and dm (accumulated per lane).
template <typename S>
struct BackwardJob {
  const S* grad_y;
  S* grad_x;
  const S* x;
  const S* y;
  int64_t lanes;
  int64_t grad_y_lane_stride, grad_x_lane_stride, x_lane_stride, y_lane_stride;
  int64_t grad_y_frame_stride, grad_x_frame_stride, x_frame_stride, y_frame_stride;
  int64_t t_begin, t_end;
  bool has_initial;
  bool non_temporal;
  const acc_type<S>* m;
  acc_type<S> m_value;
  const acc_type<S>* initial;
  acc_type<S>* a;
  acc_type<S>* dm;
};

// [tensor momentum][exact endpoints or dm]
template <typename S>
struct KernelTable {
  void (*forward_unit[2][2])(const ForwardJob<S>&);
  void (*forward_tiles[2][2])(const ForwardJob<S>&);
  void (*backward_unit[2][2][2])(const BackwardJob<S>&);  // [tensor momentum][dm][exact endpoints]
  void (*backward_tiles[2][2][2])(const BackwardJob<S>&);
  int vector_lanes;
};

// The scalar steps are the shared ones of temporal_momentum.h (ema_step, ema_reverse_step,
// ema_input_grad: exact at momentum 0 and 1); the vector types' *_exact functions blend to the
// same results.

// ============================================================================ portable

namespace portable {

// Plain arrays: the compiler vectorizes the loops for its baseline target.
template <typename acc_t>
struct Vec {
  static constexpr int N = sizeof(acc_t) == 4 ? 8 : 4;
  struct reg {
    acc_t v[N];
  };
  static reg zero() { return set1(acc_t(0)); }
  static reg set1(acc_t a) {
    reg r;
    for (int i = 0; i < N; ++i) r.v[i] = a;
    return r;
  }
  static reg load(const acc_t* p) {
    reg r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static void store(acc_t* p, const reg& a) { std::memcpy(p, a.v, sizeof(a.v)); }
  static reg add(const reg& a, const reg& b) {
    reg r;
    for (int i = 0; i < N; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  static reg sub(const reg& a, const reg& b) {
    reg r;
    for (int i = 0; i < N; ++i) r.v[i] = a.v[i] - b.v[i];
    return r;
  }
  static reg mul(const reg& a, const reg& b) {
    reg r;
    for (int i = 0; i < N; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
  static reg ema_exact(const reg& m, const reg& c, const reg& prev, const reg& x) {
    reg r;
    for (int i = 0; i < N; ++i) r.v[i] = ema_step(m.v[i], c.v[i], prev.v[i], x.v[i]);
    return r;
  }
  static reg reverse_exact(const reg& m, const reg& next, const reg& grad_y) {
    reg r;
    for (int i = 0; i < N; ++i) r.v[i] = ema_reverse_step(m.v[i], next.v[i], grad_y.v[i]);
    return r;
  }
  static reg input_grad_exact(const reg& m, const reg& c, const reg& a) {
    reg r;
    for (int i = 0; i < N; ++i) r.v[i] = ema_input_grad(m.v[i], c.v[i], a.v[i]);
    return r;
  }
  static void transpose(reg (&t)[N]) {
    for (int i = 0; i < N; ++i) {
      for (int j = i + 1; j < N; ++j) std::swap(t[i].v[j], t[j].v[i]);
    }
  }
  // Conversions as torch's scalar ones (round to nearest even; a NaN becomes the canonical one).
  template <typename S>
  static reg load_cvt(const S* p) {
    reg r;
    for (int i = 0; i < N; ++i) r.v[i] = static_cast<acc_t>(p[i]);
    return r;
  }
  template <typename S>
  static void store_cvt(S* p, const reg& a, bool /*non_temporal*/) {
    for (int i = 0; i < N; ++i) p[i] = static_cast<S>(a.v[i]);
  }
};

#include "temporal_momentum/temporal_momentum_cpu_kernels.inc"

}  // namespace portable

// ============================================================================ x86 SIMD

#if defined(VIDMEM_X86_SIMD)

// NaN lanes of a float -> half/bf16 conversion get the bits torch's scalar conversion gives.
constexpr uint16_t kHalfNaN = 0x7E00;      // | sign
constexpr uint16_t kBFloat16NaN = 0x7FC0;  // no sign

// GCC's own intrinsics headers seed some results with a self-initialised "undefined" vector,
// which -Wmaybe-uninitialized reports wherever they inline; nothing here reads undefined data.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// ---------------------------------------------------------------------------- AVX2

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

}  // namespace avx2
#pragma GCC pop_options

// ---------------------------------------------------------------------------- AVX-512

#define VIDMEM_AVX512_NAMESPACE avx512
#define VIDMEM_AVX512_BF16 0
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")
#pragma GCC optimize("fp-contract=off")
#include "temporal_momentum/temporal_momentum_cpu_simd_avx512.inc"
#pragma GCC pop_options
#undef VIDMEM_AVX512_NAMESPACE
#undef VIDMEM_AVX512_BF16

#define VIDMEM_AVX512_NAMESPACE avx512_bf16
#define VIDMEM_AVX512_BF16 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,f16c")
#pragma GCC optimize("fp-contract=off")
#include "temporal_momentum/temporal_momentum_cpu_simd_avx512.inc"
#pragma GCC pop_options
#undef VIDMEM_AVX512_NAMESPACE
#undef VIDMEM_AVX512_BF16

#pragma GCC diagnostic pop

#endif  // VIDMEM_X86_SIMD

// ============================================================================ selection

enum class Isa : int { kPortable = 0, kAvx2, kAvx512, kAvx512Bf16 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512_nobf16";
    case Isa::kAvx512Bf16:
      return "avx512";
    default:
      return "portable";
  }
}

inline bool isa_supported(Isa isa) {
#if defined(VIDMEM_X86_SIMD)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  static const bool avx512_bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  switch (isa) {
    case Isa::kAvx2:
      return avx2;
    case Isa::kAvx512:
      return avx512;
    case Isa::kAvx512Bf16:
      return avx512_bf16;
    default:
      return true;
  }
#else
  return isa == Isa::kPortable;
#endif
}

// The path for this call: VIDMEM_EXT_CPU_ISA if set (an unknown or unsupported value is an
// error, never a silent fallback), else the best one the CPU supports.
inline Isa selected_isa() {
  const char* env = std::getenv("VIDMEM_EXT_CPU_ISA");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") {
    for (Isa isa : {Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2}) {
      if (isa_supported(isa)) return isa;
    }
    return Isa::kPortable;
  }
  Isa isa;
  if (want == "portable") {
    isa = Isa::kPortable;
  } else if (want == "avx2") {
    isa = Isa::kAvx2;
  } else if (want == "avx512") {
    isa = isa_supported(Isa::kAvx512Bf16) ? Isa::kAvx512Bf16 : Isa::kAvx512;
  } else if (want == "avx512_nobf16") {
    isa = Isa::kAvx512;
  } else {
    TORCH_CHECK_VALUE(false, "VIDMEM_EXT_CPU_ISA must be auto, portable, avx2, avx512 or avx512_nobf16, got '", want,
                      "'");
  }
  TORCH_CHECK_VALUE(isa_supported(isa), "VIDMEM_EXT_CPU_ISA=", want, ": this CPU does not support that instruction set");
  return isa;
}

template <typename S>
const KernelTable<S>& kernel_table(Isa isa) {
  static const KernelTable<S> portable_table = portable::make_table<S>();
#if defined(VIDMEM_X86_SIMD)
  static const KernelTable<S> avx2_table = avx2::make_table<S>();
  static const KernelTable<S> avx512_table = avx512::make_table<S>();
  switch (isa) {
    case Isa::kAvx2:
      return avx2_table;
    case Isa::kAvx512:
      return avx512_table;
    case Isa::kAvx512Bf16:
      // The BF16 instruction changes bf16 stores only: the other types share the AVX-512 kernels
      // (compiled once: each kernel table costs about a tenth of the build).
      if constexpr (std::is_same_v<S, c10::BFloat16>) {
        static const KernelTable<S> avx512_bf16_table = avx512_bf16::make_table<S>();
        return avx512_bf16_table;
      } else {
        return avx512_table;
      }
    default:
      break;
  }
#endif
  return portable_table;
}

// Orders non-temporal stores before the results are read on another thread.
inline void finish_streaming_stores() {
#if defined(VIDMEM_X86_SIMD)
  _mm_sfence();
#endif
}

}  // namespace cpu
}  // namespace momentum
}  // namespace vidmem
