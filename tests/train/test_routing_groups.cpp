// Expert specialisation by group (train/routing_groups.h): the mutual information against the
// other formula H(X) + H(Y) − H(X,Y) in double, and the counts of a real evaluation against the
// number of tokens each group had evaluated.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "../temp_dir.h"
#include "../train_util.h"
#include "moe/data/tokenizer.h"
#include "moe/train/routing_groups.h"
#include "moe/train/trainer.h"

namespace moe {
namespace {

using testing::tiny_config;

double entropy_ref(const std::vector<double>& p) {
  double h = 0;
  for (double v : p)
    if (v > 0) h -= v * std::log(v) / std::log(2.0);
  return h;
}

// H(X) + H(Y) − H(X,Y): a different formula than the code's Σ p log p/(p p).
double mi_ref(const std::vector<int64_t>& c, int rows, int cols) {
  double n = 0;
  for (int64_t v : c) n += double(v);
  std::vector<double> px(rows, 0), py(cols, 0), pxy;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      const double p = double(c[std::size_t(i) * cols + j]) / n;
      px[i] += p;
      py[j] += p;
      pxy.push_back(p);
    }
  return entropy_ref(px) + entropy_ref(py) - entropy_ref(pxy);
}

TEST(RoutingGroups, MutualInformationOfKnownTables) {
  // Independent (an outer product of counts): 0 bits.
  std::vector<int64_t> ind;
  for (int i : {1, 2, 3})
    for (int j : {4, 1, 2, 7}) ind.push_back(int64_t(i) * j);
  EXPECT_NEAR(mutual_information_bits(ind, 3, 4), 0.0, 1e-12);
  // Each of 4 groups always picks its own expert: log2(4) = 2 bits = H(group).
  std::vector<int64_t> diag(16, 0);
  for (int i = 0; i < 4; ++i) diag[i * 4 + i] = 10 + i;
  EXPECT_NEAR(mutual_information_bits(diag, 4, 4), entropy_bits({10, 11, 12, 13}), 1e-12);
  // Random tables against the other formula.
  std::mt19937 rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    const int r = 2 + trial % 5, c = 3 + trial % 7;
    std::vector<int64_t> t(std::size_t(r) * c);
    for (auto& v : t) v = rng() % 50;
    EXPECT_NEAR(mutual_information_bits(t, r, c), mi_ref(t, r, c), 1e-12) << trial;
  }
  EXPECT_EQ(mutual_information_bits(std::vector<int64_t>(6, 0), 2, 3), 0.0);
}

TEST(RoutingGroups, AnEvaluationCountsKChoicesPerEvaluatedTokenOfEachGroup) {
  testing::TempDir d;
  Config cfg = tiny_config(d.path, d.path);
  cfg.model.ffn.kind = FfnConfig::Kind::kMoe;
  cfg.model.ffn.moe.num_experts = 4;
  cfg.model.ffn.moe.top_k = 2;
  cfg.model.ffn.moe.d_expert = 16;
  auto tok = data::make_byte_tokenizer();
  const std::string text(150, 'x');
  data::TokenStream s = data::tokenize_text(*tok, text + "abc");
  // Three groups over the stream: positions [0, 40) → 0, [40, 100) → 2, the rest → 1.
  TokenGroups g;
  g.names = {"first", "third", "second"};
  for (std::size_t i = 0; i < s.ids.size(); ++i) g.of_token.push_back(i < 40 ? 0 : i < 100 ? 2 : 1);
  Transformer m(cfg.model, 3, 16);
  m.params().initialize(7);
  EvalResult r = evaluate(m, s, 3, 16, 0, &g);
  ASSERT_TRUE(r.by_group.is_array());
  ASSERT_EQ(r.by_group.size(), 2u);  // both blocks are MoE
  // Windows start at 0, 16, 32, …: input tokens 0 … n−2 are each routed once.
  std::vector<int64_t> tokens(3, 0);
  for (std::size_t i = 0; i + 1 < s.ids.size(); ++i) ++tokens[g.of_token[i]];
  for (const auto& layer : r.by_group) {
    EXPECT_EQ(layer["per_token"], 2);
    EXPECT_EQ(layer["pairs"], 2 * int64_t(s.ids.size() - 1));
    EXPECT_EQ(layer["groups"], g.names);
    for (int grp = 0; grp < 3; ++grp) {
      int64_t sum = 0;
      for (int64_t v : layer["counts"][grp].get<std::vector<int64_t>>()) sum += v;
      EXPECT_EQ(sum, 2 * tokens[grp]) << "group " << grp;
    }
    const double mi = layer["mi_bits"];
    EXPECT_GE(mi, -1e-12);
    EXPECT_LE(mi, std::min(double(layer["h_group_bits"]), double(layer["h_expert_bits"])) + 1e-12);
  }
  // The loss does not depend on counting.
  Transformer m2(cfg.model, 3, 16);
  m2.params().initialize(7);
  EXPECT_EQ(evaluate(m2, s, 3, 16).loss, r.loss);
}

}  // namespace
}  // namespace moe
