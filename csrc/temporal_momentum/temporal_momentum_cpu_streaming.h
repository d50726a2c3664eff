// When the CPU momentum kernels write their outputs with non-temporal (streaming) stores.
//
// Streaming an output saves reading each of its lines before writing it, but leaves it out of the
// caches for the next op. It pays when the call's data would not stay cached between calls anyway.
// How much stays cached is not a property the CPU reports: a VM shares its last-level cache with
// other tenants, and two machines of this project's VMs disagree by more than 10x (an AMD EPYC's
// 32 MiB L3 kept 10 MB calls; an Intel Xeon reporting 105 MiB kept not even 2 MB). So the
// threshold is measured once per process, on first need (see stream_outputs).
#pragma once

#include <cstdint>

namespace vidmem {
namespace momentum {

// Whether a call that moves `bytes_moved` bytes (inputs read plus outputs written) streams its
// outputs. VIDMEM_EXT_CPU_STREAMING_BYTES=N (read at every call) streams calls that move more than
// N bytes. Otherwise calls that fit the private caches never stream, calls over half the
// last-level cache always do, and between the two the first such call runs a probe that times
// cached against streaming stores (kept for the process; 15-25 ms on the AMD VM, an estimated
// 0.1 s on the Intel one, which probes up to 52 MB).
// Only speed depends on this: the bits are the same either way.
bool stream_outputs(int64_t bytes_moved);

// For `python -m vidmem_ext info`: the threshold in bytes moved that calls take now (running the
// probe if it has not run), and where it comes from ("VIDMEM_EXT_CPU_STREAMING_BYTES", "measured"
// or "cache size").
struct StreamingPolicy {
  int64_t threshold_bytes;
  const char* source;
};
StreamingPolicy streaming_policy();

}  // namespace momentum
}  // namespace vidmem
