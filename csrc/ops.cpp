// The one place where every vidmem_ext op schema is declared, plus the Python
// module init of vidmem_ext._C. Kernels register their implementations with
// TORCH_LIBRARY_IMPL in csrc/*/*_cpu.cpp and csrc/*/*_glue.cpp.
#include <Python.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <exception>

#include "temporal_momentum/temporal_momentum_cpu_streaming.h"

#ifndef VIDMEM_EXT_WITH_CUDA
#define VIDMEM_EXT_WITH_CUDA 0
#endif
#ifndef VIDMEM_EXT_CUDA_ARCHS
#define VIDMEM_EXT_CUDA_ARCHS ""
#endif

namespace {
// (threshold in bytes moved, where it comes from): when CPU momentum calls stream their outputs.
PyObject* cpu_streaming_policy(PyObject*, PyObject*) {
  try {
    const vidmem::momentum::StreamingPolicy policy = vidmem::momentum::streaming_policy();
    return Py_BuildValue("(Ls)", static_cast<long long>(policy.threshold_bytes), policy.source);
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyMethodDef module_methods[] = {
    {"cpu_streaming_policy", cpu_streaming_policy, METH_NOARGS,
     "(bytes, source): CPU momentum calls moving more bytes than this stream their outputs; source is "
     "'measured' (a probe run once per process), 'cache size' or 'VIDMEM_EXT_CPU_STREAMING_BYTES'."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
// Importing vidmem_ext._C runs the static TORCH_LIBRARY registrations below.
// The module itself carries build facts and the streaming policy for `python -m vidmem_ext info`.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "vidmem_ext compiled kernels (ops live in torch.ops.vidmem_ext)", -1,
      module_methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  PyModule_AddIntConstant(module, "with_cuda", VIDMEM_EXT_WITH_CUDA);
  PyModule_AddStringConstant(module, "cuda_archs", VIDMEM_EXT_CUDA_ARCHS);
  return module;
}
}

TORCH_LIBRARY(vidmem_ext, m) {
  // Temporal momentum (docs/semantics.md, "Temporal momentum"). `momentum` (a tensor that
  // broadcasts to one frame slice) overrides `momentum_value` when given.
  m.def("temporal_momentum(Tensor x, Tensor? momentum, float momentum_value, int dim, Tensor? initial) -> Tensor");
  // Returns (grad_x, grad_momentum, grad_initial). grad_momentum is the
  // per-lane contribution with the frame-slice shape (the front end sums it
  // over broadcast axes), or an empty tensor unless momentum_grad is set;
  // grad_initial is empty when no initial was given.
  m.def(
      "temporal_momentum_backward(Tensor grad_y, Tensor x, Tensor y, Tensor? momentum, float momentum_value, "
      "int dim, Tensor? initial, bool momentum_grad) -> (Tensor, Tensor, Tensor)");

  // Dependency noise (docs/semantics.md, "Dependency noise").
  // One step on given candidates: prev (B, ...), candidates (R, B, ...) ->
  // (frame (B, ...), alpha (B,), index (B,) int64).
  m.def("dependency_noise_step(Tensor prev, Tensor candidates, float lambda_i, int linear_search_times) "
        "-> (Tensor, Tensor, Tensor)");
  // Fused generator: fills `out` (batch axis 0, frames along frame_dim) from a
  // Philox4x32-10 stream keyed by seed, counters starting at offset; returns
  // the chosen alpha per (batch, frame).
  m.def("dependency_noise_fill_(Tensor(a!) out, float lambda_i, int random_search_times, int linear_search_times, "
        "int frame_dim, int seed, int offset) -> Tensor");
}
