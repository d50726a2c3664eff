// Dependency noise (docs/semantics.md, "Dependency noise"): the per-element and scalar math
// shared by the CPU kernels (csrc/dependency_noise/dependency_noise_cpu.cpp) and the CUDA
// kernels (csrc/dependency_noise/dependency_noise.cu). No torch headers here.
//
// With w = exp(p) for the previous frame p of one batch item (N elements):
//   A = mean(w p),  S(n) = mean(w n),  err(n) = |A - S(n) - lambda|,
//   err(compose(a)) = |(1 - sqrt a) A - sqrt(1 - a) S(n*) - lambda|,
// so the whole search is scalar arithmetic on A and the candidates' S_k
// (dependency_noise_search). The fused generator draws S_k ~ N(0, Q / N^2),
// Q = sum(w^2), and then the winning candidate conditioned on its statistic:
//   n* = n' + w (s* - S(n')) N / Q,  n' ~ N(0, I),
// and writes sqrt(a) p + sqrt(1 - a) n* (compose_conditioned).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/philox.h"
#include "common/macros.h"

namespace vidmem {

// exp for the weights w = exp(p). The float version is a branch-free polynomial
// (1 ulp on [-87, 88] against libm; the argument is clamped there, so it never
// overflows to inf and never returns a denormal) that vectorises on the CPU and
// gives the same bits on the GPU (every operation rounded on its own).
VIDMEM_HD float exp_acc(float x) {
  x = select_float(x < -87.0f, -87.0f, x);
  x = select_float(x > 88.0f, 88.0f, x);
  const float whole = round_small_float(mul_rn(x, 1.44269504088896341f));  // x = whole log(2) + r, |r| <= log(2)/2
  float r = sub_rn(x, mul_rn(whole, 0.693359375f));
  r = sub_rn(r, mul_rn(whole, -2.12194440e-4f));
  constexpr float kPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                              4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
  float poly = kPoly[0];
  VIDMEM_UNROLL
  for (int i = 1; i < 6; ++i) poly = add_rn(mul_rn(poly, r), kPoly[i]);
  const float y = add_rn(add_rn(mul_rn(poly, mul_rn(r, r)), r), 1.0f);
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int>(whole) + 127) << 23);  // 2^whole
  return mul_rn(y, scale);
}

VIDMEM_HD double exp_acc(double x) { return std::exp(x); }  // libm / CUDA: equal to ~1e-16

// One term w(p) v = exp(p) v of the step op's statistics, in double. fp64 rounds the product in
// double as always. fp32 (and half types) take the float product where it is accurate (p inside
// exp_acc's range and a finite product), so that CPU and GPU round alike; beyond, exp and the
// product run in double: float's exp would clamp at 88 or overflow and silently pick other
// candidates than fp64 would (docs/errors.md).
VIDMEM_HD double weighted_term(double p, double v) { return mul_rn(exp_acc(p), v); }

VIDMEM_HD double weighted_term(float p, float v) {
  const float product = mul_rn(exp_acc(p), v);
  if (p >= -87.0f && p <= 88.0f && std::fabs(product) <= FLT_MAX) return static_cast<double>(product);
  return mul_rn(std::exp(static_cast<double>(p)), static_cast<double>(v));
}

// ----------------------------------------------------------------------------- the scalar search

template <typename acc_t>
struct SearchResult {
  int64_t index;   // the first candidate with the smallest error
  acc_t alpha;     // the best alpha the line search evaluated (0 if none was accepted)
  acc_t statistic; // S of the chosen candidate
};

// The random search over R candidates (statistic(k) = S_k) followed by the line
// search on alpha, exactly as docs/semantics.md ("Dependency noise") reads, on the sufficient
// statistics. One function for the step op and the generator, CPU and GPU.
// NaN errors never win (every comparison with NaN is false), as in the literal
// transcription: if every error is NaN, candidate 0 is chosen and alpha stays 0.
template <typename acc_t, typename StatisticFn>
VIDMEM_HD SearchResult<acc_t> dependency_noise_search(acc_t mean_wp, int64_t num_candidates, StatisticFn statistic,
                                                      acc_t lambda, int64_t linear_search_times) {
  acc_t bound = static_cast<acc_t>(INFINITY);
  int64_t index = 0;
  acc_t chosen = acc_t(0);
  for (int64_t k = 0; k < num_candidates; ++k) {
    const acc_t s = statistic(k);
    if (k == 0) chosen = s;
    const acc_t err = std::fabs(sub_rn(sub_rn(mean_wp, s), lambda));
    if (err < bound) {
      bound = err;
      index = k;
      chosen = s;
    }
  }
  acc_t alpha = acc_t(0.1), step = acc_t(0.1), best = acc_t(0);
  for (int64_t t = 0; t < linear_search_times; ++t) {
    const acc_t a = alpha < acc_t(0) ? acc_t(0) : (alpha > acc_t(1) ? acc_t(1) : alpha);
    const acc_t err = std::fabs(sub_rn(sub_rn(mul_rn(sub_rn(acc_t(1), std::sqrt(a)), mean_wp),
                                              mul_rn(std::sqrt(sub_rn(acc_t(1), a)), chosen)),
                                       lambda));
    if (err <= bound) {
      bound = err;
      best = a;
      alpha = add_rn(alpha, step);
    } else {
      alpha = sub_rn(alpha, mul_rn(acc_t(0.8), step));
      step = mul_rn(acc_t(0.2), step);
    }
  }
  return SearchResult<acc_t>{index, best, chosen};
}

// Whether a finite double statistic overflows the accumulation type (never for double).
template <typename acc_t>
VIDMEM_HD bool overflows_acc(double value) {
  return sizeof(acc_t) < sizeof(double) && std::fabs(value) > static_cast<double>(FLT_MAX) &&
         std::fabs(value) <= DBL_MAX;
}

// The search on the statistics' double means: A = mean_wp, S_k = candidate_mean(k). In the
// accumulation type as always, unless a float accumulation cannot hold them or the errors
// |A - S_k - lambda| (at most |A| + |S_k| + lambda; e.g. A near 2.5e38 and S_k near -2.5e38, with
// prev above about 84): then in double, so that fp32 chooses what fp64 chooses (an overflowed
// error is inf for every candidate, and candidate 0 would win); alpha is rounded to float after.
template <typename acc_t, typename MeanFn>
VIDMEM_HD SearchResult<acc_t> search_on_means(double mean_wp, int64_t num_candidates, MeanFn candidate_mean,
                                              acc_t lambda, int64_t linear_search_times) {
  bool wide = overflows_acc<acc_t>(mean_wp);
  for (int64_t k = 0; k < num_candidates && !wide; ++k) {
    const double s = candidate_mean(k);
    wide = overflows_acc<acc_t>(s) ||
           overflows_acc<acc_t>(std::fabs(mean_wp) + std::fabs(s) + static_cast<double>(lambda));
  }
  if (!wide) {
    const auto narrow = [&](int64_t k) { return static_cast<acc_t>(candidate_mean(k)); };
    return dependency_noise_search<acc_t>(static_cast<acc_t>(mean_wp), num_candidates, narrow, lambda,
                                          linear_search_times);
  }
  const SearchResult<double> found = dependency_noise_search<double>(mean_wp, num_candidates, candidate_mean,
                                                                     static_cast<double>(lambda), linear_search_times);
  return SearchResult<acc_t>{found.index, static_cast<acc_t>(found.alpha), static_cast<acc_t>(found.statistic)};
}

// ----------------------------------------------------------------------------- composing the next frame

// What one batch item's next frame needs: frame = sqrt_alpha p + sqrt_one_minus_alpha (n' + w correction).
template <typename acc_t>
struct ComposeParams {
  acc_t sqrt_alpha;
  acc_t sqrt_one_minus_alpha;
  acc_t correction;  // (s* - S(n')) N / Q: moves n' onto the chosen statistic
  acc_t alpha;
};

// Running sums over one frame of one batch item, for the search of the next frame. Products are
// rounded in the compute dtype and summed in double: whatever order the CPU and the GPU add them in,
// the sums round to the same float (but for a rounding boundary within ~1e-16), so both search alike.
struct FrameSums {
  double weighted_value;   // sum w p
  double weight_squared;   // sum w^2
  double weighted_normal;  // sum w n'  (n' of the next frame)

  template <typename acc_t>
  VIDMEM_HD void add(acc_t value, acc_t next_normal) {
    const acc_t w = exp_acc(value);
    weighted_value = add_rn(weighted_value, static_cast<double>(mul_rn(w, value)));
    weight_squared = add_rn(weight_squared, static_cast<double>(mul_rn(w, w)));
    weighted_normal = add_rn(weighted_normal, static_cast<double>(mul_rn(w, next_normal)));
  }
  VIDMEM_HD void add(const FrameSums& other) {
    weighted_value = add_rn(weighted_value, other.weighted_value);
    weight_squared = add_rn(weight_squared, other.weight_squared);
    weighted_normal = add_rn(weighted_normal, other.weighted_normal);
  }
};

// The generator's search for one batch item's next frame, from the sums over its previous frame.
// The R candidate statistics are N(0, Q / N^2): standard normals from the batch item's statistics
// stream (frame `frame`, indices 0..R-1) times sqrt(Q) / N.
template <typename acc_t>
VIDMEM_HD ComposeParams<acc_t> generator_search(const FrameSums& sums, int64_t frame_numel,
                                                const NormalStream& statistics, int64_t num_candidates,
                                                acc_t lambda, int64_t linear_search_times) {
  const double n = static_cast<double>(frame_numel);
  const acc_t mean_wp = static_cast<acc_t>(sums.weighted_value / n);
  const acc_t sigma = static_cast<acc_t>(std::sqrt(sums.weight_squared) / n);
  const auto drawn = [&](int64_t k) { return mul_rn(sigma, statistics.at<acc_t>(static_cast<uint64_t>(k))); };
  const SearchResult<acc_t> found =
      dependency_noise_search<acc_t>(mean_wp, num_candidates, drawn, lambda, linear_search_times);
  ComposeParams<acc_t> params;
  params.alpha = found.alpha;
  params.sqrt_alpha = std::sqrt(found.alpha);
  params.sqrt_one_minus_alpha = std::sqrt(sub_rn(acc_t(1), found.alpha));
  // S(n') = sums.weighted_normal / N; n* = n' + w (s* - S(n')) N / Q has S(n*) = s* exactly.
  const double shift = sub_rn(static_cast<double>(found.statistic), sums.weighted_normal / n);
  params.correction = static_cast<acc_t>(mul_rn(shift, n) / sums.weight_squared);
  return params;
}

// One element of the next frame from the previous frame's value p and the unconditioned normal n'.
template <typename acc_t>
VIDMEM_HD acc_t compose_conditioned(acc_t prev, acc_t normal, const ComposeParams<acc_t>& params) {
  const acc_t conditioned = add_rn(normal, mul_rn(exp_acc(prev), params.correction));
  return add_rn(mul_rn(params.sqrt_alpha, prev), mul_rn(params.sqrt_one_minus_alpha, conditioned));
}

// One element of the step op's frame: sqrt(a) p + sqrt(1 - a) n_index.
template <typename acc_t>
VIDMEM_HD acc_t compose_plain(acc_t prev, acc_t candidate, acc_t sqrt_alpha, acc_t sqrt_one_minus_alpha) {
  return add_rn(mul_rn(sqrt_alpha, prev), mul_rn(sqrt_one_minus_alpha, candidate));
}

// ----------------------------------------------------------------------------- CUDA call parameters
//
// One struct per kernel family, filled once by the glue (dependency_noise_cuda_ops.h): the
// operands, the plan that plan_fill / plan_step (dependency_noise.cu) choose, and the workspace
// the glue allocates for it. Pointers are untyped: the kernels cast them to the storage type
// (alphas and the workspace's coefficients hold the accumulation type).

// The fused generator on a contiguous out viewed as (batch, pre, frames, post).
struct FillParams {
  void* out;
  int64_t batch, pre, frames, post;
  double lambda;
  int64_t random_search_times, linear_search_times;
  uint64_t seed, offset;
  void* alphas;  // (batch, frames); frame 0 must be zero on entry
  // The plan: blocks (chunk, batch item) write `chunk` elements of one frame each.
  int64_t chunk, chunks;  // elements per block, blocks per frame and batch item
  int64_t grid_y;         // blocks along the batch (the kernel loops over the rest)
  size_t coefficients_offset, counters_offset, workspace_bytes;  // in the workspace, after the partial sums
  void* workspace;
};

// The step op on contiguous prev (batch, numel) and candidates (R, batch, numel).
struct StepParams {
  const void* prev;
  const void* candidates;
  void* frame;     // (batch, numel), prev's dtype
  void* alpha;     // (batch,), the accumulation type
  int64_t* index;  // (batch,)
  int64_t batch, numel, num_candidates;
  double lambda;
  int64_t linear_search_times;
  // The plan: statistics blocks (chunk, batch item) sum `chunk` elements each.
  int64_t chunk, chunks, grid_y;
  int64_t max_grid_x;  // blocks of the search and write kernels at most (they loop over the rest); the
                       // statistics grid puts its chunks (at most kMaxChunks) on x uncapped
  size_t coefficients_offset, workspace_bytes;  // in the workspace, after the partial sums
  void* workspace;
};

// What the stream layout addresses: the Philox group index (element / 4) and the batch
// item are one 32-bit counter word each.
constexpr int64_t kMaxFrameNumel = int64_t(4) * (int64_t(1) << 32);
constexpr int64_t kMaxBatch = int64_t(1) << 32;

// Upper bounds of the search counts (vidmem_ext/noise.py holds the same numbers; docs/errors.md):
// far above any sensible use, low enough that one call stays bounded in time.
constexpr int64_t kMaxRandomSearchTimes = int64_t(1) << 20;
constexpr int64_t kMaxLinearSearchTimes = int64_t(1) << 16;
// Upper bound of lambda_i (vidmem_ext/noise.py: MAX_LAMBDA_I): from about 1.65 on, frames are
// already independent. Larger targets only cost the fp32 errors |... - lambda_i| their precision,
// until they round to lambda_i itself: ties then pass the line search's <= test and alpha walks up
// to 1 (identical frames at 1e8, instead of independent ones).
constexpr double kMaxLambda = 10.0;

}  // namespace vidmem
