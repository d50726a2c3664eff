// Temporal momentum CPU kernels, portable C++ (the compiler's baseline target; what every CPU
// runs, and the only path off x86-64): the vector type that temporal_momentum_cpu_kernels.inc is
// written against, and the kernel tables. temporal_momentum_cpu_simd.h says how a path is chosen.
#include "temporal_momentum/temporal_momentum_cpu_simd.h"

namespace vidmem {
namespace momentum {
namespace cpu {

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

VIDMEM_MOMENTUM_CPU_TABLES

}  // namespace portable

}  // namespace cpu
}  // namespace momentum
}  // namespace vidmem
