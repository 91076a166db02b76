// Sizes from outside (shapes in a checkpoint, fields of a config) are multiplied before anything
// is allocated or compared; a signed overflow there is undefined behaviour and a wrapped product
// can pass a size check. These multiply in 64 bits and refuse what does not fit.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/core/error.h"

namespace moe {

// a·b, or a moe::Error naming `what` when it exceeds int64 (a, b ≥ 0).
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  MOE_CHECK(a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, &r),
            "{}: {} × {} does not fit in 64 bits", what, a, b);
  return r;
}

// a+b, or a moe::Error naming `what` when it exceeds int64 (a, b ≥ 0).
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  MOE_CHECK(a >= 0 && b >= 0 && !__builtin_add_overflow(a, b, &r),
            "{}: {} + {} does not fit in 64 bits", what, a, b);
  return r;
}

// The product of a shape's entries, checked the same way.
inline int64_t checked_numel(const std::vector<int64_t>& shape, const char* what) {
  int64_t n = 1;
  for (int64_t s : shape) n = checked_mul(n, s, what);
  return n;
}

}  // namespace moe
