// When the CPU momentum kernels stream their outputs: the cache sizes from Linux's sysfs, and the
// probe that measures, once per process, from what size streaming stores beat cached ones here.
#include "temporal_momentum/temporal_momentum_cpu_streaming.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#define VIDMEM_STREAMING_PROBE 1
#else
#define VIDMEM_STREAMING_PROBE 0
#endif

namespace vidmem {
namespace momentum {
namespace {

constexpr int64_t kMiB = int64_t(1) << 20;

// The largest cache of the given level (0: any level) that cpu0 sees. sysfs describes the cache
// instance (e.g. one CCX's L3); sysconf may report the whole package (ten times more on a
// many-chiplet EPYC).
int64_t cache_bytes_from_sysfs(int level) {
  int64_t best = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    if (level > 0) {
      std::FILE* file = std::fopen((dir + "level").c_str(), "r");
      if (file == nullptr) continue;
      int found = 0;
      const int read = std::fscanf(file, "%d", &found);
      std::fclose(file);
      if (read != 1 || found != level) continue;
    }
    std::FILE* file = std::fopen((dir + "size").c_str(), "r");
    if (file == nullptr) continue;
    long long value = 0;
    char unit = 0;
    const int read = std::fscanf(file, "%lld%c", &value, &unit);
    std::fclose(file);
    if (read < 1 || value <= 0) continue;
    const int64_t bytes = unit == 'K' ? value << 10 : unit == 'M' ? value << 20 : unit == 'G' ? value << 30 : value;
    best = std::max(best, bytes);
  }
  return best;
}

// Calls that move no more than this never stream: they fit one core's private cache.
int64_t private_cache_bytes() {
  static const int64_t bytes = std::max(kMiB, cache_bytes_from_sysfs(2));
  return bytes;
}

// Calls that move more than this always stream (half the last-level cache: what the kernels used
// before the probe, and the most that can stay cached beside the next op's data).
int64_t always_streaming_bytes() {
  static const int64_t bytes = [] {
    int64_t size = cache_bytes_from_sysfs(0);
#if defined(_SC_LEVEL3_CACHE_SIZE)
    if (size <= 0) size = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    if (size <= 0) size = 32 * kMiB;  // unknown: a common L3 size
    return std::max(private_cache_bytes(), size / 2);
  }();
  return bytes;
}

#if VIDMEM_STREAMING_PROBE
// One pass of dst = src + 1 (the op's shape of work: read a line, write a line; the add keeps the
// compiler from turning the loop into memcpy, which picks its own stores), in seconds.
template <bool kStream>
double timed_pass(const __m128i* src, __m128i* dst, int64_t vectors) {
  const auto start = std::chrono::steady_clock::now();
  const __m128i one = _mm_set1_epi32(1);
  for (int64_t i = 0; i < vectors; i += 4) {
    for (int64_t k = 0; k < 4; ++k) {
      const __m128i v = _mm_add_epi32(_mm_load_si128(src + i + k), one);
      if constexpr (kStream) {
        _mm_stream_si128(dst + i + k, v);
      } else {
        _mm_store_si128(dst + i + k, v);
      }
    }
  }
  if constexpr (kStream) _mm_sfence();
  asm volatile("" : : "r"(dst) : "memory");  // the stores count as read: they may not be dropped
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Whether streaming stores beat cached ones by 10% on repeated passes over `bytes_moved` bytes
// (half read, half written): the two kinds of pass alternate, and the median of the per-pair time
// ratios decides (a pair shares the load of the moment, which drifts on a shared VM), after a
// warm-up pair.
bool streaming_wins(int64_t bytes_moved) {
  const int64_t half = bytes_moved / 2 / 64 * 64;
  auto* src = static_cast<__m128i*>(std::aligned_alloc(64, half));
  auto* dst = static_cast<__m128i*>(std::aligned_alloc(64, half));
  bool wins = false;
  if (src != nullptr && dst != nullptr) {
    std::memset(src, 1, half);
    std::memset(dst, 0, half);
    constexpr int kPairs = 7;
    std::array<double, kPairs> ratios{};
    for (int pair = -1; pair < kPairs; ++pair) {
      const bool stream_first = (pair & 1) != 0;
      const double first = stream_first ? timed_pass<true>(src, dst, half / 16) : timed_pass<false>(src, dst, half / 16);
      const double second = stream_first ? timed_pass<false>(src, dst, half / 16) : timed_pass<true>(src, dst, half / 16);
      if (pair >= 0) ratios[pair] = stream_first ? first / second : second / first;  // streamed / cached
    }
    std::sort(ratios.begin(), ratios.end());
    wins = ratios[kPairs / 2] < 0.9;
  }
  std::free(src);
  std::free(dst);
  return wins;
}

// The largest size that still stays cached: probe sizes doubling from twice the private cache up
// to the always-streaming size, and take half the smallest size from which streaming wins at every
// size probed. A win must hold at all larger sizes because on a shared VM a cached pass now and then
// runs slowly (a neighbour's data in the last-level cache): the first rule here, the first two wins
// in a row, put the threshold anywhere from 2 to 16 MiB on the AMD VM in successive processes.
// The sizes are walked from the largest down, and the walk stops at the first loss: a win counts
// only with wins at every larger size, so no smaller size can change the result. Streaming losing
// at the top size, or no size to probe: the old threshold, half the last-level cache.
int64_t measured_threshold() {
  const int64_t hi = always_streaming_bytes();
  const int64_t lo = 2 * private_cache_bytes();
  if (lo > hi) return hi;
  int64_t top = lo;
  while (top * 2 <= hi) top *= 2;
  int64_t threshold = hi;
  for (int64_t size = top; size >= lo && streaming_wins(size); size /= 2) threshold = size / 2;
  return threshold;
}
#endif

int64_t env_threshold(const char* env) {
  char* end = nullptr;
  const long long value = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(end != env && *end == '\0' && value >= 0,
                    "VIDMEM_EXT_CPU_STREAMING_BYTES must be a byte count >= 0, got '", env, "'");
  return static_cast<int64_t>(value);
}

int64_t probed_threshold() {
#if VIDMEM_STREAMING_PROBE
  static const int64_t bytes = measured_threshold();  // thread-safe, once per process
  return bytes;
#else
  return always_streaming_bytes();
#endif
}

const char* streaming_env() {
  const char* env = std::getenv("VIDMEM_EXT_CPU_STREAMING_BYTES");
  return env != nullptr && *env != '\0' ? env : nullptr;
}

}  // namespace

bool stream_outputs(int64_t bytes_moved) {
  if (const char* env = streaming_env()) return bytes_moved > env_threshold(env);
  if (bytes_moved <= private_cache_bytes()) return false;
  if (bytes_moved > always_streaming_bytes()) return true;
  return bytes_moved > probed_threshold();
}

StreamingPolicy streaming_policy() {
  if (const char* env = streaming_env()) return {env_threshold(env), "VIDMEM_EXT_CPU_STREAMING_BYTES"};
  return {probed_threshold(), VIDMEM_STREAMING_PROBE ? "measured" : "cache size"};
}

}  // namespace momentum
}  // namespace vidmem
