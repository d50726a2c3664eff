// Runs the CUDA kernels of both ops (csrc/*/*.cu, unchanged) and the code of the CUDA ops
// (csrc/*/*_cuda_ops.h) on CPU tensors through the emulator in include/. Built once for all
// emulation tests by tests/cuda_emulation/__init__.py.
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>

#include <cstring>

// The emulator must come after the torch headers: it defines __global__, __shared__ and friends.
#include <cuda_runtime.h>

#define VIDMEM_CUDA_EMULATION 1
#include "dependency_noise/dependency_noise.cu"
#include "dependency_noise/dependency_noise_cuda_ops.h"
#include "temporal_momentum/temporal_momentum.cu"
#include "temporal_momentum/temporal_momentum_cuda_ops.h"

namespace {

namespace vm = vidmem::momentum;

// While an emulated op runs, every CPU allocation (outputs, workspaces, temporaries) starts as
// 0xFF bytes: NaN in every float type, all ones in every integer. A kernel that reads what it
// has not written, or leaves an output element unwritten, shows it.
class PoisoningAllocator final : public c10::Allocator {
 public:
  explicit PoisoningAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr data = base_->allocate(bytes);
    if (bytes > 0) std::memset(data.get(), 0xFF, bytes);
    return data;
  }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

 private:
  c10::Allocator* base_;
};

class PoisonedAllocations {
 public:
  PoisonedAllocations() : previous_(c10::GetCPUAllocator()) {
    static PoisoningAllocator poisoning(c10::GetCPUAllocator());  // lives as long as the tensors it made
    c10::SetCPUAllocator(&poisoning, kPriority);
  }
  ~PoisonedAllocations() { c10::SetCPUAllocator(previous_, kPriority); }

 private:
  static constexpr uint8_t kPriority = 100;
  c10::Allocator* previous_;
};

void configure(int sm_count, int max_grid_y, int block_order, int max_grid_x) {
  TORCH_CHECK_VALUE(sm_count >= 1 && max_grid_y >= 1 && block_order >= 0 && block_order <= 2 && max_grid_x >= 1,
                    "emulation settings out of range");
  cuda_emulation::device().sm_count = sm_count;
  cuda_emulation::device().max_grid_x = max_grid_x;
  cuda_emulation::device().max_grid_y = max_grid_y;
  cuda_emulation::device().block_order = static_cast<cuda_emulation::BlockOrder>(block_order);
}

at::Tensor poisoned_empty(int64_t numel) {
  const PoisonedAllocations poisoned;
  return at::empty({numel}, at::kFloat);
}

pybind11::dict describe(const vm::CudaPlan& plan) {
  static const char* names[] = {"lanes", "lane_chunks", "frame_segments"};
  pybind11::dict d;
  d["kernel"] = names[static_cast<int>(plan.kernel)];
  d["vector"] = plan.vector;
  d["chunk_len"] = plan.chunk_len;
  d["chunks"] = plan.chunks;
  d["workspace_bytes"] = plan.workspace_bytes;
  d["max_grid"] = plan.max_grid;
  return d;
}

std::tuple<at::Tensor, pybind11::dict> forward(const at::Tensor& x, const std::optional<at::Tensor>& momentum,
                                               double momentum_value, int64_t dim,
                                               const std::optional<at::Tensor>& initial, int sm_count) {
  cuda_emulation::device().sm_count = sm_count;
  const PoisonedAllocations poisoned;
  vm::CudaPlan plan{};
  at::Tensor y = vm::forward_on_device(x, momentum, momentum_value, dim, initial, 0, nullptr, &plan);
  return {y, describe(plan)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, pybind11::dict> backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& momentum,
    double momentum_value, int64_t dim, const std::optional<at::Tensor>& initial, bool momentum_grad, int sm_count) {
  cuda_emulation::device().sm_count = sm_count;
  const PoisonedAllocations poisoned;
  vm::CudaPlan plan{};
  auto [gx, gm, gi] = vm::backward_on_device(grad_y, x, y, momentum, momentum_value, dim, initial, momentum_grad, 0,
                                             nullptr, &plan);
  return {gx, gm, gi, describe(plan)};
}

std::tuple<at::Tensor, pybind11::dict> noise_fill(at::Tensor& out, double lambda_i, int64_t random_search_times,
                                                  int64_t linear_search_times, int64_t frame_dim, int64_t seed,
                                                  int64_t offset) {
  const PoisonedAllocations poisoned;
  vidmem::FillParams params{};
  at::Tensor alphas = vidmem::fill_on_device(out, lambda_i, random_search_times, linear_search_times, frame_dim, seed,
                                             offset, 0, nullptr, &params);
  pybind11::dict d;
  d["chunks"] = params.chunks;
  d["grid_y"] = params.grid_y;
  return {alphas, d};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, pybind11::dict> noise_step(const at::Tensor& prev,
                                                                          const at::Tensor& candidates,
                                                                          double lambda_i,
                                                                          int64_t linear_search_times) {
  const PoisonedAllocations poisoned;
  vidmem::StepParams params{};
  auto [frame, alpha, index] =
      vidmem::step_on_device(prev, candidates, lambda_i, linear_search_times, 0, nullptr, &params);
  pybind11::dict d;
  d["chunks"] = params.chunks;
  d["grid_y"] = params.grid_y;
  d["max_grid_x"] = params.max_grid_x;
  return {frame, alpha, index, d};
}

// Probes of the emulator itself: one launch of a tiny kernel through launch_kernel.
__global__ void count_threads_kernel(unsigned int* count) { atomicAdd(count, 1u); }

__global__ void swap_neighbours_kernel(const int64_t* in, int64_t* out) {
  const unsigned t = threadIdx.x;
  out[t] = __shfl_xor_sync(0xffffffffu, __ldcg(in + t), 1);
}

__global__ void divergent_barrier_kernel(unsigned int* count) {
  if (threadIdx.x < 16) __syncthreads();  // not every thread reaches it: a deadlock on a GPU
  atomicAdd(count, 1u);
}

__global__ void divergent_lines_kernel(unsigned int* count) {
  // Every thread reaches a __syncthreads, but not the same one: undefined on a GPU.
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  atomicAdd(count, 1u);
}

// Counts the blocks whose thread 0 finds its shared words still 0xFF bytes (then writes them). A
// template, as the project's kernels are (their statics are found another way than plain ones').
template <typename T>
__global__ void shared_unwritten_kernel(unsigned int* count) {
  __shared__ T words[3];
  if (threadIdx.x == 0) {
    T poison;
    std::memset(&poison, 0xFF, sizeof(T));
    bool unwritten = true;
    for (const T& w : words) unwritten &= std::memcmp(&w, &poison, sizeof(T)) == 0;
    if (unwritten) atomicAdd(count, 1u);
    for (T& w : words) w = T(7);
  }
}

// Two warps publish a round number each, read the other's, and go on to the next round without
// the __syncthreads that must keep the next write from overtaking the other warp's read. Counts
// the reads that saw another round: 0 only if the warps move in lockstep.
__global__ void missing_barrier_kernel(unsigned int* count) {
  __shared__ unsigned int published[2];
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (unsigned round = 0; round < 4; ++round) {
    const unsigned value = __shfl_xor_sync(0xffffffffu, round, 1);  // a warp-wide step before the write
    if (lane == 0) published[warp] = value;
    __syncthreads();
    if (published[1 - warp] != round) atomicAdd(count, 1u);
  }
}

// Returns (the launch's status text, threads that ran; for shared_unwritten: blocks that found
// their shared word unwritten; for missing_barrier: reads of another round).
std::tuple<std::string, int64_t> probe_launch(const std::string& kernel, unsigned grid_x, unsigned grid_y,
                                              unsigned grid_z, unsigned block) {
  unsigned int count = 0;
  cudaError_t status = cudaSuccess;
  if (kernel == "count") {
    status = vidmem::launch_kernel(count_threads_kernel, dim3(grid_x, grid_y, grid_z), dim3(block), nullptr, &count);
  } else if (kernel == "divergent_barrier") {
    status =
        vidmem::launch_kernel(divergent_barrier_kernel, dim3(grid_x, grid_y, grid_z), dim3(block), nullptr, &count);
  } else if (kernel == "divergent_lines") {
    status = vidmem::launch_kernel(divergent_lines_kernel, dim3(grid_x, grid_y, grid_z), dim3(block), nullptr, &count);
  } else if (kernel == "shared_unwritten") {
    status =
        vidmem::launch_kernel(shared_unwritten_kernel<double>, dim3(grid_x, grid_y, grid_z), dim3(block), nullptr, &count);
  } else if (kernel == "missing_barrier") {
    TORCH_CHECK_VALUE(block == 64, "missing_barrier runs two warps: block 64");
    status = vidmem::launch_kernel(missing_barrier_kernel, dim3(grid_x, grid_y, grid_z), dim3(block), nullptr, &count);
  } else {
    TORCH_CHECK_VALUE(false, "unknown probe kernel ", kernel);
  }
  return {cudaGetErrorString(status), static_cast<int64_t>(count)};
}

std::vector<std::string> shared_variable_names() {
  std::vector<std::string> names;
  for (const auto& v : cuda_emulation::Grid::shared()) names.push_back(v.name);
  return names;
}

at::Tensor swap_neighbours(const at::Tensor& values) {
  TORCH_CHECK_VALUE(values.dtype() == at::kLong && values.numel() == 32 && values.is_contiguous(),
                    "values: 32 contiguous int64");
  at::Tensor out = at::empty_like(values);
  const cudaError_t status = vidmem::launch_kernel(swap_neighbours_kernel, dim3(1), dim3(32), nullptr,
                                                   values.const_data_ptr<int64_t>(), out.data_ptr<int64_t>());
  TORCH_CHECK(status == cudaSuccess, cudaGetErrorString(status));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "the CUDA kernels of vidmem_ext run by a CPU emulator (tests only)";
  m.def("configure", &configure, "device settings: SM count, grid y limit, block order (0 in order, 1 reversed, 2 "
        "shuffled), grid x limit", py::arg("sm_count") = 132, py::arg("max_grid_y") = 65535, py::arg("block_order") = 0,
        py::arg("max_grid_x") = 0x7fffffff);
  m.def("poisoned_empty", &poisoned_empty, "a float tensor allocated as the emulated ops allocate", py::arg("numel"));
  m.def("probe_launch", &probe_launch, "one launch of a probe kernel: (status text, threads that ran)",
        py::arg("kernel"), py::arg("grid_x"), py::arg("grid_y"), py::arg("grid_z"), py::arg("block"));
  m.def("shared_variable_names", &shared_variable_names, "the __shared__ variables the emulator poisons");
  m.def("swap_neighbours", &swap_neighbours, "a warp's int64 values through __shfl_xor_sync(v, 1)", py::arg("values"));
  m.def("forward", &forward, "temporal momentum: y and the plan", py::arg("x"), py::arg("momentum"),
        py::arg("momentum_value"), py::arg("dim"), py::arg("initial"), py::arg("sm_count"));
  m.def("backward", &backward, "temporal momentum: (grad_x, grad_momentum, grad_initial) and the plan",
        py::arg("grad_y"), py::arg("x"), py::arg("y"), py::arg("momentum"), py::arg("momentum_value"), py::arg("dim"),
        py::arg("initial"), py::arg("momentum_grad"), py::arg("sm_count"));
  m.def("noise_fill", &noise_fill, "dependency_noise_fill_: alphas and the plan", py::arg("out"), py::arg("lambda_i"),
        py::arg("random_search_times"), py::arg("linear_search_times"), py::arg("frame_dim"), py::arg("seed"),
        py::arg("offset"));
  m.def("noise_step", &noise_step, "dependency_noise_step: (frame, alpha, index) and the plan", py::arg("prev"),
        py::arg("candidates"), py::arg("lambda_i"), py::arg("linear_search_times"));
}
