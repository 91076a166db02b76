// The arena's contract: the measuring pass and the real pass carve the same offsets, every
// block is aligned and zeroed, and taking more than was measured is an error, not a write past
// the end.
#include <gtest/gtest.h>

#include <cstdint>

#include "../error_util.h"
#include "moe/core/arena.h"

namespace moe {

// A carving sequence as a layer's bind() would run it.
static std::vector<std::size_t> carve(Arena& a) {
  std::vector<std::size_t> offsets;
  const std::size_t sizes[] = {1, 3, 64, 100, 0, 17, 4096};
  std::byte* first = nullptr;
  for (std::size_t n : sizes) {
    auto* p = a.take<std::byte>(n);
    if (!first) first = p;
    offsets.push_back(a.measuring() ? a.used() : std::size_t(p - first));
  }
  return offsets;
}

TEST(Arena, MeasuringPassSizesTheRealOneExactly) {
  Arena measure;
  EXPECT_TRUE(measure.measuring());
  carve(measure);
  const std::size_t need = measure.used();
  EXPECT_EQ(need % kAlign, 0u);
  Arena real(need);
  EXPECT_FALSE(real.measuring());
  float* a = real.take<float>(5);
  double* b = real.take<double>(9);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % kAlign, 0u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(a[i], 0.f);
  for (int i = 0; i < 9; ++i) EXPECT_EQ(b[i], 0.0);
  real.reset();
  carve(real);
  EXPECT_EQ(real.used(), need);
}

TEST(Arena, TakingMoreThanMeasuredIsAnErrorNotAnOverflow) {
  Arena real(128);
  real.take<float>(32);  // 128 bytes: full
  testing::expect_error([&] { real.take<float>(1); }, {"arena overflow", "128"});
}

TEST(HugePageAllocator, VectorsOfAnySizeWorkAndAreAligned) {
  for (std::size_t n : {std::size_t(1), std::size_t(1000), std::size_t(1) << 20}) {
    std::vector<int32_t, HugePageAllocator<int32_t>> v(n, 7);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % kAlign, 0u);
    EXPECT_EQ(v.front(), 7);
    EXPECT_EQ(v.back(), 7);
  }
}

}  // namespace moe
