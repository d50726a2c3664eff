// Philox4x32-10 (Salmon et al., "Parallel Random Numbers: As Easy as 1, 2, 3",
// SC11) and the transform of its output words into standard normals.
//
// Shared by the CPU and the CUDA kernels (VIDMEM_HD), so that one seed gives
// the same numbers on both. No torch headers here.
//
// Normals: one Philox call (a 128-bit counter, a 64-bit key) gives four 32-bit
// words x0..x3 and, by Box-Muller on the pairs (x0, x1) and (x2, x3), four
// normals. In float the uniforms are u = (top 24 bits + 1) / 2^24, exact in
// (0, 1]; in double u = (x + 1) / 2^32. The float transform uses the
// branch-free polynomials below instead of libm, so that it vectorises on the
// CPU and gives (nearly) the same bits on the GPU; their accuracy is tested
// against libm in tests/test_philox.py.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace vidmem {

// ----------------------------------------------------------------------------- Philox4x32-10

struct PhiloxCounter {
  uint32_t x[4];
};

VIDMEM_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
#endif
}

// Ten rounds of the Philox4x32 bijection of `counter` under key (key0, key1).
VIDMEM_HD PhiloxCounter philox4x32_10(PhiloxCounter counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // key schedule (golden ratio, sqrt(3) - 1)
  uint32_t c0 = counter.x[0], c1 = counter.x[1], c2 = counter.x[2], c3 = counter.x[3];
VIDMEM_UNROLL
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kMul0, c0, hi0, lo0);
    philox_mulhilo(kMul1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ key0, n2 = hi0 ^ c3 ^ key1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return PhiloxCounter{{c0, c1, c2, c3}};
}

// ----------------------------------------------------------------------------- bit casts

VIDMEM_HD uint32_t float_to_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

VIDMEM_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

// cond ? first : second, as bit operations: the CPU compiler (which must keep floating-point
// exceptions exact) will not turn a float ?: into a vector blend, but it will vectorise this.
VIDMEM_HD float select_float(bool cond, float first, float second) {
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);
  return bits_to_float((float_to_bits(first) & mask) | (float_to_bits(second) & ~mask));
}

// Multiply, add and subtract, each rounded on its own. The CUDA compiler would otherwise fuse
// a * b + c into one fused multiply-add (one rounding), which x86 CPU code built without FMA never
// does: with every operation rounded separately the GPU computes the same bits as the CPU, so the
// same seed gives the same search decisions (and the same noise) on both.
VIDMEM_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
VIDMEM_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
VIDMEM_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
VIDMEM_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
VIDMEM_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
VIDMEM_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

// Round to the nearest integer (ties to even) for |x| < 2^22, without a libm
// call: adding and subtracting 1.5 * 2^23 leaves no fractional bits.
VIDMEM_HD float round_small_float(float x) {
  constexpr float kShifter = 12582912.0f;
  return sub_rn(add_rn(x, kShifter), kShifter);
}

// ----------------------------------------------------------------------------- float math for the transform

// log(u) for u in [2^-126, 1] (normal, positive; the only inputs the transform makes).
// u = m * 2^e with m in [sqrt(1/2), sqrt(2)); log(m) = x - x^2/2 + x^3 P(x) for x = m - 1
// (a minimax polynomial as in Cephes' logf); log(2) is split in two so e * log(2) stays exact.
VIDMEM_HD float log_unit_float(float u) {
  const uint32_t bits = float_to_bits(u);
  const uint32_t mantissa = bits & 0x007FFFFFu;
  const uint32_t below = mantissa < 0x003504F3u ? 1u : 0u;  // mantissa of sqrt(1/2): m < sqrt(1/2) -> use 2m
  const int exponent = static_cast<int>(bits >> 23) - 126 - static_cast<int>(below);
  const float m = bits_to_float((mantissa | 0x3F000000u) + (below << 23));  // in [sqrt(1/2), sqrt(2))
  const float x = sub_rn(m, 1.0f);
  const float z = mul_rn(x, x);
  constexpr float kPoly[9] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                              -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                              2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  float poly = kPoly[0];
VIDMEM_UNROLL
  for (int i = 1; i < 9; ++i) poly = add_rn(mul_rn(poly, x), kPoly[i]);
  const float e = static_cast<float>(exponent);
  float y = mul_rn(mul_rn(poly, x), z);
  y = add_rn(y, mul_rn(e, -2.12194440e-4f));  // log(2) = 0.693359375 - 2.12194440e-4 (the first part has 9 bits)
  y = sub_rn(y, mul_rn(0.5f, z));
  return add_rn(add_rn(x, y), mul_rn(e, 0.693359375f));
}

// cos(2 pi t) and sin(2 pi t) for t in [0, 1]: whole quarter turns are taken out
// exactly (4 t is exact), the rest is an angle in [-pi/4, pi/4] for the polynomials.
VIDMEM_HD void sincos_turns_float(float t, float& cos_out, float& sin_out) {
  const float quarters = mul_rn(4.0f, t);
  const float whole = round_small_float(quarters);
  const float x = mul_rn(sub_rn(quarters, whole), 1.57079632679489662f);
  const float z = mul_rn(x, x);
  float s = add_rn(mul_rn(-1.9515295891e-4f, z), 8.3321608736e-3f);
  s = sub_rn(mul_rn(s, z), 1.6666654611e-1f);
  s = add_rn(mul_rn(mul_rn(s, z), x), x);
  float c = sub_rn(mul_rn(2.443315711809948e-5f, z), 1.388731625493765e-3f);
  c = add_rn(mul_rn(c, z), 4.166664568298827e-2f);
  c = add_rn(sub_rn(mul_rn(mul_rn(c, z), z), mul_rn(0.5f, z)), 1.0f);
  // Rotate (c, s) by quadrant * 90 degrees: odd quadrants swap and negate, 2 and 3 negate both.
  const uint32_t quadrant = static_cast<uint32_t>(static_cast<int>(whole)) & 3u;
  const uint32_t swap = 0u - (quadrant & 1u);  // all ones when odd
  const uint32_t c_bits = float_to_bits(c), s_bits = float_to_bits(s);
  const uint32_t negate_both = (quadrant & 2u) << 30;
  cos_out = bits_to_float((((s_bits ^ 0x80000000u) & swap) | (c_bits & ~swap)) ^ negate_both);
  sin_out = bits_to_float(((c_bits & swap) | (s_bits & ~swap)) ^ negate_both);
}

// sqrt(t) for t = 0 or t in [1e-8, 2^100]: the reciprocal square root from the exponent-halving bit
// trick, three Newton steps and a final correction (within 1 ulp of sqrtf). Not sqrtf itself: without
// -fno-math-errno its errno branch keeps the CPU compiler from vectorising the transform.
VIDMEM_HD float sqrt_nonnegative_float(float t) {
  float y = bits_to_float(0x5F375A86u - (float_to_bits(t) >> 1));  // ~ 1 / sqrt(t), within 4%
  const float half_t = mul_rn(0.5f, t);
VIDMEM_UNROLL
  for (int i = 0; i < 3; ++i) y = mul_rn(y, sub_rn(1.5f, mul_rn(mul_rn(half_t, y), y)));
  const float r = mul_rn(t, y);  // 0 at t = 0
  return add_rn(r, mul_rn(mul_rn(0.5f, y), sub_rn(t, mul_rn(r, r))));  // one correction on the root itself
}

// ----------------------------------------------------------------------------- words -> normals

// Box-Muller on two words: r = sqrt(-2 log u1), angle 2 pi u2.
VIDMEM_HD void box_muller(uint32_t word1, uint32_t word2, float& n1, float& n2) {
  constexpr float kInv24 = 1.0f / 16777216.0f;
  const float u1 = mul_rn(static_cast<float>((word1 >> 8) + 1u), kInv24);  // (0, 1], exact
  const float u2 = mul_rn(static_cast<float>((word2 >> 8) + 1u), kInv24);
  const float radius = sqrt_nonnegative_float(mul_rn(-2.0f, log_unit_float(u1)));
  float c, s;
  sincos_turns_float(u2, c, s);
  n1 = mul_rn(radius, c);
  n2 = mul_rn(radius, s);
}

VIDMEM_HD void box_muller(uint32_t word1, uint32_t word2, double& n1, double& n2) {
  constexpr double kInv32 = 1.0 / 4294967296.0;
  // libm here and CUDA's double functions agree to about 1e-16, not to the bit.
  const double u1 = mul_rn(static_cast<double>(word1) + 1.0, kInv32);  // (0, 1], exact
  const double u2 = mul_rn(static_cast<double>(word2) + 1.0, kInv32);
  const double radius = std::sqrt(mul_rn(-2.0, std::log(u1)));
  const double angle = mul_rn(6.283185307179586477, u2);
  n1 = mul_rn(radius, std::cos(angle));
  n2 = mul_rn(radius, std::sin(angle));
}

// ----------------------------------------------------------------------------- the library's stream layout

// Every normal the noise kernels draw is addressed by (seed, position, group, batch item):
//   key = (seed low 32 bits, seed high 32 bits),
//   Philox counter = (position low, position high, group, batch item),
//   position = offset + 2 * frame + purpose,
// and element (or candidate) e is normal number e % 4 of the four that group e / 4 gives.
// This is how torch lays out its own Philox draws (counter words 0-1: the position, which its
// generator's offset / 4 advances; words 2-3: the subsequence), so a call that reads positions
// offset .. offset + 2F - 1 and advances the generator past them never reuses another call's
// numbers. The layout names no thread, block or chunk: any parallel schedule (and the CPU and
// the GPU) reads the same numbers.
struct NormalStream {
  uint32_t key0, key1;  // the seed
  uint64_t position;    // offset + 2 * frame + purpose
  uint32_t batch;

  VIDMEM_HD PhiloxCounter counter(uint64_t group_index) const {
    return PhiloxCounter{{static_cast<uint32_t>(position), static_cast<uint32_t>(position >> 32),
                          static_cast<uint32_t>(group_index), batch}};
  }

  // The four normals of counter group `group_index` (elements 4 * group_index .. + 3).
  template <typename acc_t>
  VIDMEM_HD void group(uint64_t group_index, acc_t out[4]) const {
    const PhiloxCounter words = philox4x32_10(counter(group_index), key0, key1);
    box_muller(words.x[0], words.x[1], out[0], out[1]);
    box_muller(words.x[2], words.x[3], out[2], out[3]);
  }

  template <typename acc_t>
  VIDMEM_HD acc_t at(uint64_t index) const {
    acc_t four[4];
    group<acc_t>(index / 4, four);
    return four[index % 4];
  }
};

// What each frame reads: two positions per frame.
enum NoisePurpose : uint32_t {
  kElementNormals = 0,       // frame 0, and the unconditioned candidate n' of every later frame
  kCandidateStatistics = 1,  // the R candidate statistics S_k of every later frame (standardised)
};

VIDMEM_HD NormalStream make_normal_stream(uint64_t seed, uint64_t offset, int64_t batch, uint32_t purpose,
                                                 int64_t frame) {
  return NormalStream{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                      offset + 2 * static_cast<uint64_t>(frame) + purpose, static_cast<uint32_t>(batch)};
}

}  // namespace vidmem
