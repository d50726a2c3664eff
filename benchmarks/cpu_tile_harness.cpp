// The frames-last forward tile kernel of temporal momentum (bf16, AVX-512 BF16 table), called
// directly from C++ with no torch tensors around it. It times the kernel alone, against a memcpy
// of the same bytes, so that kernel changes can be compared per 16 x 16 tile without the Python
// call and the output allocation. docs/cpu_kernels.md ("What binds the half-type frames-last
// tiles") cites its figures. It also checks the output bit for bit against a scalar loop. The
// CPU must have AVX-512 BF16.
//
// Build from the repository root (TORCH_INCLUDE: torch.utils.cpp_extension.include_paths(),
// TORCH_LIB: torch's lib folder):
//   g++ -O3 -ffp-contract=off -std=c++20 -Icsrc -I$TORCH_INCLUDE
//     -I$TORCH_INCLUDE/torch/csrc/api/include benchmarks/cpu_tile_harness.cpp
//     csrc/temporal_momentum/temporal_momentum_cpu_avx512_bf16.cpp
//     -L$TORCH_LIB -lc10 -Wl,-rpath,$TORCH_LIB -o cpu_tile_harness
// (one command). Run: cpu_tile_harness [lanes = 8192] [outputs used in turn = 2; 0: a fresh
// allocation per call, whose page faults count when glibc maps it anew] [output offset within a
// page, bytes = 0]
// Runs of the same binary differ by up to 1.8x between processes on a shared VM: compare
// variants in alternating processes, several rounds.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "temporal_momentum/temporal_momentum_cpu_simd.h"

using vidmem::momentum::cpu::ForwardJob;
using BFloat16 = c10::BFloat16;

namespace {

constexpr int64_t kFrames = 16;  // one tile per row
constexpr int kCalls = 3000;
constexpr float kMomentum = 0.98f;

// A forward job over `lanes` rows of kFrames contiguous frames: float momentum, no initial.
ForwardJob<BFloat16> frames_last_job(const BFloat16* x, BFloat16* y, int64_t lanes, float* state) {
  ForwardJob<BFloat16> job{};
  job.x = x;
  job.y = y;
  job.lanes = lanes;
  job.x_lane_stride = job.y_lane_stride = kFrames;
  job.x_frame_stride = job.y_frame_stride = 1;
  job.t_begin = 0;
  job.t_end = kFrames;
  job.reset_at_frame0 = true;
  job.non_temporal = false;
  job.m = nullptr;
  job.m_value = kMomentum;
  job.state = state;
  return job;
}

// Page-aligned room for `bytes` plus an offset of up to a page (aligned_alloc wants a multiple of
// the alignment).
char* allocate_pages(size_t bytes) {
  return static_cast<char*>(std::aligned_alloc(4096, (bytes + 2 * 4096 - 1) / 4096 * 4096));
}

double quartile_us(std::vector<double> times) {
  std::sort(times.begin(), times.end());
  return times[times.size() / 4];
}

}  // namespace

int main(int argc, char** argv) {
#if defined(VIDMEM_X86_SIMD)
  if (!__builtin_cpu_supports("avx512bf16")) {
    std::fprintf(stderr, "this CPU lacks AVX-512 BF16\n");
    return 1;
  }
  const int64_t lanes = argc > 1 ? std::atoll(argv[1]) : 8192;
  const int outputs = argc > 2 ? std::atoi(argv[2]) : 2;
  const int64_t offset = argc > 3 ? std::atoll(argv[3]) : 0;
  if (lanes < 16 || outputs < 0 || offset < 0 || offset % 64 != 0 || offset >= 4096) {
    std::fprintf(stderr, "lanes >= 16, outputs >= 0, offset a multiple of 64 below 4096\n");
    return 1;
  }
  const size_t bytes = size_t(lanes * kFrames) * sizeof(BFloat16);
  const auto table = vidmem::momentum::cpu::avx512_bf16::make_table<BFloat16>();

  auto* x = reinterpret_cast<BFloat16*>(allocate_pages(bytes));
  for (int64_t i = 0; i < lanes * kFrames; ++i) x[i] = BFloat16(float(std::rand() % 2001) / 1000.0f - 1.0f);
  std::vector<char*> blocks;
  for (int i = 0; i < outputs; ++i) blocks.push_back(allocate_pages(bytes));
  auto output = [&](int call, char*& fresh) {
    if (outputs > 0) return reinterpret_cast<BFloat16*>(blocks[call % outputs] + offset);
    fresh = allocate_pages(bytes);
    return reinterpret_cast<BFloat16*>(fresh + offset);
  };
  std::vector<float> state(lanes + 16);  // whole vectors: the kernel pads the last group

  // First the output against the shared scalar step (ema_step in fp32, built without contraction
  // like the kernels), bit for bit: a timing of wrong code is worthless.
  std::vector<BFloat16> y(lanes * kFrames);
  table.forward_tiles[0][0](frames_last_job(x, y.data(), lanes, state.data()));  // float momentum, no exact endpoints
  const float m = kMomentum, c = 1.0f - m;
  for (int64_t lane = 0; lane < lanes; ++lane) {
    float s = 0.0f;
    for (int64_t t = 0; t < kFrames; ++t) {
      const float v = float(x[lane * kFrames + t]);
      s = t == 0 ? v : vidmem::momentum::ema_step(m, c, s, v);
      if (BFloat16(s).x != y[lane * kFrames + t].x) {
        std::fprintf(stderr, "lane %lld frame %lld: kernel %g, scalar %g\n", static_cast<long long>(lane),
                     static_cast<long long>(t), double(float(y[lane * kFrames + t])), double(s));
        return 1;
      }
    }
  }

  std::vector<double> kernel_us, memcpy_us;
  for (int call = 0; call < kCalls; ++call) {
    char* fresh = nullptr;
    const ForwardJob<BFloat16> job = frames_last_job(x, output(call, fresh), lanes, state.data());
    const auto start = std::chrono::steady_clock::now();
    table.forward_tiles[0][0](job);
    kernel_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
    std::free(fresh);
  }
  for (int call = 0; call < kCalls; ++call) {
    char* fresh = nullptr;
    BFloat16* out = output(call, fresh);
    const auto start = std::chrono::steady_clock::now();
    std::memcpy(out, x, bytes);
    memcpy_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
    std::free(fresh);
  }

  const double kernel = quartile_us(kernel_us);
  std::printf("%lld lanes x %lld bf16 frames, %d outputs, offset %lld: kernel %.1f us (%.1f ns per tile), memcpy %.1f us "
              "(25th percentiles of %d calls)\n",
              static_cast<long long>(lanes), static_cast<long long>(kFrames), outputs, static_cast<long long>(offset),
              kernel, kernel * 1000.0 / double(lanes / 16), quartile_us(memcpy_us), kCalls);
  for (char* block : blocks) std::free(block);
  std::free(reinterpret_cast<char*>(x));
  return 0;
#else
  std::fprintf(stderr, "built without the x86 SIMD kernels\n");
  return 1;
#endif
}
