// CPU kernels of dependency noise (docs/semantics.md, "Dependency noise"):
//   dependency_noise_step   the deterministic core on given candidates (statistics pass, search, write pass);
//   dependency_noise_fill_  the fused generator (one pass per frame, candidates never drawn).
// The math is in dependency_noise.h and csrc/common/philox.h, shared with the CUDA kernels.
//
// Results do not depend on the number of threads: every reduction runs over
// chunks whose size depends only on the frame size, and the chunk sums are
// added in chunk order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "common/dtype.h"
#include "common/macros.h"
#include "dependency_noise/dependency_noise.h"
#include "dependency_noise/dependency_noise_host.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define VIDMEM_NOISE_AVX2 1
#include <immintrin.h>
#else
#define VIDMEM_NOISE_AVX2 0
#endif

namespace vidmem {
namespace {

// Elements per vector block: 16 Philox groups, the unit the inner loops vectorise over.
constexpr int64_t kBlock = 64;

// Elements per reduction chunk: fixed for a frame size (never from the thread count), at most
// 256 chunks per batch item so that the partial sums stay O(B).
int64_t chunk_size_for(int64_t frame_numel) {
  constexpr int64_t kChunk = 4096, kMaxChunks = 256;
  int64_t chunk = kChunk;
  if ((frame_numel + chunk - 1) / chunk > kMaxChunks) {
    chunk = (frame_numel + kMaxChunks - 1) / kMaxChunks;
    chunk = (chunk + kBlock - 1) / kBlock * kBlock;
  }
  return chunk;
}

// A contiguous out viewed as (batch, pre, frames, post); the frame's elements are numbered
// e = j * post + k (j < pre, k < post), as the stream layout counts them, and lie at j * stride_pre + k.
struct FrameLayout {
  int64_t batch, pre, frames, post;
  int64_t stride_batch, stride_pre, stride_frame;
  int64_t frame_numel() const { return pre * post; }
};

FrameLayout frame_layout(const NoiseOutShape& shape) {
  FrameLayout layout{};
  layout.batch = shape.batch;
  layout.pre = shape.pre;
  layout.frames = shape.frames;
  layout.post = shape.post;
  // `out` is contiguous here, so each group of axes collapses to one stride.
  layout.stride_frame = layout.post;
  layout.stride_pre = layout.frames * layout.post;
  layout.stride_batch = layout.pre * layout.stride_pre;
  return layout;
}

// Memory offsets (within one frame) of elements first .. first + count - 1. Returns true instead
// when they are consecutive (the common case), with the first one in *start.
VIDMEM_ALWAYS_INLINE bool consecutive_or_offsets(const FrameLayout& layout, int64_t first, int64_t count,
                                                 int64_t* start, int64_t* offsets) {
  int64_t j = first / layout.post, k = first - j * layout.post;
  *start = j * layout.stride_pre + k;
  if (k + count <= layout.post) return true;
  for (int64_t i = 0; i < count; ++i) {
    offsets[i] = j * layout.stride_pre + k;
    if (++k == layout.post) {
      k = 0;
      ++j;
    }
  }
  return false;
}

// Philox words of groups first_group .. first_group + 15, split into the two words of each
// Box-Muller pair: pair 2g is (x0, x1) of group g, pair 2g + 1 is (x2, x3).
VIDMEM_ALWAYS_INLINE void philox_block_portable(const NormalStream& stream, uint64_t first_group,
                                                uint32_t* first_word, uint32_t* second_word) {
  for (int g = 0; g < kBlock / 4; ++g) {
    const PhiloxCounter words = philox4x32_10(stream.counter(first_group + g), stream.key0, stream.key1);
    first_word[2 * g] = words.x[0];
    second_word[2 * g] = words.x[1];
    first_word[2 * g + 1] = words.x[2];
    second_word[2 * g + 1] = words.x[3];
  }
}

#if VIDMEM_NOISE_AVX2
// (hi, lo) of the 32x32 -> 64-bit products of all eight lanes of a with the constant m.
__attribute__((target("avx2"))) VIDMEM_ALWAYS_INLINE void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                         // lanes 0, 2, 4, 6 as 64-bit products
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// The same Philox4x32-10 as philox4x32_10() in csrc/common/philox.h, eight counters per AVX2 register
// (compilers vectorise the 32x32 -> 64-bit products of the portable loop poorly). Tested to give
// the same words: the fused generator's frame 0 is compared with a Python Philox in the tests.
// A plain call (not inlined): its callers are compiled for the baseline target.
__attribute__((target("avx2"))) void philox_block_avx2(const NormalStream& stream, uint64_t first_group,
                                                       uint32_t* first_word, uint32_t* second_word) {
  const __m256i mul0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i mul1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int half = 0; half < 2; ++half) {
    const PhiloxCounter first = stream.counter(first_group + 8u * static_cast<uint32_t>(half));
    __m256i c0 = _mm256_set1_epi32(static_cast<int>(first.x[0]));
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(first.x[1]));
    __m256i c2 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first.x[2])), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(first.x[3]));
    uint32_t key0 = stream.key0, key1 = stream.key1;
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(c0, mul0, hi0, lo0);
      mulhilo8(c2, mul1, hi1, lo1);
      const __m256i next0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(key0)));
      const __m256i next2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(key1)));
      c0 = next0;
      c1 = lo1;
      c2 = next2;
      c3 = lo0;
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    alignas(32) uint32_t x0[8], x1[8], x2[8], x3[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(x0), c0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(x1), c1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(x2), c2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(x3), c3);
    for (int g = 0; g < 8; ++g) {
      const int pair = 2 * (8 * half + g);
      first_word[pair] = x0[g];
      second_word[pair] = x1[g];
      first_word[pair + 1] = x2[g];
      second_word[pair + 1] = x3[g];
    }
  }
}
#endif

// The 64 normals of groups first_group .. first_group + 15, in element order. Written as
// structure-of-arrays loops without branches so that the compiler vectorises them.
template <bool kAvx2, typename acc_t>
VIDMEM_ALWAYS_INLINE void normals_block(const NormalStream& stream, uint64_t first_group, acc_t* out) {
  constexpr int kPairs = kBlock / 2;
  uint32_t first_word[kPairs], second_word[kPairs];
#if VIDMEM_NOISE_AVX2
  if constexpr (kAvx2) {
    philox_block_avx2(stream, first_group, first_word, second_word);
  } else {
    philox_block_portable(stream, first_group, first_word, second_word);
  }
#else
  philox_block_portable(stream, first_group, first_word, second_word);
#endif
  acc_t first[kPairs], second[kPairs];
  for (int m = 0; m < kPairs; ++m) box_muller(first_word[m], second_word[m], first[m], second[m]);
  for (int m = 0; m < kPairs; ++m) {
    out[2 * m] = first[m];
    out[2 * m + 1] = second[m];
  }
}

// ----------------------------------------------------------------------------- fused generator

template <typename scalar_t, typename acc_t>
struct FillChunk {
  scalar_t* out;  // element 0 of batch item b, frame f
  const FrameLayout* layout;
  NormalStream normals;       // frame f
  NormalStream next_normals;  // frame f + 1 (the n' whose statistic S(n') the next search needs)
  const ComposeParams<acc_t>* params;  // nullptr for frame 0
  bool need_sums;
  int64_t begin, end;  // elements of the frame
};

// Writes one chunk of frame f and returns its sums for the search of frame f + 1.
//
// Every frame after the first needs the same n' twice: in the pass before it, for S(n'), and in its own
// pass, to compose. When the output holds acc_t exactly (fp32, fp64), the earlier pass parks n' in the
// frame's own slot of `out` (not written yet) instead of drawing it again: one normal per element and
// frame, not two. Half types draw it twice (parking would round it), as the CUDA kernel always does.
template <bool kAvx2, typename scalar_t, typename acc_t>
VIDMEM_ALWAYS_INLINE FrameSums fill_chunk_body(const FillChunk<scalar_t, acc_t>& job) {
  constexpr bool kParkNormals = std::is_same_v<scalar_t, acc_t>;
  const FrameLayout& layout = *job.layout;
  scalar_t* const out = job.out;
  const scalar_t* const prev = job.params == nullptr ? nullptr : out - layout.stride_frame;
  // Per-lane running sums in double (vectorisable), added up in lane order at the end. Each product is
  // rounded in acc_t first, as FrameSums::add does on the GPU.
  double lane_value[kBlock] = {}, lane_square[kBlock] = {}, lane_normal[kBlock] = {};
  int64_t offsets[kBlock];
  acc_t normal[kBlock], next_normal[kBlock], value[kBlock];
  for (int64_t first = job.begin; first < job.end; first += kBlock) {
    const int64_t count = std::min<int64_t>(kBlock, job.end - first);
    int64_t start;
    const bool consecutive = consecutive_or_offsets(layout, first, count, &start, offsets);
    if (kParkNormals && job.params != nullptr) {
      // n' of this frame, parked in this frame's slot by the previous pass (exact in scalar_t == acc_t).
      if (consecutive) {
        for (int64_t i = 0; i < count; ++i) normal[i] = out[start + i];
      } else {
        for (int64_t i = 0; i < count; ++i) normal[i] = out[offsets[i]];
      }
    } else {
      normals_block<kAvx2>(job.normals, static_cast<uint64_t>(first / 4), normal);
    }
    if (job.params == nullptr) {
      for (int64_t i = 0; i < count; ++i) value[i] = normal[i];
    } else {
      if (consecutive) {
        for (int64_t i = 0; i < count; ++i) value[i] = static_cast<acc_t>(prev[start + i]);
      } else {
        for (int64_t i = 0; i < count; ++i) value[i] = static_cast<acc_t>(prev[offsets[i]]);
      }
      const ComposeParams<acc_t> params = *job.params;
      for (int64_t i = 0; i < count; ++i) value[i] = compose_conditioned(value[i], normal[i], params);
    }
    // Store, and continue with the value as stored: the next frame reads it back rounded.
    if (consecutive) {
      for (int64_t i = 0; i < count; ++i) out[start + i] = static_cast<scalar_t>(value[i]);
      if constexpr (!std::is_same_v<scalar_t, acc_t>) {
        for (int64_t i = 0; i < count; ++i) value[i] = static_cast<acc_t>(out[start + i]);
      }
    } else {
      for (int64_t i = 0; i < count; ++i) {
        const scalar_t stored = static_cast<scalar_t>(value[i]);
        out[offsets[i]] = stored;
        value[i] = static_cast<acc_t>(stored);
      }
    }
    if (!job.need_sums) continue;
    normals_block<kAvx2>(job.next_normals, static_cast<uint64_t>(first / 4), next_normal);
    if constexpr (kParkNormals) {
      scalar_t* const next = out + layout.stride_frame;  // the next frame's slot, written by the next pass
      if (consecutive) {
        for (int64_t i = 0; i < count; ++i) next[start + i] = next_normal[i];
      } else {
        for (int64_t i = 0; i < count; ++i) next[offsets[i]] = next_normal[i];
      }
    }
    for (int64_t i = 0; i < count; ++i) {
      const acc_t w = exp_acc(value[i]);
      lane_value[i] += static_cast<double>(w * value[i]);
      lane_square[i] += static_cast<double>(w * w);
      lane_normal[i] += static_cast<double>(w * next_normal[i]);
    }
  }
  FrameSums sums{0.0, 0.0, 0.0};
  for (int64_t i = 0; i < kBlock; ++i) {
    sums.weighted_value += lane_value[i];
    sums.weight_squared += lane_square[i];
    sums.weighted_normal += lane_normal[i];
  }
  return sums;
}

template <typename scalar_t, typename acc_t>
FrameSums fill_chunk_portable(const FillChunk<scalar_t, acc_t>& job) {
  return fill_chunk_body<false>(job);
}

#if VIDMEM_NOISE_AVX2
// The same code compiled for AVX2 (8 float lanes): chosen at run time when the CPU has it. setup.py
// builds with -ffp-contract=off (g++ would otherwise fuse multiply-adds into FMAs on any target with
// FMA), so both versions, and the CUDA kernels, give the same bits (tests/test_fp_contract.py).
template <typename scalar_t, typename acc_t>
__attribute__((target("avx2"))) FrameSums fill_chunk_avx2(const FillChunk<scalar_t, acc_t>& job) {
  return fill_chunk_body<true>(job);
}

// VIDMEM_EXT_DISABLE_AVX2=1 forces the portable code (the tests check that both give the same bits).
bool cpu_has_avx2() {
  static const bool use = __builtin_cpu_supports("avx2") && std::getenv("VIDMEM_EXT_DISABLE_AVX2") == nullptr;
  return use;
}
#endif

template <typename scalar_t, typename acc_t>
FrameSums fill_chunk(const FillChunk<scalar_t, acc_t>& job) {
#if VIDMEM_NOISE_AVX2
  if (cpu_has_avx2()) return fill_chunk_avx2(job);
#endif
  return fill_chunk_portable(job);
}

template <typename scalar_t, typename acc_t>
void fill_frames(scalar_t* data, const FrameLayout& layout, acc_t* alphas, acc_t lambda, int64_t num_candidates,
                 int64_t linear_search_times, uint64_t seed, uint64_t offset) {
  const int64_t numel = layout.frame_numel();
  const int64_t chunk = chunk_size_for(numel);
  const int64_t chunks = (numel + chunk - 1) / chunk;
  const int64_t units = layout.batch * chunks;
  std::vector<FrameSums> partial(static_cast<size_t>(units));
  std::vector<ComposeParams<acc_t>> params(static_cast<size_t>(layout.batch));

  for (int64_t frame = 0; frame < layout.frames; ++frame) {
    const bool need_sums = frame + 1 < layout.frames;
    at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / chunks, c = unit % chunks;
        FillChunk<scalar_t, acc_t> job;
        job.out = data + b * layout.stride_batch + frame * layout.stride_frame;
        job.layout = &layout;
        job.normals = make_normal_stream(seed, offset, b, kElementNormals, frame);
        job.next_normals = make_normal_stream(seed, offset, b, kElementNormals, frame + 1);
        job.params = frame == 0 ? nullptr : &params[static_cast<size_t>(b)];
        job.need_sums = need_sums;
        job.begin = c * chunk;
        job.end = std::min(numel, job.begin + chunk);
        partial[static_cast<size_t>(unit)] = fill_chunk(job);
      }
    });
    if (!need_sums) break;
    // The search is scalar work per batch item: threads only pay off for large batches.
    at::parallel_for(0, layout.batch, 64, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        FrameSums total{0.0, 0.0, 0.0};
        for (int64_t c = 0; c < chunks; ++c) total.add(partial[static_cast<size_t>(b * chunks + c)]);
        const NormalStream statistics = make_normal_stream(seed, offset, b, kCandidateStatistics, frame + 1);
        params[static_cast<size_t>(b)] =
            generator_search(total, numel, statistics, num_candidates, lambda, linear_search_times);
        alphas[b * layout.frames + frame + 1] = params[static_cast<size_t>(b)].alpha;
      }
    });
  }
}

}  // namespace

at::Tensor dependency_noise_fill_cpu(at::Tensor& out, double lambda_i, int64_t random_search_times,
                                     int64_t linear_search_times, int64_t frame_dim, int64_t seed, int64_t offset) {
  return run_fill(out, lambda_i, random_search_times, linear_search_times, frame_dim,
                  [&](at::Tensor& work, const NoiseOutShape& shape, at::Tensor& alphas) {
                    const FrameLayout layout = frame_layout(shape);
                    AT_DISPATCH_SWITCH(work.scalar_type(), "dependency_noise_fill_cpu",
                                       AT_DISPATCH_CASE_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, [&] {
                                         using acc_t = acc_type<scalar_t>;
                                         fill_frames<scalar_t, acc_t>(
                                             work.data_ptr<scalar_t>(), layout, alphas.data_ptr<acc_t>(),
                                             static_cast<acc_t>(lambda_i), random_search_times, linear_search_times,
                                             static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
                                       }));
                  });
}

// ----------------------------------------------------------------------------- step op on given candidates

namespace {

template <typename scalar_t, typename acc_t>
void step_frames(const scalar_t* prev, const scalar_t* candidates, scalar_t* frame, acc_t* alpha_out,
                 int64_t* index_out, int64_t batch, int64_t numel, int64_t num_candidates, acc_t lambda,
                 int64_t linear_search_times) {
  const int64_t chunk = chunk_size_for(numel);
  const int64_t chunks = std::max<int64_t>(1, (numel + chunk - 1) / chunk);
  const int64_t stats = num_candidates + 1;  // [sum w p, sum w n_0, ..., sum w n_{R-1}] per (batch, chunk)
  std::vector<double> partial(static_cast<size_t>(batch * chunks * stats), 0.0);
  const int64_t candidate_stride = batch * numel;

  // Pass 1: the statistics, per (batch item, chunk), in double.
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / chunks, c = unit % chunks;
      const int64_t e_begin = c * chunk, e_end = std::min(numel, e_begin + chunk);
      double* sums = partial.data() + unit * stats;
      const scalar_t* p = prev + b * numel;
      for (int64_t e = e_begin; e < e_end; ++e) {
        const acc_t value = static_cast<acc_t>(p[e]);
        sums[0] += weighted_term(value, value);
      }
      for (int64_t k = 0; k < num_candidates; ++k) {
        const scalar_t* n = candidates + k * candidate_stride + b * numel;
        double s = 0.0;
        for (int64_t e = e_begin; e < e_end; ++e) {
          s += weighted_term(static_cast<acc_t>(p[e]), static_cast<acc_t>(n[e]));
        }
        sums[1 + k] = s;
      }
    }
  });

  // The search per batch item, on chunk sums added in chunk order.
  std::vector<acc_t> sqrt_alpha(static_cast<size_t>(batch)), sqrt_rest(static_cast<size_t>(batch));
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> statistic(static_cast<size_t>(num_candidates));
    for (int64_t b = begin; b < end; ++b) {
      const double* sums = partial.data() + b * chunks * stats;
      double total_wp = 0.0;
      for (int64_t c = 0; c < chunks; ++c) total_wp += sums[c * stats];
      for (int64_t k = 0; k < num_candidates; ++k) {
        double total = 0.0;
        for (int64_t c = 0; c < chunks; ++c) total += sums[c * stats + 1 + k];
        statistic[static_cast<size_t>(k)] = total / static_cast<double>(numel);
      }
      const double mean_wp = total_wp / static_cast<double>(numel);
      const auto candidate_statistic = [&](int64_t k) { return statistic[static_cast<size_t>(k)]; };
      const SearchResult<acc_t> found =
          search_on_means<acc_t>(mean_wp, num_candidates, candidate_statistic, lambda, linear_search_times);
      alpha_out[b] = found.alpha;
      index_out[b] = found.index;
      sqrt_alpha[static_cast<size_t>(b)] = std::sqrt(found.alpha);
      sqrt_rest[static_cast<size_t>(b)] = std::sqrt(acc_t(1) - found.alpha);
    }
  });

  // Pass 2: the frame.
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / chunks, c = unit % chunks;
      const int64_t e_begin = c * chunk, e_end = std::min(numel, e_begin + chunk);
      const scalar_t* p = prev + b * numel;
      const scalar_t* n = candidates + index_out[b] * candidate_stride + b * numel;
      scalar_t* y = frame + b * numel;
      const acc_t sa = sqrt_alpha[static_cast<size_t>(b)], sr = sqrt_rest[static_cast<size_t>(b)];
      for (int64_t e = e_begin; e < e_end; ++e) {
        y[e] = static_cast<scalar_t>(compose_plain(static_cast<acc_t>(p[e]), static_cast<acc_t>(n[e]), sa, sr));
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> dependency_noise_step_cpu(const at::Tensor& prev,
                                                                         const at::Tensor& candidates,
                                                                         double lambda_i,
                                                                         int64_t linear_search_times) {
  return run_step(prev, candidates, lambda_i, linear_search_times,
                  [&](const at::Tensor& p, const at::Tensor& n, at::Tensor& frame, at::Tensor& alpha,
                      at::Tensor& index) {
                    const int64_t batch = p.size(0);
                    const int64_t numel = p.numel() / batch;
                    AT_DISPATCH_SWITCH(p.scalar_type(), "dependency_noise_step_cpu",
                                       AT_DISPATCH_CASE_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, [&] {
                                         using acc_t = acc_type<scalar_t>;
                                         step_frames<scalar_t, acc_t>(
                                             p.data_ptr<scalar_t>(), n.data_ptr<scalar_t>(),
                                             frame.data_ptr<scalar_t>(), alpha.data_ptr<acc_t>(),
                                             index.data_ptr<int64_t>(), batch, numel, n.size(0),
                                             static_cast<acc_t>(lambda_i), linear_search_times);
                                       }));
                  });
}

}  // namespace vidmem

TORCH_LIBRARY_IMPL(vidmem_ext, CPU, m) {
  m.impl("dependency_noise_step", &vidmem::dependency_noise_step_cpu);
  m.impl("dependency_noise_fill_", &vidmem::dependency_noise_fill_cpu);
}
