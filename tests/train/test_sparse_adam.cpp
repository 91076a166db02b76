// The row-sparse (lazy) Adam used for PEER's expert tables: a scalar reference of the rule over
// several steps with partly overlapping row sets, untouched rows bit-identical, and equality
// with dense Adam when every row is touched every step.
#include <gtest/gtest.h>

#include <cmath>

#include "moe/core/params.h"
#include "moe/train/optimizer.h"

using namespace moe;

namespace {

constexpr int kRows = 7, kLen = 5;

TrainConfig adam_config() {
  TrainConfig c;
  c.lr = 1e-2f;
  c.min_lr = 1e-2f;  // constant schedule: the reference needs no schedule
  c.warmup_steps = 0;
  c.steps = 100;
  c.grad_clip = 0;
  c.weight_decay = 0.1f;  // must not apply to the sparse table
  return c;
}

float grad_value(int step, int row, int col) { return std::sin(1.3f * step + 0.7f * row + col); }

// Runs the optimizer over `touched` (one row set per step, rows touched in the listed order)
// on a table of `rows` rows and checks every row against the scalar rule, and the reported
// gradient norm against a plain double sum.
void check_lazy_rule(int rows, const std::vector<std::vector<int>>& touched) {
  ParamStore ps;
  Param* t = ps.add("table", {rows, kLen}, Init::kNormal, 1.f, false);
  ps.allocate();
  ps.initialize(3);
  t->make_row_sparse();
  TrainConfig cfg = adam_config();
  AdamWOptimizer opt(ps, cfg);
  // Scalar reference state (double).
  std::vector<double> w(t->w, t->w + t->numel), m(t->numel, 0.0), v(t->numel, 0.0);
  std::vector<int> steps(rows, 0);
  for (int s = 0; s < int(touched.size()); ++s) {
    ps.zero_grad();
    std::vector<float> before(t->w, t->w + t->numel);
    double ss = 0;
    for (int r : touched[s]) {
      t->touch(r);
      for (int c = 0; c < kLen; ++c) {
        t->g[r * kLen + c] += grad_value(s, r, c);
        ss += double(t->g[r * kLen + c]) * t->g[r * kLen + c];
      }
    }
    const OptimStats st = opt.step(s);
    EXPECT_NEAR(st.grad_norm, std::sqrt(ss), 1e-12 * std::sqrt(ss)) << "step " << s;
    // The step leaves the table's gradient zero and nothing listed for zero_grad().
    for (std::size_t i = 0; i < t->numel; ++i) ASSERT_EQ(t->g[i], 0.f) << "step " << s;
    EXPECT_TRUE(t->touched.empty());
    for (int r = 0; r < rows; ++r) ASSERT_EQ(t->touched_mark[r], 0) << "step " << s;
    for (int r = 0; r < rows; ++r) {
      const bool hit = std::find(touched[s].begin(), touched[s].end(), r) != touched[s].end();
      if (!hit) {
        for (int c = 0; c < kLen; ++c) ASSERT_EQ(t->w[r * kLen + c], before[r * kLen + c]) << s;
        continue;
      }
      const int tr = ++steps[r];
      for (int c = 0; c < kLen; ++c) {
        const int i = r * kLen + c;
        const double g = grad_value(s, r, c);
        m[i] = 0.9 * m[i] + 0.1 * g;
        v[i] = 0.95 * v[i] + 0.05 * g * g;
        const double mh = m[i] / (1 - std::pow(0.9, tr)), vh = v[i] / (1 - std::pow(0.95, tr));
        w[i] -= 0.01 * mh / (std::sqrt(vh) + 1e-8);
        ASSERT_NEAR(t->w[i], w[i], 2e-6 * std::max(1.0, std::abs(w[i])))
            << "step " << s << " row " << r;
      }
    }
    for (int r : touched[s]) ASSERT_EQ(opt.row_steps(*t)[r], steps[r]);
  }
}

TEST(SparseAdam, MatchesTheLazyRuleAndLeavesUntouchedRowsAlone) {
  // A small table: every step touches a good part of it (rows ordered by scanning the marks).
  check_lazy_rule(7, {{0, 2, 5}, {2, 3}, {5, 0, 6}, {2}, {0, 1, 2, 3}, {6, 2}});
  // A large one touched sparsely, out of order (rows ordered by sorting the touched list).
  check_lazy_rule(1000, {{900, 3, 517, 42}, {42, 999, 0}, {517, 900}, {3, 2, 1, 900, 42}});
}

TEST(SparseAdam, EqualsDenseAdamWhenEveryRowIsTouchedEveryStep) {
  // Without clipping, and with clipping at a norm every step exceeds (the gradients' norm is
  // ~4), which scales the sparse table's rows in its own pass.
  for (float clip : {0.f, 0.5f}) {
    SCOPED_TRACE(::testing::Message() << "grad_clip " << clip);
    ParamStore a, b;
    Param* pa = a.add("table", {kRows, kLen}, Init::kNormal, 1.f, false);
    Param* pb = b.add("table", {kRows, kLen}, Init::kNormal, 1.f, false);
    a.allocate();
    b.allocate();
    a.initialize(9);
    b.initialize(9);
    pb->make_row_sparse();
    TrainConfig cfg = adam_config();
    cfg.grad_clip = clip;
    AdamWOptimizer oa(a, cfg), ob(b, cfg);
    for (int s = 0; s < 6; ++s) {
      a.zero_grad();
      b.zero_grad();
      for (int r = kRows - 1; r >= 0; --r) {  // touched in any order
        pb->touch(r);
        for (int c = 0; c < kLen; ++c) {
          pa->g[r * kLen + c] = grad_value(s, r, c);
          pb->g[r * kLen + c] = grad_value(s, r, c);
        }
      }
      const OptimStats sa = oa.step(s), sb = ob.step(s);
      // The sparse norm is summed row by row, the dense one in blocks: equal up to summation
      // order. With clipping that order can move the float clip factor by an ulp, so the
      // weights are then compared to 1e-6 relative instead of bit for bit.
      EXPECT_NEAR(sa.grad_norm, sb.grad_norm, 1e-12 * sa.grad_norm);
      ASSERT_GT(sa.grad_norm, 2 * clip);
      for (std::size_t i = 0; i < pa->numel; ++i) {
        if (clip == 0)
          ASSERT_EQ(pa->w[i], pb->w[i]) << s << " " << i;
        else
          ASSERT_NEAR(pa->w[i], pb->w[i], 1e-6 * std::max(1.f, std::abs(pa->w[i])))
              << s << " " << i;
      }
    }
  }
}

TEST(SparseAdam, ZeroGradClearsOnlyTouchedRowsAndTheMarks) {
  ParamStore ps;
  Param* d = ps.add("dense", {3, 4}, Init::kZeros, 0, false);
  Param* t = ps.add("table", {kRows, kLen}, Init::kZeros, 0, false);
  ps.allocate();
  t->make_row_sparse();
  for (std::size_t i = 0; i < d->numel; ++i) d->g[i] = 1.f;
  t->touch(4);
  t->touch(4);  // once only
  EXPECT_EQ(t->touched.size(), 1u);
  for (int c = 0; c < kLen; ++c) t->g[4 * kLen + c] = 2.f;
  ps.zero_grad();
  for (std::size_t i = 0; i < d->numel; ++i) EXPECT_EQ(d->g[i], 0.f);
  for (std::size_t i = 0; i < t->numel; ++i) EXPECT_EQ(t->g[i], 0.f);
  EXPECT_TRUE(t->touched.empty());
  EXPECT_EQ(t->touched_mark[4], 0);
}

}  // namespace

TEST(SparseAdam, TouchRowsListsEachNewRowOnceInFirstSeenOrder) {
  // The branch-free batch form against touch() row by row: the same list and marks, across two
  // calls (rows already touched by the first call are not listed again).
  ParamStore ps;
  Param* a = ps.add("a", {50, 2}, Init::kZeros, 0, false);
  Param* b = ps.add("b", {50, 2}, Init::kZeros, 0, false);
  ps.allocate();
  a->make_row_sparse();
  b->make_row_sparse();
  const std::vector<int32_t> first = {7, 3, 7, 49, 0, 3, 3, 12}, second = {12, 5, 0, 5, 48};
  for (const auto* rows : {&first, &second}) {
    for (int32_t r : *rows) a->touch(r);
    b->touch_rows(rows->data(), rows->size());
    ASSERT_EQ(b->touched, a->touched);
    ASSERT_EQ(b->touched_mark, a->touched_mark);
  }
  EXPECT_EQ(b->touched, (std::vector<int32_t>{7, 3, 49, 0, 12, 5, 48}));
}
