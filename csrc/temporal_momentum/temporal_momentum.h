// Temporal momentum (docs/semantics.md, "Temporal momentum"): the math and the lane layout shared by the
// C++ CPU kernel and the CUDA kernels. No torch headers here (nvcc compiles the .cu files
// that include this file against a CPU-only torch).
//
//   y_0 = m * s + (1 - m) * x_0     (s = initial; without one y_0 = x_0: frame 0 is a reset)
//   y_t = m * y_{t-1} + (1 - m) * x_t
//   backward: a_t = dy_t + m * a_{t+1} (a_F = 0); dx_t = (1 - m) a_t, except dx_0 = a_0 without
//   initial; d(initial) = m a_0; dm = sum_t a_t (y_{t-1} - x_t) with y_{-1} = s.
//
// A tensor is viewed as frames x lanes: the frame axis `dim`, and the lanes, every other axis.
// Lane axes that are adjacent in memory for every tensor involved are collapsed into one, so
// permuted and sliced views need no copy. The last collapsed lane axis is the innermost (the
// smallest stride of the output); when its stride is 1 the kernels vectorize along it.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <cmath>

#include "common/macros.h"

namespace vidmem {
namespace momentum {

// Lane axes left after collapsing; more than this and the host makes contiguous copies.
constexpr int kMaxLaneDims = 6;

// The tensors one kernel call may touch. Full operands have x's shape (they have a frame
// stride); slice operands have the frame-slice shape (frame stride 0).
enum Operand : int {
  kX = 0,
  kY,
  kGradY,
  kGradX,
  kMomentum,      // broadcast to the frame slice: stride 0 along broadcast axes
  kInitial,
  kGradInitial,
  kGradMomentum,  // per lane, the frame-slice shape
  kNumOperands
};

struct Layout {
  int64_t frames;
  int64_t lanes;  // product of size[0 .. dims)
  int dims;       // collapsed lane axes, >= 1; size[dims - 1] is the innermost
  int64_t size[kMaxLaneDims];
  int64_t frame_stride[kNumOperands];
  int64_t stride[kNumOperands][kMaxLaneDims];
};

// Coordinates of a lane (row-major over the collapsed lane axes).
struct LaneCoords {
  int64_t index[kMaxLaneDims];
};

VIDMEM_HD LaneCoords lane_coords(const Layout& layout, int64_t lane) {
  LaneCoords c;
VIDMEM_UNROLL
  for (int d = kMaxLaneDims - 1; d >= 0; --d) {
    if (d < layout.dims) {
      const int64_t size = layout.size[d];
      if (((static_cast<uint64_t>(lane) | static_cast<uint64_t>(size)) >> 32) == 0) {  // 32-bit division is cheaper
        const uint32_t l = static_cast<uint32_t>(lane), s = static_cast<uint32_t>(size);
        c.index[d] = l % s;
        lane = l / s;
      } else {
        c.index[d] = lane % size;
        lane /= size;
      }
    } else {
      c.index[d] = 0;
    }
  }
  return c;
}

// Element offset of a lane's frame 0 in one operand.
VIDMEM_HD int64_t lane_offset(const Layout& layout, int op, const LaneCoords& c) {
  int64_t offset = 0;
VIDMEM_UNROLL
  for (int d = 0; d < kMaxLaneDims; ++d) {
    if (d < layout.dims) offset += c.index[d] * layout.stride[op][d];
  }
  return offset;
}

VIDMEM_HD int64_t inner_stride(const Layout& layout, int op) { return layout.stride[op][layout.dims - 1]; }

// ---------------------------------------------------------------------------- per-element math

// Momentum exactly 0 or 1 is exact (docs/errors.md): m = 0 returns x and m = 1 returns the state
// bit for bit, so a non-finite value elsewhere in the lane cannot leak in through 0 * inf = NaN.
// m is constant along a lane, and every output (and every a_t) of a lane comes out of ema_step /
// ema_reverse_step, so a NaN that a scan of pairs or a chunk carry builds for an m = 0 lane is
// discarded there. For 0 < m < 1 non-finite values propagate forward as IEEE arithmetic says.

// One forward step: the new state from the previous state and the frame.
template <typename acc_t>
VIDMEM_HD acc_t ema_step(acc_t m, acc_t one_minus_m, acc_t prev, acc_t x) {
  return m == acc_t(0) ? x : (m == acc_t(1) ? prev : m * prev + one_minus_m * x);
}

// One backward step: a_t from a_{t+1} and dy_t.
template <typename acc_t>
VIDMEM_HD acc_t ema_reverse_step(acc_t m, acc_t next, acc_t grad_y) {
  return m == acc_t(0) ? grad_y : grad_y + m * next;
}

// dx_t = (1 - m) a_t; exactly 0 for m = 1 (y_t = y_0 does not depend on x_t), whatever a_t is.
template <typename acc_t>
VIDMEM_HD acc_t ema_input_grad(acc_t m, acc_t one_minus_m, acc_t a) {
  return m == acc_t(1) ? acc_t(0) : one_minus_m * a;
}

// An affine map state -> decay * state + value. A run of steps composes into one such map,
// so a scan over frames is a scan of these pairs (the chunked kernels use it for carries).
template <typename acc_t>
struct ScanPair {
  acc_t decay;
  acc_t value;
};

// d initial = m * a_0. A lane with m = 0 ignores initial, so its gradient is exactly 0, also where
// a_0 is infinite or NaN (where m * a_0 would be NaN).
template <typename acc_t>
VIDMEM_HD acc_t initial_grad(acc_t m, acc_t a) {
  return m == acc_t(0) ? acc_t(0) : m * a;
}

// The state that composing runs of frames starts from: -0.0, the exact additive identity
// (x + -0.0 == x bit for bit for every x; +0.0 would turn a -0.0 into +0.0, and a momentum-1
// lane whose frame 0 or initial is -0.0 must repeat it bit for bit).
template <typename acc_t>
VIDMEM_HD constexpr acc_t zero_state() {
  return -acc_t(0);
}

// The map of one forward step (ema_step as a pair); for m = 1 the value is exactly 0, not 0 * x.
template <typename acc_t>
VIDMEM_HD ScanPair<acc_t> ema_pair(acc_t m, acc_t one_minus_m, acc_t x) {
  return ScanPair<acc_t>{m, m == acc_t(1) ? zero_state<acc_t>() : one_minus_m * x};
}

template <typename acc_t>
VIDMEM_HD ScanPair<acc_t> scan_identity() {
  return ScanPair<acc_t>{acc_t(1), zero_state<acc_t>()};
}

// decay * state, where decay stands for n steps' momenta multiplied (m^n for a constant m). Over
// long runs it underflows to 0 (or, for m > 1, overflows to inf) although no step's factor did:
// then an infinite state times 0 (or a zero state times inf) would give NaN where the n steps keep
// the state infinite (or zero). It gives that state, with the product's sign. (A decay that is 0
// because m = 0 also keeps an infinite state here; such lanes' outputs ignore the state.)
template <typename acc_t>
VIDMEM_HD acc_t decay_times(acc_t decay, acc_t state) {
  const acc_t product = decay * state;
  const bool zero_times_inf = product != product && decay == decay && state == state;
  return zero_times_inf ? std::copysign(state, decay * std::copysign(acc_t(1), state)) : product;
}

// The decay of two runs in turn. A 0 (frame 0's reset, or m = 0) times an overflowed m^n (m > 1)
// is 0: the reset discards the state whatever follows, where the product would be NaN.
template <typename acc_t>
VIDMEM_HD acc_t decay_product(acc_t earlier, acc_t later) {
  const acc_t product = earlier * later;
  return product != product && earlier == earlier && later == later ? acc_t(0) : product;
}

// `earlier` applied first, then `later`.
template <typename acc_t>
VIDMEM_HD ScanPair<acc_t> scan_combine(const ScanPair<acc_t>& earlier, const ScanPair<acc_t>& later) {
  return ScanPair<acc_t>{decay_product(earlier.decay, later.decay),
                         decay_times(later.decay, earlier.value) + later.value};
}

template <typename acc_t>
VIDMEM_HD acc_t scan_apply(const ScanPair<acc_t>& pair, acc_t state) {
  return decay_times(pair.decay, state) + pair.value;
}

// m^n by repeated squaring (the same rounding on host and device).
template <typename acc_t>
VIDMEM_HD acc_t int_power(acc_t base, int64_t n) {
  acc_t result = acc_t(1);
  while (n > 0) {
    if (n & 1) result *= base;
    base *= base;
    n >>= 1;
  }
  return result;
}

// ---------------------------------------------------------------------------- chunk carries
//
// When a lane's frames are split into chunks of `chunk_len` frames (the last may be shorter),
// a first pass stores each chunk's aggregate: the forward state at its last frame computed
// from a zero state (frame 0 still resets), or the backward a at its first frame computed
// from a zero a past its end. A chunk's carry is then a fold of the aggregates before it (after
// it, backward) in a fixed order, so results do not depend on scheduling. `aggregates` is laid
// out [chunk][lane].

VIDMEM_HD int64_t chunk_length(int64_t frames, int64_t chunk_len, int64_t chunk) {
  const int64_t begin = chunk * chunk_len;
  const int64_t end = begin + chunk_len < frames ? begin + chunk_len : frames;
  return end - begin;
}

// Forward state entering `chunk`. `start` is the initial state (zero_state without one, where
// chunk 0 resets at frame 0 and so ignores it).
template <typename acc_t>
VIDMEM_HD acc_t forward_chunk_carry(const acc_t* aggregates, int64_t lanes, int64_t lane, int64_t chunk,
                                    int64_t chunk_len, acc_t m, acc_t start, bool reset_at_frame0) {
  const acc_t full_decay = int_power(m, chunk_len);
  acc_t state = start;
  for (int64_t q = 0; q < chunk; ++q) {
    const acc_t decay = (q == 0 && reset_at_frame0) ? acc_t(0) : full_decay;
    state = decay_times(decay, state) + aggregates[q * lanes + lane];
  }
  return state;
}

// Backward a entering `chunk` from its end (a_{end} of the chunk), folding the later chunks
// from the last one down.
template <typename acc_t>
VIDMEM_HD acc_t backward_chunk_carry(const acc_t* aggregates, int64_t lanes, int64_t lane, int64_t chunk,
                                     int64_t chunks, int64_t frames, int64_t chunk_len, acc_t m) {
  acc_t a = acc_t(0);
  for (int64_t q = chunks - 1; q > chunk; --q) {
    a = decay_times(int_power(m, chunk_length(frames, chunk_len, q)), a) + aggregates[q * lanes + lane];
  }
  return a;
}

// ---------------------------------------------------------------------------- CUDA call parameters
//
// One struct per kernel family, filled once by the glue (temporal_momentum_cuda_ops.h): the
// operands, the plan that plan_forward / plan_backward (temporal_momentum.cu) choose, and the
// workspace the glue allocates for it. Pointers are untyped (the kernels cast them to the
// storage type; momentum, grad_momentum and the workspace hold the accumulation type).

enum class CudaKernel : int {
  kLanes,          // regime (a): one thread per lane vector walks every frame
  kLaneChunks,     // regime (b), frame axis strided: thread rows split the frames, chunks split them further
  kFrameSegments,  // regime (b), frame axis contiguous: a block scans one lane's frames, chunks split them
};

// What plan_forward / plan_backward choose from the layout, the pointers' alignment and the SM count.
struct CudaPlan {
  CudaKernel kernel;
  int vector;         // elements per memory access: 16 bytes' worth, or 1 when alignment does not allow it
  int64_t chunk_len;  // frames per chunk
  int64_t chunks;     // > 1: an aggregate pass runs first and the carries fold the aggregates in order
  size_t workspace_bytes;
  int64_t max_grid;   // blocks per launch at most: kMaxGrid or the device's grid x limit (a grid stride covers the rest)
};

struct ForwardParams {
  Layout layout;
  const void* x;
  void* y;
  const void* momentum;   // nullptr: momentum_value for every lane
  double momentum_value;
  const void* initial;    // nullptr: frame 0 resets (y_0 = x_0)
  CudaPlan plan;
  void* workspace;        // plan.workspace_bytes: the chunk aggregates [chunk][lane] when plan.chunks > 1
};

struct BackwardParams {
  Layout layout;
  const void* grad_y;
  const void* x;  // x and y: read only for the momentum gradient
  const void* y;
  void* grad_x;
  const void* momentum;
  double momentum_value;
  const void* initial;
  void* grad_initial;
  void* grad_momentum;  // per lane, the frame-slice shape; written only when momentum_grad
  bool momentum_grad;
  CudaPlan plan;
  void* workspace;  // plan.workspace_bytes: aggregates [chunk][lane], then the momentum-gradient partials
};

}  // namespace momentum
}  // namespace vidmem
