// A small CUDA execution emulator for tests: runs the project's CUDA kernels, unchanged, on the
// CPU (see ../README.md). A block's threads are cooperative fibers (ucontext) on one OS thread.
// Warps run one at a time, in a fresh pseudo-random order after every __syncthreads, each as far
// as it gets before the next starts (its warp shuffles release it at once), and its threads run in
// a fresh pseudo-random order at every barrier. So a warp runs a whole stretch between block
// barriers ahead of, or behind, the others, and code that reads shared memory without the barrier
// it needs tends to fail. Every barrier must be the same one (the same source line; a barrier in
// a helper is one line whichever call reached it) in all the threads it waits for. Shared memory
// starts every block as 0xFF bytes. Blocks run one after
// another, in the order the device setting asks for (in order, reversed, shuffled), so code that
// assumes an order of blocks tends to fail. A launch over the GPU's limits fails as on a GPU
// (cudaErrorInvalidConfiguration); a misaligned 16-byte access, a divergent barrier or a deadlock
// ends the launch with cudaErrorLaunchFailure and a message (cudaGetErrorString), and the process
// goes on.
//
// This is not CUDA: no memory model, no timing, no occupancy. It checks index math, scan
// algebra, tile and chunk bookkeeping, barrier placement, block-order independence, reads of
// shared memory before it is written and vector alignment.
#pragma once

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time, so a static is that block's shared memory. The emulator finds these
// statics in the symbol table of the module and fills them with 0xFF bytes before each block
// (shared_variables below).
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace cuda_emulation {

// Limits of current NVIDIA GPUs (compute capability 5.0 and later).
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridDimYZ = 65535;

// The __shared__ variables of the module that holds `anchor`: the writable function-local statics
// of functions whose names end in "_kernel" (the kernels have no other statics), read from the
// module's ELF symbol table: GCC ignores a section attribute on the statics of templates, so no
// linker-made range can collect them. Empty if the table cannot be read (the poisoning test fails).
struct SharedVariable {
  char* address;
  size_t bytes;
  std::string name;  // demangled
};
inline std::vector<SharedVariable> shared_variables(const void* anchor) {
  std::vector<SharedVariable> found;
  Dl_info info;
  link_map* module = nullptr;
  if (dladdr1(anchor, &info, reinterpret_cast<void**>(&module), RTLD_DL_LINKMAP) == 0 || module == nullptr) {
    return found;
  }
  std::ifstream file(info.dli_fname, std::ios::binary);
  const std::string image((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (image.size() < sizeof(Elf64_Ehdr)) return found;
  const auto* header = reinterpret_cast<const Elf64_Ehdr*>(image.data());
  if (header->e_shoff + size_t(header->e_shnum) * sizeof(Elf64_Shdr) > image.size()) return found;
  const auto* sections = reinterpret_cast<const Elf64_Shdr*>(image.data() + header->e_shoff);
  for (int i = 0; i < header->e_shnum; ++i) {
    if (sections[i].sh_type != SHT_SYMTAB || sections[i].sh_link >= header->e_shnum) continue;
    const Elf64_Shdr& names = sections[sections[i].sh_link];
    const auto* symbols = reinterpret_cast<const Elf64_Sym*>(image.data() + sections[i].sh_offset);
    for (size_t k = 0; k < sections[i].sh_size / sizeof(Elf64_Sym); ++k) {
      const Elf64_Sym& sym = symbols[k];
      // Uninitialised writable data (.bss), not thread-local.
      if (ELF64_ST_TYPE(sym.st_info) != STT_OBJECT || sym.st_size == 0 || sym.st_shndx == SHN_UNDEF ||
          sym.st_shndx >= header->e_shnum || sections[sym.st_shndx].sh_type != SHT_NOBITS ||
          (sections[sym.st_shndx].sh_flags & (SHF_WRITE | SHF_TLS)) != SHF_WRITE || sym.st_name >= names.sh_size) {
        continue;
      }
      int status = 0;
      char* demangled = abi::__cxa_demangle(image.data() + names.sh_offset + sym.st_name, nullptr, nullptr, &status);
      if (status != 0 || demangled == nullptr) continue;
      const std::string name(demangled);
      std::free(demangled);
      // "ns::name_kernel<args>(params)::variable": a plain identifier after the kernel's parameters;
      // not "guard variable for ..." and the like.
      const size_t scope = name.rfind(")::");
      const size_t kernel = name.find("_kernel");
      if (scope == std::string::npos || kernel == std::string::npos || kernel > scope ||
          name.rfind("guard variable", 0) == 0 ||
          name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", scope + 3) !=
              std::string::npos) {
        continue;
      }
      found.push_back({reinterpret_cast<char*>(module->l_addr + sym.st_value), static_cast<size_t>(sym.st_size), name});
    }
  }
  return found;
}

class Grid {
 public:
  static Grid& instance() {
    static Grid grid;
    return grid;
  }

  unsigned thread() const { return current_; }  // linear thread index in the block
  dim3 block() const { return block_index_; }
  dim3 block_dim() const { return block_dim_; }
  dim3 grid_dim() const { return grid_dim_; }

  // Barriers of the block and of the current thread's warp, at a source line.
  void sync_block(const char* file, int line) { wait_at(kAtBlockBarrier, file, line); }
  void sync_warp(const char* file, int line) { wait_at(kAtWarpBarrier, file, line); }

  uint64_t& shuffle_slot(unsigned thread) { return shuffle_slots_[thread]; }

  // The kernels' __shared__ variables, found once.
  static const std::vector<SharedVariable>& shared() {
    static const std::vector<SharedVariable> found = shared_variables(reinterpret_cast<void*>(&entry));
    return found;
  }

  // Ends the launch from inside a kernel thread: never returns to the kernel.
  [[noreturn]] void fail_in_kernel(const std::string& what) {
    if (body_ == nullptr) {
      std::fprintf(stderr, "cuda emulation: %s (outside a launch)\n", what.c_str());
      std::abort();
    }
    error_ = what;
    pool_[current_].status = kAbandoned;
    swapcontext(&pool_[current_].context, &scheduler_);
    std::abort();  // an abandoned thread is never resumed
  }

  // Runs a launch; returns cudaSuccess or the launch's error (its message in device().last_message).
  cudaError_t run(dim3 grid, dim3 block, const std::function<void()>& body) {
    const unsigned threads = block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
      return refuse(cudaErrorInvalidConfiguration, "a grid or block dimension is 0");
    }
    if (threads > kMaxThreadsPerBlock || block.z > kMaxBlockDimZ) {
      return refuse(cudaErrorInvalidConfiguration, "block of " + std::to_string(threads) + " threads (at most " +
                                                       std::to_string(kMaxThreadsPerBlock) + ")");
    }
    const unsigned max_x = static_cast<unsigned>(device().max_grid_x);
    const unsigned max_y = static_cast<unsigned>(device().max_grid_y);
    if (grid.x > max_x || grid.y > max_y || grid.z > kMaxGridDimYZ) {
      return refuse(cudaErrorInvalidConfiguration, "grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) +
                                                       ", " + std::to_string(grid.z) + ") over the device's limits");
    }
    if (threads % 32 != 0) return refuse(cudaErrorInvalidConfiguration, "emulated blocks are whole warps");
    if (body_ != nullptr) return refuse(cudaErrorLaunchFailure, "nested launch");
    grid_dim_ = grid;
    block_dim_ = block;
    threads_ = threads;
    body_ = &body;
    error_.clear();
    if (pool_.size() < threads) pool_.resize(threads);
    at_warp_barrier_.assign(threads / 32, 0);
    shuffle_slots_.assign(threads, 0);
    std::vector<uint64_t> blocks(static_cast<size_t>(grid.x) * grid.y * grid.z);
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = i;
    if (device().block_order == BlockOrder::kReversed) {
      for (size_t i = 0; i < blocks.size() / 2; ++i) std::swap(blocks[i], blocks[blocks.size() - 1 - i]);
    } else if (device().block_order == BlockOrder::kShuffled) {
      shuffle(blocks);
    }
    for (const uint64_t linear : blocks) {
      block_index_ = dim3(static_cast<unsigned>(linear % grid.x), static_cast<unsigned>(linear / grid.x % grid.y),
                          static_cast<unsigned>(linear / grid.x / grid.y));
      if (!run_block()) break;
    }
    body_ = nullptr;
    if (!error_.empty()) return refuse(cudaErrorLaunchFailure, error_);
    return cudaSuccess;
  }

 private:
  enum Status { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone, kAbandoned };
  struct Thread {
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    Status status = kDone;
    const char* file = "";  // the barrier it waits at
    int line = 0;
  };
  static constexpr size_t kStackBytes = 256 * 1024;

  void wait_at(Status barrier, const char* file, int line) {
    Thread& th = pool_[current_];
    th.status = barrier;
    th.file = file;
    th.line = line;
    if (barrier == kAtBlockBarrier) {
      ++at_block_barrier_;
    } else {
      ++at_warp_barrier_[current_ / 32];
    }
    yield();
  }

  static cudaError_t refuse(cudaError_t error, const std::string& what) {
    device().last_message = "cuda emulation: " + what;
    return error;
  }

  // One block; false when the launch failed.
  bool run_block() {
    for (const SharedVariable& v : shared()) std::memset(v.address, 0xFF, v.bytes);
    for (unsigned t = 0; t < threads_; ++t) start(t);
    at_block_barrier_ = 0;
    std::vector<unsigned> warps(threads_ / 32), lanes(32);
    unsigned done = 0;
    while (done < threads_) {
      bool ran = false;
      shuffle(warps);
      for (const unsigned w : warps) {
        // Warp w as far as it gets: until its threads wait at a __syncthreads or are done.
        for (;;) {
          shuffle(lanes);
          for (const unsigned lane : lanes) {
            const unsigned t = w * 32 + lane;
            if (pool_[t].status != kReady) continue;
            current_ = t;
            swapcontext(&scheduler_, &pool_[t].context);
            if (!error_.empty()) return false;
            ran = true;
            if (pool_[t].status == kDone) ++done;
          }
          if (at_warp_barrier_[w] < 32) break;
          if (!same_barrier(w * 32, w * 32 + 32, "shuffle")) return false;
          for (unsigned t = w * 32; t < w * 32 + 32; ++t) pool_[t].status = kReady;
          at_warp_barrier_[w] = 0;
        }
      }
      if (done == threads_) break;
      if (at_block_barrier_ == threads_) {
        if (!same_barrier(0, threads_, "__syncthreads")) return false;
        for (unsigned t = 0; t < threads_; ++t) pool_[t].status = kReady;
        at_block_barrier_ = 0;
      } else if (!ran) {
        error_ = "deadlock: threads wait at a __syncthreads or shuffle that not all threads of the block reach";
        return false;
      }
    }
    return true;
  }

  // Whether threads [begin, end), all waiting at a barrier, wait at the same one; else the error.
  bool same_barrier(unsigned begin, unsigned end, const char* what) {
    for (unsigned t = begin + 1; t < end; ++t) {
      if (pool_[t].line != pool_[begin].line || std::strcmp(pool_[t].file, pool_[begin].file) != 0) {
        error_ = std::string("divergent barrier: threads wait at different ") + what + " calls (" + pool_[begin].file +
                 ":" + std::to_string(pool_[begin].line) + " and " + pool_[t].file + ":" + std::to_string(pool_[t].line) +
                 ")";
        return false;
      }
    }
    return true;
  }

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

  template <typename T>
  void shuffle(std::vector<T>& items) {
    for (size_t i = 0; i < items.size(); ++i) items[i] = static_cast<T>(i);
    for (size_t i = items.size(); i > 1; --i) {
      rng_ = rng_ * 6364136223846793005ull + 1442695040888963407ull;
      const size_t j = static_cast<size_t>((rng_ >> 33) % i);
      std::swap(items[i - 1], items[j]);
    }
  }

  std::vector<Thread> pool_;
  ucontext_t scheduler_;
  const std::function<void()>* body_ = nullptr;
  std::string error_;
  dim3 grid_dim_, block_dim_, block_index_;
  unsigned threads_ = 0, current_ = 0;
  unsigned at_block_barrier_ = 0;
  std::vector<unsigned> at_warp_barrier_;
  std::vector<uint64_t> shuffle_slots_;
  uint64_t rng_ = 0x853c49e6748fea9bull;
};

// A launch: the result is what cudaGetLastError() reports next, as after <<<...>>>.
template <typename F>
void launch(dim3 grid, dim3 block, F&& body) {
  const std::function<void()> fn(std::forward<F>(body));
  const cudaError_t status = Grid::instance().run(grid, block, fn);
  if (status != cudaSuccess) device().last_error = status;
}

inline uint3 thread_idx() {
  const dim3 b = Grid::instance().block_dim();
  const unsigned t = Grid::instance().thread();
  return uint3{t % b.x, t / b.x % b.y, t / b.x / b.y};
}
inline uint3 block_idx() {
  const dim3 b = Grid::instance().block();
  return uint3{b.x, b.y, b.z};
}
inline dim3 block_dim() { return Grid::instance().block_dim(); }
inline dim3 grid_dim() { return Grid::instance().grid_dim(); }

// Lane `src` of this warp's value (own value when src < 0), as a warp shuffle: the bits travel
// unchanged (64-bit integers and doubles included).
template <typename T>
T shuffle_from(const char* file, int line, T value, int src) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(uint64_t), "shuffles move <= 8 bytes");
  Grid& g = Grid::instance();
  const unsigned t = g.thread();
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  g.shuffle_slot(t) = bits;
  g.sync_warp(file, line);
  T result = value;
  if (src >= 0) {
    const uint64_t theirs = g.shuffle_slot((t / 32) * 32 + static_cast<unsigned>(src));
    std::memcpy(&result, &theirs, sizeof(T));
  }
  g.sync_warp(file, line);
  return result;
}

inline void check_full_mask(unsigned mask) {
  if (mask != 0xffffffffu) Grid::instance().fail_in_kernel("only full-warp shuffles are emulated");
}

inline void check_aligned16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) Grid::instance().fail_in_kernel("misaligned 16-byte access");
}

}  // namespace cuda_emulation

#define threadIdx (::cuda_emulation::thread_idx())
#define blockIdx (::cuda_emulation::block_idx())
#define blockDim (::cuda_emulation::block_dim())
#define gridDim (::cuda_emulation::grid_dim())

// Barriers record their source line: every thread a barrier waits for must wait at the same one.
#define __syncthreads() ::cuda_emulation::Grid::instance().sync_block(__FILE__, __LINE__)

// Blocks run one at a time on one OS thread, so every write is visible to the next block.
inline void __threadfence() {}

template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

template <typename T>
T __ldcg(const T* p) {
  return *p;
}

namespace cuda_emulation {

template <typename T>
T shfl_up_sync(const char* file, int line, unsigned mask, T value, int delta) {
  check_full_mask(mask);
  const int lane = static_cast<int>(Grid::instance().thread() % 32);
  return shuffle_from(file, line, value, lane >= delta ? lane - delta : -1);
}

template <typename T>
T shfl_down_sync(const char* file, int line, unsigned mask, T value, int delta) {
  check_full_mask(mask);
  const int lane = static_cast<int>(Grid::instance().thread() % 32);
  return shuffle_from(file, line, value, lane + delta < 32 ? lane + delta : -1);
}

template <typename T>
T shfl_xor_sync(const char* file, int line, unsigned mask, T value, int lane_mask) {
  check_full_mask(mask);
  const int lane = static_cast<int>(Grid::instance().thread() % 32);
  const int src = lane ^ lane_mask;
  return shuffle_from(file, line, value, src < 32 ? src : -1);
}

}  // namespace cuda_emulation

#define __shfl_up_sync(...) ::cuda_emulation::shfl_up_sync(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuda_emulation::shfl_down_sync(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_emulation::shfl_xor_sync(__FILE__, __LINE__, __VA_ARGS__)

inline uint4 __ldg(const uint4* p) {
  cuda_emulation::check_aligned16(p);
  return *p;
}

inline void __stwb(uint4* p, uint4 value) {
  cuda_emulation::check_aligned16(p);
  *p = value;
}
