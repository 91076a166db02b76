// The single-process communicator is the identity of every collective (P = 1), so code written
// for P ranks runs unchanged in one process; the rank-agreement check is an exact comparison.
// The multi-rank behaviour is tested by running mpirun (tests/python/test_data_parallel.py,
// test_expert_parallel.py).
#include <gtest/gtest.h>

#include "moe/dist/communicator.h"

namespace moe {

TEST(SingleProcessCommunicator, CollectivesAreTheIdentity) {
  auto c = make_single_process_communicator();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_TRUE(c->is_root());
  float f[3] = {1.f, -2.f, 3.5f};
  c->allreduce_sum(f, 3);
  EXPECT_EQ(f[0], 1.f);
  EXPECT_EQ(f[1], -2.f);
  EXPECT_EQ(f[2], 3.5f);
  double d[2] = {-1.0, 7.0};
  c->allreduce_max(d, 2);
  EXPECT_EQ(d[0], -1.0);
  EXPECT_EQ(d[1], 7.0);
  int si[2] = {4, 5}, ri[2] = {};
  c->alltoall(si, ri, 2);
  EXPECT_EQ(ri[0], 4);
  EXPECT_EQ(ri[1], 5);
  // alltoallv to oneself: send_counts[0] elements arrive in order.
  const float sv[4] = {1, 2, 3, 4};
  float rv[4] = {};
  const int64_t cnt[1] = {3};
  c->alltoallv(sv, cnt, rv, cnt);
  EXPECT_EQ(rv[0], 1.f);
  EXPECT_EQ(rv[2], 3.f);
  EXPECT_EQ(rv[3], 0.f);  // nothing past the count is written
  c->barrier();
}

TEST(SameOnAllRanks, OneRankAlwaysAgrees) {
  auto c = make_single_process_communicator();
  EXPECT_TRUE(same_on_all_ranks(*c, 0));
  EXPECT_TRUE(same_on_all_ranks(*c, ~0ull));
  EXPECT_TRUE(same_on_all_ranks(*c, 0x123456789abcdefull));
}

TEST(MakeCommunicator, NotLaunchedByMpirunIsSingleProcess) {
  auto c = make_communicator(nullptr, nullptr, /*launched=*/false);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->describe(), "single process");
}

}  // namespace moe
