// Compile-time dispatch on run-time values, in the style of mamba's static_switch.h:
//
//   DTYPE_SWITCH(dtype, __half, __nv_bfloat16, scalar_t, [&] { return run<scalar_t>(...); });
//   BOOL_SWITCH(vectorized, kVectorized, [&] { return run<kVectorized>(...); });
//
// The half types are arguments because the CPU (at::Half) and the GPU (__half) spell them
// differently. Each expands to a lambda called at once, so `return` works inside.
#pragma once

#include "common/dtype.h"

#define BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                    \
    if (COND) {                            \
      constexpr bool CONST_NAME = true;    \
      return __VA_ARGS__();                \
    } else {                               \
      constexpr bool CONST_NAME = false;   \
      return __VA_ARGS__();                \
    }                                      \
  }()

// DType has exactly these four values (to_dtype in torch_dtype.h rejects every other dtype).
#define DTYPE_SWITCH(DTYPE, HALF_T, BFLOAT16_T, NAME, ...) \
  [&] {                                                    \
    switch (DTYPE) {                                       \
      case ::vidmem::DType::kFloat16: {                    \
        using NAME = HALF_T;                               \
        return __VA_ARGS__();                              \
      }                                                    \
      case ::vidmem::DType::kBFloat16: {                   \
        using NAME = BFLOAT16_T;                           \
        return __VA_ARGS__();                              \
      }                                                    \
      case ::vidmem::DType::kFloat32: {                    \
        using NAME = float;                                \
        return __VA_ARGS__();                              \
      }                                                    \
      case ::vidmem::DType::kFloat64:                      \
        break;                                             \
    }                                                      \
    using NAME = double;                                   \
    return __VA_ARGS__();                                  \
  }()
