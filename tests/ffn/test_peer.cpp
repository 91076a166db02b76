// PEER: product-key retrieval against brute force, the layer's gradients in double (k >= 2,
// every query norm), k = 1 as an MLP of h chosen neurons, the usage/KL formulas, and the tables
// updated inside the backward against the optimizer's own pass.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

#include "../grad_check.h"
#include "moe/core/error.h"
#include "moe/ffn/peer/peer_layer.h"
#include "moe/ffn/peer/product_keys.h"
#include "moe/train/optimizer.h"

using namespace moe;
using namespace moe::testing;
using V = std::vector<double>;

namespace {

// Brute force over all S² sums; ties → lower id.
std::vector<int32_t> brute_topk(const V& s1, const V& s2, int S, int k) {
  std::vector<int32_t> ids(S * S);
  for (int i = 0; i < S * S; ++i) ids[i] = i;
  auto score = [&](int id) { return s1[id / S] + s2[id % S]; };
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) {
    return score(a) != score(b) ? score(a) > score(b) : a < b;
  });
  ids.resize(k);
  return ids;
}

std::vector<int32_t> pk_topk(const V& s1, const V& s2, int S, int k, V* scores = nullptr) {
  std::vector<int32_t> ids(k), scratch(k * k + 2 * k);
  V sc(k), cand(k * k + 2 * k);
  product_key_topk(ids.data(), sc.data(), s1.data(), s2.data(), S, k, scratch.data(), cand.data());
  if (scores) *scores = sc;
  return ids;
}

TEST(ProductKeys, EqualBruteForceOnRandomScores) {
  std::mt19937 gen(3);
  for (int trial = 0; trial < 200; ++trial) {
    const int S = 2 + trial % 30, k = 1 + trial % std::min(S, 16);
    V s1 = randn(S, 100 + trial), s2 = randn(S, 300 + trial);
    V sc;
    std::vector<int32_t> got = pk_topk(s1, s2, S, k, &sc);
    ASSERT_EQ(got, brute_topk(s1, s2, S, k)) << "S " << S << " k " << k;
    for (int i = 0; i < k; ++i) ASSERT_EQ(sc[i], s1[got[i] / S] + s2[got[i] % S]);
  }
}

TEST(ProductKeys, AdversarialAndTiedScores) {
  const int S = 8, k = 5;
  // All equal: ids 0..k-1 (lower id wins).
  V z(S, 0.5);
  EXPECT_EQ(pk_topk(z, z, S, k), (std::vector<int32_t>{0, 1, 2, 3, 4}));
  // Many ties in each half, integer-valued scores.
  for (int t = 0; t < 50; ++t) {
    V a(S), b(S);
    for (int i = 0; i < S; ++i) {
      a[i] = double((i * 7 + t) % 3);
      b[i] = double((i * 5 + 2 * t) % 4);
    }
    ASSERT_EQ(pk_topk(a, b, S, k), brute_topk(a, b, S, k)) << t;
  }
  // The best experts all share one first-half key: the answer must not be the first k candidate
  // positions but real ids i·S + j.
  V a(S, -10.0), b(S);
  a[6] = 10;
  for (int j = 0; j < S; ++j) b[j] = double(j);
  EXPECT_EQ(pk_topk(a, b, S, 3), (std::vector<int32_t>{6 * S + 7, 6 * S + 6, 6 * S + 5}));
}

struct Peer {
  PeerSpec spec;
  int N;
  V wq, bq, gamma, beta, k1, k2, u, v, rm, rv, x;
  PeerLayer<double> layer;
  Arena arena;
  Peer(PeerSpec s, int n, uint32_t seed) : spec(s), N(n), layer(s) {
    const int D = s.heads * s.d_key, C = s.C;
    wq = randn(std::size_t(D) * C, seed, 0.7);
    bq = randn(D, seed + 1, 0.1);
    gamma = randn(D, seed + 2, 0.2);
    for (auto& g : gamma) g += 1.0;
    beta = randn(D, seed + 3, 0.1);
    k1 = randn(std::size_t(s.S) * s.d_key / 2, seed + 4);
    k2 = randn(std::size_t(s.S) * s.d_key / 2, seed + 5);
    u = randn(std::size_t(s.experts()) * C, seed + 6);
    v = randn(std::size_t(s.experts()) * C, seed + 7);
    rm = V(D, 0.0);
    rv = V(D, 1.0);
    x = randn(std::size_t(n) * C, seed + 8);
    Arena m;
    layer.bind(m, n);
    arena = Arena(m.used());
    layer.bind(arena, n);
  }
  PeerParams<double> params() {
    return {wq.data(), bq.data(), gamma.data(), beta.data(), k1.data(),
            k2.data(), u.data(),  v.data(),     rm.data(),   rv.data()};
  }
  V forward() {
    V y(std::size_t(N) * spec.C);
    layer.forward(y.data(), x.data(), params(), N, true);
    return y;
  }
};

void check_peer_gradients(PeerSpec s, uint32_t seed) {
  Peer P(s, 7, seed);
  V R = randn(std::size_t(P.N) * s.C, seed + 50);
  auto loss = [&] { return dot(P.forward(), R); };
  P.forward();
  V dx(P.x.size(), 0.0), gwq(P.wq.size(), 0.0), gbq(P.bq.size(), 0.0), gg(P.gamma.size(), 0.0),
      gb(P.beta.size(), 0.0), gk1(P.k1.size(), 0.0), gk2(P.k2.size(), 0.0), gu(P.u.size(), 0.0),
      gv(P.v.size(), 0.0);
  P.layer.backward(
      dx.data(),
      {gwq.data(), gbq.data(), gg.data(), gb.data(), gk1.data(), gk2.data(), gu.data(), gv.data()},
      R.data(), P.x.data(), P.params());
  const double t = 1e-6;
  EXPECT_TRUE(all_close("dx", dx, numeric_grad(P.x, loss), t, t));
  EXPECT_TRUE(all_close("d query.weight", gwq, numeric_grad(P.wq, loss), t, t));
  EXPECT_TRUE(all_close("d query.bias", gbq, numeric_grad(P.bq, loss), t, t));
  EXPECT_TRUE(all_close("d keys1", gk1, numeric_grad(P.k1, loss), t, t));
  EXPECT_TRUE(all_close("d keys2", gk2, numeric_grad(P.k2, loss), t, t));
  EXPECT_TRUE(all_close("d u", gu, numeric_grad(P.u, loss), t, t));
  EXPECT_TRUE(all_close("d v", gv, numeric_grad(P.v, loss), t, t));
  if (s.qnorm != QueryNorm::kNone) {
    EXPECT_TRUE(all_close("d norm.weight", gg, numeric_grad(P.gamma, loss), t, t));
    EXPECT_TRUE(all_close("d norm.bias", gb, numeric_grad(P.beta, loss), t, t));
  }
  // The keys got a gradient at all (k >= 2: the routing weights are not constant).
  EXPECT_GT(max_abs(gk1), 0);
}

PeerSpec peer_spec(QueryNorm qn, bool gelu, int k, int S = 4) {
  PeerSpec s;
  s.C = 5;
  s.S = S;
  s.heads = 2;
  s.k = k;
  s.d_key = 4;
  s.gelu = gelu;
  s.qnorm = qn;
  return s;
}

TEST(PeerGrad, BatchNormGeluK3) { check_peer_gradients(peer_spec(QueryNorm::kBatch, true, 3), 11); }
TEST(PeerGrad, LayerNormReluK2) {
  check_peer_gradients(peer_spec(QueryNorm::kLayer, false, 2), 21);
}
TEST(PeerGrad, NoNormGeluK4) { check_peer_gradients(peer_spec(QueryNorm::kNone, true, 4, 5), 31); }

TEST(PeerSemantics, RetrievalAcrossScoreBlocksEqualsBruteForce) {
  // The forward scores its (token, head) rows in blocks of 64 per task: with 100 tokens × 2 heads
  // (three full blocks and a partial one), every row's ids must be the brute-force top-k of its
  // own query against both halves' sub-keys (query norm off, so q = x·W_qᵀ + b_q here).
  PeerSpec s = peer_spec(QueryNorm::kNone, true, 3, 6);
  Peer P(s, 100, 61);
  P.forward();
  const int C = s.C, dk = s.d_key, half = dk / 2, S = s.S, k = s.k;
  for (int n = 0; n < P.N; ++n)
    for (int j = 0; j < s.heads; ++j) {
      V q(dk, 0.0), s1(S, 0.0), s2(S, 0.0);
      for (int i = 0; i < dk; ++i) {
        const int f = j * dk + i;
        q[i] = P.bq[f];
        for (int c = 0; c < C; ++c)
          q[i] += P.x[std::size_t(n) * C + c] * P.wq[std::size_t(f) * C + c];
      }
      for (int a = 0; a < S; ++a)
        for (int i = 0; i < half; ++i) {
          s1[a] += q[i] * P.k1[std::size_t(a) * half + i];
          s2[a] += q[half + i] * P.k2[std::size_t(a) * half + i];
        }
      const int r = n * s.heads + j;
      const std::vector<int32_t> got(P.layer.ids() + std::size_t(r) * k,
                                     P.layer.ids() + std::size_t(r + 1) * k);
      ASSERT_EQ(got, brute_topk(s1, s2, S, k)) << "token " << n << " head " << j;
    }
}

TEST(PeerSemantics, TopOneIsAnMlpOfHChosenNeurons) {
  PeerSpec s = peer_spec(QueryNorm::kNone, true, 1);
  Peer P(s, 5, 41);
  V y = P.forward();
  const int C = s.C;
  for (int n = 0; n < P.N; ++n)
    for (int c = 0; c < C; ++c) {
      double ref = 0;
      for (int h = 0; h < s.heads; ++h) {
        const int e = P.layer.ids()[n * s.heads + h];
        EXPECT_EQ(P.layer.weights()[n * s.heads + h], 1.0);  // softmax over one score
        double z = 0;
        for (int i = 0; i < C; ++i) z += P.u[e * C + i] * P.x[n * C + i];
        ref += 0.5 * z * (1 + std::erf(z / std::sqrt(2.0))) * P.v[e * C + c];
      }
      EXPECT_NEAR(y[n * C + c], ref, 1e-12);
    }
}

TEST(PeerMetrics, UsageAndKlOnHandMadeHistograms) {
  UsageStats uni = usage_stats({1, 1, 1, 1});
  EXPECT_DOUBLE_EQ(uni.usage, 1.0);
  EXPECT_NEAR(uni.kl, 0.0, 1e-15);
  EXPECT_NEAR(uni.effective, 1.0, 1e-15);
  UsageStats one = usage_stats({0, 5, 0, 0});  // all mass on one of 4 experts
  EXPECT_DOUBLE_EQ(one.usage, 0.25);
  EXPECT_NEAR(one.kl, std::log(4.0), 1e-15);
  EXPECT_NEAR(one.effective, 0.25, 1e-15);
  // Built element by element: with GCC 12 at -O3 -march=native the braced list {2.0, 2.0, 0.0,
  // 0.0} in this function arrived as {2, 2, 2, 2} (seen 2026-11-22; the same call in a small
  // program was right) — a compiler problem to report, not one of the code under test.
  std::vector<double> hz(4, 0.0);
  hz[0] = hz[1] = 2.0;
  UsageStats half = usage_stats(hz);
  EXPECT_DOUBLE_EQ(half.usage, 0.5);
  EXPECT_NEAR(half.kl, std::log(2.0), 1e-15);
  // KL = log E + Σ z log z with z = (0.5, 0.25, 0.25, 0).
  EXPECT_NEAR(usage_stats({2, 1, 1, 0}).kl,
              std::log(4.0) + 0.5 * std::log(0.5) + 2 * 0.25 * std::log(0.25), 1e-15);
}

// Batch norm and GELU (the defaults), with the given sizes.
PeerSpec sized_spec(int C, int S, int heads, int k, int d_key) {
  PeerSpec s;
  s.C = C;
  s.S = S;
  s.heads = heads;
  s.k = k;
  s.d_key = d_key;
  return s;
}

// The optimizer in backward (AdamWOptimizer::prepare: each retrieved row of u and v updated by
// the layer as soon as its gradient is summed) against the optimizer's own pass over the rows,
// in float, over several steps whose row sets partly overlap: every weight, moment, row step
// count and the reported gradient norm must be the same bits.
struct PeerTrain {
  PeerSpec spec;
  ParamStore ps;
  Param *wq, *bq, *gm, *bt, *rm, *rv, *k1, *k2, *u, *v;
  std::unique_ptr<AdamWOptimizer> opt;
  PeerLayer<float> layer;
  Arena arena;
  std::vector<float> last_dx;  // the input gradient of the last step
  PeerTrain(PeerSpec s, int N, const TrainConfig& tc) : spec(s), layer(s) {
    const int D = s.heads * s.d_key, C = s.C;
    wq = ps.add("query.weight", {D, C}, Init::kNormal, 0.5f, true);
    bq = ps.add("query.bias", {D}, Init::kNormal, 0.1f, false);
    gm = ps.add("query_norm.weight", {D}, Init::kOnes, 0, false);
    bt = ps.add("query_norm.bias", {D}, Init::kZeros, 0, false);
    rm = ps.add("query_norm.running_mean", {D}, Init::kZeros, 0, false);
    rv = ps.add("query_norm.running_var", {D}, Init::kOnes, 0, false);
    k1 = ps.add("keys1", {s.S, s.d_key / 2}, Init::kNormal, 1.f, false);
    k2 = ps.add("keys2", {s.S, s.d_key / 2}, Init::kNormal, 1.f, false);
    u = ps.add("u", {s.experts(), C}, Init::kNormal, 0.5f, false);
    v = ps.add("v", {s.experts(), C}, Init::kNormal, 0.5f, false);
    ps.allocate();
    ps.initialize(5);
    rm->trainable = rv->trainable = false;
    u->make_row_sparse();
    v->make_row_sparse();
    opt = std::make_unique<AdamWOptimizer>(ps, tc);
    Arena m;
    layer.bind(m, N);
    arena = Arena(m.used());
    layer.bind(arena, N);
  }
  // One training step on x (loss = Σ y·r); returns the optimizer's report.
  OptimStats step(int s, const std::vector<float>& x, const std::vector<float>& r, int N,
                  bool in_backward) {
    ps.zero_grad();
    std::vector<float> y(x.size()), dx(x.size(), 0.f);
    PeerParams<float> p{wq->w, bq->w, gm->w, bt->w, k1->w, k2->w, u->w, v->w, rm->w, rv->w};
    layer.forward(y.data(), x.data(), p, N, true);
    for (int a = 0; a < N * spec.heads * spec.k; ++a) {
      u->touch(layer.ids()[a]);
      v->touch(layer.ids()[a]);
    }
    if (in_backward) {
      EXPECT_TRUE(opt->prepare(s));
    }
    PeerGrads<float> g{wq->g, bq->g, gm->g, bt->g,       k1->g,
                       k2->g, u->g,  v->g,  u->row_rule, v->row_rule};
    layer.backward(dx.data(), g, r.data(), x.data(), p);
    if (in_backward) {  // nothing went to the tables' gradients
      for (std::size_t i = 0; i < u->numel; ++i) EXPECT_TRUE(u->g[i] == 0.f && v->g[i] == 0.f);
    }
    last_dx = dx;
    return opt->step(s);
  }
};

TEST(PeerOptimizer, UpdateInBackwardEqualsTheOptimizerPass) {
  // 144 experts; 20 tokens × 2 heads × 4 retrievals touch a changing part of them.
  const PeerSpec s = sized_spec(16, 12, 2, 4, 8);
  const int N = 20;
  TrainConfig tc;
  tc.lr = 1e-2f;
  tc.min_lr = 1e-3f;
  tc.warmup_steps = 2;
  tc.steps = 6;
  tc.grad_clip = 0;
  tc.weight_decay = 0.1f;
  PeerTrain a(s, N, tc), b(s, N, tc);
  for (int st = 0; st < 6; ++st) {
    std::vector<float> x(std::size_t(N) * s.C), r(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = std::sin(0.37f * float(i) + 1.9f * float(st));
      r[i] = std::cos(0.23f * float(i) - 0.7f * float(st));
    }
    const OptimStats sa = a.step(st, x, r, N, true), sb = b.step(st, x, r, N, false);
    ASSERT_GT(sb.grad_norm, 0);
    ASSERT_EQ(sa.grad_norm, sb.grad_norm) << "step " << st;
    ASSERT_EQ(a.u->touched.size(), 0u);  // the marks are cleared either way
    for (std::size_t i = 0; i < a.ps.numel(); ++i) {
      ASSERT_EQ(a.ps.weights()[i], b.ps.weights()[i]) << "step " << st << " element " << i;
      ASSERT_EQ(a.opt->m()[i], b.opt->m()[i]) << "step " << st << " element " << i;
      ASSERT_EQ(a.opt->v()[i], b.opt->v()[i]) << "step " << st << " element " << i;
    }
    for (int64_t e = 0; e < s.experts(); ++e) {
      ASSERT_EQ(a.opt->row_steps(*a.u)[e], b.opt->row_steps(*b.u)[e]) << e;
      ASSERT_EQ(a.opt->row_steps(*a.v)[e], b.opt->row_steps(*b.v)[e]) << e;
    }
  }
  // Some rows were touched at some steps only (else the lazy rule was not exercised).
  const int32_t* t = b.opt->row_steps(*b.u);
  EXPECT_LT(*std::min_element(t, t + s.experts()), 6);
  EXPECT_GT(*std::max_element(t, t + s.experts()), 1);
}

TEST(PeerOptimizer, UpdateInBackwardIsRefusedOrCheckedWhereItCannotHold) {
  const PeerSpec s = sized_spec(8, 6, 1, 2, 4);
  TrainConfig tc;
  tc.grad_clip = 1.0f;  // the norm of the whole gradient is needed before any update
  PeerTrain clipped(s, 4, tc);
  EXPECT_FALSE(clipped.opt->prepare(0));
  EXPECT_EQ(clipped.u->row_rule, nullptr);
  // A rule handed out but not used by the backward, with rows touched: step() refuses.
  tc.grad_clip = 0;
  PeerTrain t(s, 4, tc);
  EXPECT_TRUE(t.opt->prepare(0));
  t.u->touch(3);
  EXPECT_THROW(t.opt->step(0), Error);
  // An optimizer that goes away takes back the rules it handed out.
  ASSERT_NE(t.u->row_rule, nullptr);
  t.opt.reset();
  EXPECT_EQ(t.u->row_rule, nullptr);
  EXPECT_EQ(t.v->row_rule, nullptr);
}

TEST(PeerOptimizer, TrainingStepsAreBitIdenticalAcrossThreadCounts) {
  // Scores in blocks of rows, the expert pass in fixed blocks of experts with one dx buffer each,
  // the rows updated in the backward: none of it may depend on how many threads run it.
  const PeerSpec s = sized_spec(32, 16, 2, 4, 8);
  const int N = 90;  // 180 (token, head) rows: two full score blocks of 64 and a partial one
  TrainConfig tc;
  tc.lr = 1e-2f;
  tc.min_lr = 1e-2f;
  tc.warmup_steps = 0;
  tc.grad_clip = 0;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(3);  // scratch bound for up to 3 threads
  std::vector<std::unique_ptr<PeerTrain>> runs;
  for (int t = 0; t < 3; ++t) runs.push_back(std::make_unique<PeerTrain>(s, N, tc));
  std::vector<double> norms[3];
  std::vector<std::vector<float>> dxs[3];
  for (int t = 0; t < 3; ++t) {
    omp_set_num_threads(t + 1);
    for (int st = 0; st < 3; ++st) {
      std::vector<float> x(std::size_t(N) * s.C), r(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        x[i] = std::sin(0.11f * float(i) + float(st));
        r[i] = std::cos(0.07f * float(i) + 0.5f * float(st));
      }
      norms[t].push_back(runs[t]->step(st, x, r, N, true).grad_norm);
      dxs[t].push_back(runs[t]->last_dx);
    }
  }
  omp_set_num_threads(saved);
  for (int t = 1; t < 3; ++t) {
    EXPECT_EQ(norms[t], norms[0]) << t + 1 << " threads";
    EXPECT_EQ(dxs[t], dxs[0]) << t + 1 << " threads";
    for (std::size_t i = 0; i < runs[0]->ps.numel(); ++i)
      ASSERT_EQ(runs[t]->ps.weights()[i], runs[0]->ps.weights()[i]) << t + 1 << " threads, " << i;
  }
}

}  // namespace
