// group_by_key against group_by_key_reference (std::stable_sort by key): one, two and three
// radix passes, 1-3 threads, and a call from inside a parallel region; the reference itself on a
// hand-made case.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "moe/kernels/group_by_key.h"

using namespace moe;

namespace {

TEST(GroupByKey, ReferenceListsItemsPerKeyInItemOrder) {
  const std::vector<int32_t> keys = {3, 1, 3, 0, 1, 3};
  std::vector<int32_t> list(6), rows(6), off(7);
  const int n = group_by_key_reference(keys.data(), 6, list.data(), rows.data(), off.data());
  ASSERT_EQ(n, 3);
  EXPECT_EQ(list, (std::vector<int32_t>{3, 1, 4, 0, 2, 5}));
  EXPECT_EQ(std::vector<int32_t>(rows.begin(), rows.begin() + 3), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(std::vector<int32_t>(off.begin(), off.begin() + 4), (std::vector<int32_t>{0, 1, 3, 6}));
}

TEST(GroupByKey, IsAStableSortForAnyThreadCount) {
  // Against the reference (std::stable_sort): keys drawn with repeats (some many times, most not
  // at all), for key counts needing one, two and three radix passes, with enough items that 2
  // and 3 threads each take a slice.
  const int saved = omp_get_max_threads();
  for (const int64_t E : {int64_t(6), int64_t(1000), int64_t(1) << 20, int64_t(3) << 21}) {
    const int A = 50021;
    std::mt19937 rng{uint32_t(E)};
    std::vector<int32_t> ids(A);
    for (int a = 0; a < A; ++a)  // a skewed draw: low ids repeat often
      ids[a] = int32_t(std::min<int64_t>(E - 1, int64_t(std::pow(rng() / 4294967296.0, 3) * E)));
    std::vector<int32_t> want(A), want_rows(A), want_off(A + 1);
    const int want_n =
        group_by_key_reference(ids.data(), A, want.data(), want_rows.data(), want_off.data());
    want_rows.resize(want_n);
    want_off.resize(want_n + 1);
    for (int t = 1; t <= 3; ++t) {
      omp_set_num_threads(t);
      std::vector<uint64_t> kv(2 * std::size_t(A));
      std::vector<int> counters(group_by_key_counter_ints(E, t));
      std::vector<int32_t> list(A, -1), rows(A, -1), off(A + 1, -1);
      const int n = group_by_key(ids.data(), A, E, kv.data(), counters.data(), list.data(),
                                 rows.data(), off.data());
      ASSERT_EQ(list, want) << "E " << E << ", " << t << " threads";
      ASSERT_EQ(n, want_n);
      rows.resize(n);
      ASSERT_EQ(rows, want_rows);
      ASSERT_EQ(std::vector<int32_t>(off.begin(), off.begin() + n + 1), want_off);
      EXPECT_EQ(off[0], 0);
      EXPECT_EQ(off[n], A);
      for (int i = 0; i < n; ++i) {
        ASSERT_LT(off[i], off[i + 1]);
        if (i > 0) {
          ASSERT_LT(rows[i - 1], rows[i]);
        }
        for (int j = off[i]; j < off[i + 1]; ++j) ASSERT_EQ(ids[list[j]], rows[i]);
      }
    }
  }
  // Called from inside a parallel region with nesting off, its own region gets one thread
  // whatever it asks for: the slices must follow the team it got.
  {
    const int A = 20011;
    std::vector<int32_t> ids(A);
    for (int a = 0; a < A; ++a) ids[a] = int32_t((a * 7919) % 4099);
    std::vector<int32_t> want(A);
    for (int a = 0; a < A; ++a) want[a] = a;
    std::stable_sort(want.begin(), want.end(),
                     [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
    std::vector<uint64_t> kv(2 * std::size_t(A));
    std::vector<int> counters(group_by_key_counter_ints(4099, 2));
    std::vector<int32_t> list(A, -1), rows(A), off(A + 1);
    const int levels = omp_get_max_active_levels();
    omp_set_max_active_levels(1);
    omp_set_num_threads(2);
#pragma omp parallel num_threads(2)
    {
#pragma omp single
      group_by_key(ids.data(), A, 4099, kv.data(), counters.data(), list.data(), rows.data(),
                   off.data());
    }
    omp_set_max_active_levels(levels);
    EXPECT_EQ(list, want);
  }
  omp_set_num_threads(saved);
}

}  // namespace
