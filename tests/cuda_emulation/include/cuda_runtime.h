// A small CUDA execution emulator for tests: runs the project's CUDA kernels, unchanged, on the
// CPU (see ../README.md). A block's threads are cooperative fibers (ucontext) on one OS thread;
// __syncthreads and warp shuffles are barriers between them, and every barrier pass runs the
// waiting threads in a fresh pseudo-random order, so code that reads shared memory without the
// barrier it needs tends to fail. Blocks run one after another. Misaligned 16-byte accesses,
// divergent barriers and deadlocks abort with a message.
//
// This is not CUDA: no memory model, no timing, no occupancy. It checks index math, scan
// algebra, tile and chunk bookkeeping, barrier placement and vector alignment.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time, so a static is that block's shared memory

struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace cuda_emulation {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

class Grid {
 public:
  static Grid& instance() {
    static Grid grid;
    return grid;
  }

  unsigned thread() const { return current_; }
  unsigned block() const { return block_; }
  unsigned block_size() const { return threads_; }
  unsigned grid_size() const { return grid_; }

  void sync_block() {
    pool_[current_].status = kAtBlockBarrier;
    ++at_block_barrier_;
    yield();
  }

  void sync_warp() {
    pool_[current_].status = kAtWarpBarrier;
    ++at_warp_barrier_[current_ / 32];
    yield();
  }

  double& shuffle_slot(unsigned thread) { return shuffle_slots_[thread]; }

  void run(unsigned grid_size, unsigned block_size, const std::function<void()>& body) {
    if (block_size == 0 || block_size % 32 != 0) fail("block size must be a positive multiple of 32");
    if (body_ != nullptr) fail("nested launch");
    grid_ = grid_size;
    threads_ = block_size;
    body_ = &body;
    if (pool_.size() < block_size) pool_.resize(block_size);
    at_warp_barrier_.assign(block_size / 32, 0);
    shuffle_slots_.assign(block_size, 0.0);
    std::vector<unsigned> order(block_size);
    for (block_ = 0; block_ < grid_; ++block_) {
      for (unsigned t = 0; t < threads_; ++t) start(t);
      at_block_barrier_ = 0;
      unsigned done = 0;
      while (done < threads_) {
        bool ran = false;
        shuffle_order(order);
        for (unsigned t : order) {
          if (pool_[t].status != kReady) continue;
          current_ = t;
          swapcontext(&scheduler_, &pool_[t].context);
          ran = true;
          if (pool_[t].status == kDone) ++done;
        }
        if (done == threads_) break;
        bool released = false;
        if (at_block_barrier_ == threads_) {
          for (unsigned t = 0; t < threads_; ++t) pool_[t].status = kReady;
          at_block_barrier_ = 0;
          released = true;
        }
        for (unsigned w = 0; w < threads_ / 32; ++w) {
          if (at_warp_barrier_[w] == 32) {
            for (unsigned t = w * 32; t < w * 32 + 32; ++t) pool_[t].status = kReady;
            at_warp_barrier_[w] = 0;
            released = true;
          }
        }
        if (!ran && !released) fail("deadlock: threads wait at a __syncthreads or shuffle that not all reach");
      }
    }
    body_ = nullptr;
  }

 private:
  enum Status { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };
  struct Thread {
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    Status status = kDone;
  };
  static constexpr size_t kStackBytes = 256 * 1024;

  static void entry() {
    Grid& g = instance();
    (*g.body_)();
    g.pool_[g.current_].status = kDone;
    swapcontext(&g.pool_[g.current_].context, &g.scheduler_);
  }

  void start(unsigned t) {
    Thread& th = pool_[t];
    if (!th.stack) th.stack.reset(new char[kStackBytes]);
    getcontext(&th.context);
    th.context.uc_stack.ss_sp = th.stack.get();
    th.context.uc_stack.ss_size = kStackBytes;
    th.context.uc_link = nullptr;
    makecontext(&th.context, &Grid::entry, 0);
    th.status = kReady;
  }

  void yield() { swapcontext(&pool_[current_].context, &scheduler_); }

  void shuffle_order(std::vector<unsigned>& order) {
    for (unsigned i = 0; i < order.size(); ++i) order[i] = i;
    for (unsigned i = static_cast<unsigned>(order.size()); i > 1; --i) {
      rng_ = rng_ * 6364136223846793005ull + 1442695040888963407ull;
      const unsigned j = static_cast<unsigned>((rng_ >> 33) % i);
      const unsigned tmp = order[i - 1];
      order[i - 1] = order[j];
      order[j] = tmp;
    }
  }

  std::vector<Thread> pool_;
  ucontext_t scheduler_;
  const std::function<void()>* body_ = nullptr;
  unsigned threads_ = 0, grid_ = 0, block_ = 0, current_ = 0;
  unsigned at_block_barrier_ = 0;
  std::vector<unsigned> at_warp_barrier_;
  std::vector<double> shuffle_slots_;
  uint64_t rng_ = 0x853c49e6748fea9bull;
};

template <typename F>
void launch(unsigned grid, unsigned block, F&& body) {
  const std::function<void()> fn(std::forward<F>(body));
  Grid::instance().run(grid, block, fn);
}

inline uint3 thread_idx() { return uint3{Grid::instance().thread(), 0, 0}; }
inline uint3 block_idx() { return uint3{Grid::instance().block(), 0, 0}; }
inline uint3 block_dim() { return uint3{Grid::instance().block_size(), 1, 1}; }
inline uint3 grid_dim() { return uint3{Grid::instance().grid_size(), 1, 1}; }

// Lane `src` of this warp's value (own value when src < 0), as a warp shuffle.
template <typename T>
T shuffle_from(T value, int src) {
  Grid& g = Grid::instance();
  const unsigned t = g.thread();
  g.shuffle_slot(t) = static_cast<double>(value);  // exact for float and double
  g.sync_warp();
  const T result = src < 0 ? value : static_cast<T>(g.shuffle_slot((t / 32) * 32 + static_cast<unsigned>(src)));
  g.sync_warp();
  return result;
}

inline void check_full_mask(unsigned mask) {
  if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated");
}

inline void check_aligned16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("misaligned 16-byte access");
}

}  // namespace cuda_emulation

#define threadIdx (::cuda_emulation::thread_idx())
#define blockIdx (::cuda_emulation::block_idx())
#define blockDim (::cuda_emulation::block_dim())
#define gridDim (::cuda_emulation::grid_dim())

inline void __syncthreads() { cuda_emulation::Grid::instance().sync_block(); }

template <typename T>
T __shfl_up_sync(unsigned mask, T value, int delta) {
  cuda_emulation::check_full_mask(mask);
  const int lane = static_cast<int>(cuda_emulation::Grid::instance().thread() % 32);
  return cuda_emulation::shuffle_from(value, lane >= delta ? lane - delta : -1);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, int delta) {
  cuda_emulation::check_full_mask(mask);
  const int lane = static_cast<int>(cuda_emulation::Grid::instance().thread() % 32);
  return cuda_emulation::shuffle_from(value, lane + delta < 32 ? lane + delta : -1);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  cuda_emulation::check_full_mask(mask);
  const int lane = static_cast<int>(cuda_emulation::Grid::instance().thread() % 32);
  const int src = lane ^ lane_mask;
  return cuda_emulation::shuffle_from(value, src < 32 ? src : -1);
}

inline uint4 __ldg(const uint4* p) {
  cuda_emulation::check_aligned16(p);
  return *p;
}

inline void __stwb(uint4* p, uint4 value) {
  cuda_emulation::check_aligned16(p);
  *p = value;
}
