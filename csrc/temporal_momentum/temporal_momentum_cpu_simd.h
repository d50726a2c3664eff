// Temporal momentum CPU micro-kernels for each instruction set, chosen at run time.
//
// The kernel bodies (temporal_momentum_cpu_kernels.inc) are written once against a small
// vector type and compiled once per instruction set: portable C++ (the compiler's baseline
// target), AVX2 (+F16C), AVX-512 (F, BW, VL, DQ) and AVX-512 with the BF16 conversion
// instruction. Each set is its own translation unit (temporal_momentum_cpu_<set>.cpp, built in
// parallel) and its own `#pragma GCC target` region there, so the build needs no per-file flags
// and the library still loads on any x86-64 CPU; this header declares their kernel tables.
// Fused multiply-add is off in every region (AVX-512F implies FMA, and GCC would otherwise
// contract the intrinsics' mul and add): the recurrence is rounded step by step and every path
// gives the same bits.
//
// VIDMEM_EXT_CPU_ISA=portable|avx2|avx512|avx512_nobf16 forces a path (read at every call);
// unset or "auto" takes the best one the CPU supports.
#pragma once

// 201709L: GCC 10 reports its (partial, requires-capable) C++20 mode that way; C++17 is 201703L.
#if __cplusplus < 201709L
#error "the CPU momentum kernels need C++20 (requires-expressions): build with -std=c++20, as setup.py does"
#endif

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

// Each instruction set's kernel tables are built in their own translation unit
// (temporal_momentum_cpu_<set>.cpp), so that the sets compile in parallel; these declare them.
#define VIDMEM_MOMENTUM_CPU_TABLES                          \
  template KernelTable<float> make_table<float>();           \
  template KernelTable<double> make_table<double>();         \
  template KernelTable<c10::Half> make_table<c10::Half>();   \
  template KernelTable<c10::BFloat16> make_table<c10::BFloat16>();

namespace portable {
template <typename S>
KernelTable<S> make_table();
}  // namespace portable

#if defined(VIDMEM_X86_SIMD)
// NaN lanes of a float -> half/bf16 conversion get the bits torch's scalar conversion gives.
constexpr uint16_t kHalfNaN = 0x7E00;      // | sign
constexpr uint16_t kBFloat16NaN = 0x7FC0;  // no sign

namespace avx2 {
template <typename S>
KernelTable<S> make_table();
}  // namespace avx2
namespace avx512 {
template <typename S>
KernelTable<S> make_table();
}  // namespace avx512
namespace avx512_bf16 {
template <typename S>
KernelTable<S> make_table();
}  // namespace avx512_bf16
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
  // Each table is built on the first call of its own path, never before: make_table runs inside its
  // instruction set's target region (AVX-512 code fills an AVX-512 table), so building the table of
  // a set the CPU lacks would fault, whatever path the call takes.
#if defined(VIDMEM_X86_SIMD)
  switch (isa) {
    case Isa::kAvx2: {
      static const KernelTable<S> table = avx2::make_table<S>();
      return table;
    }
    case Isa::kAvx512Bf16:
      // The BF16 instruction changes bf16 stores only: the other types share the AVX-512 kernels
      // (compiled once: each kernel table costs about a tenth of the build).
      if constexpr (std::is_same_v<S, c10::BFloat16>) {
        static const KernelTable<S> table = avx512_bf16::make_table<S>();
        return table;
      }
      [[fallthrough]];
    case Isa::kAvx512: {
      static const KernelTable<S> table = avx512::make_table<S>();
      return table;
    }
    default:
      break;
  }
#endif
  static const KernelTable<S> table = portable::make_table<S>();
  return table;
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
