// Host only (torch headers): at::ScalarType <-> DType. An unsupported dtype is an error that
// names the op and the argument, raised as a Python TypeError.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "common/dtype.h"

namespace vidmem {

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// `what` names the op and argument, e.g. "temporal_momentum: x".
inline DType to_dtype(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kFloat:
      return DType::kFloat32;
    case at::kDouble:
      return DType::kFloat64;
    default:
      TORCH_CHECK_TYPE(false, what, " must be float16, bfloat16, float32 or float64, got ", t);
  }
}

inline at::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return at::kHalf;
    case DType::kBFloat16:
      return at::kBFloat16;
    case DType::kFloat32:
      return at::kFloat;
    case DType::kFloat64:
      break;
  }
  return at::kDouble;
}

// The dtype that the ops accumulate (and return alphas, momentum gradients) in.
inline at::ScalarType acc_scalar_type(at::ScalarType t, const char* what) {
  return to_scalar_type(acc_dtype(to_dtype(t, what)));
}

}  // namespace vidmem
