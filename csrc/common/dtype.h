// The storage dtypes of the compiled ops and the accumulation type of each: fp16, bf16 and fp32
// accumulate in fp32, fp64 in fp64. Shared by the CPU kernels, the CUDA kernels and the glue;
// no torch headers (torch_dtype.h converts from at::ScalarType).
#pragma once

#include <cstddef>

namespace vidmem {

enum class DType : int { kFloat16, kBFloat16, kFloat32, kFloat64 };

// The accumulation type of a storage type (the CPU's at::Half / at::BFloat16, the GPU's
// __half / __nv_bfloat16 and float all accumulate in float).
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename AccType<scalar_t>::type;

// The same rule on dtype values.
constexpr DType acc_dtype(DType dtype) { return dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32; }

constexpr size_t element_size(DType dtype) {
  return dtype == DType::kFloat64 ? 8 : (dtype == DType::kFloat32 ? 4 : 2);
}

}  // namespace vidmem
