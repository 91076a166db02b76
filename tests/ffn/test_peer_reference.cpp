// The PEER layer against the PyTorch reference (tools/reference/peer_layer.py): retrieved ids,
// router weights, output, batch-norm running statistics and all gradients, in double.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../fixture_util.h"
#include "../grad_check.h"
#include "moe/core/safetensors.h"
#include "moe/ffn/peer/peer_layer.h"

using namespace moe;
using moe::testing::all_close;
using moe::testing::as_double;
using moe::testing::fixture_path;
using moe::testing::max_abs;

namespace {

class PeerReference : public ::testing::TestWithParam<const char*> {};

TEST_P(PeerReference, MatchesPyTorch) {
  SafeTensorsReader r(fixture_path(std::string("peer_") + GetParam() + ".safetensors"));
  const nlohmann::json L = nlohmann::json::parse(r.meta("layer"));
  PeerSpec s;
  s.C = L["C"];
  s.d_key = L["d_key"];
  s.heads = L["heads"];
  s.S = L["sub_keys"];
  s.k = L["top_k"];
  s.gelu = L["activation"] == "gelu";
  s.qnorm = L["query_norm"] == "batchnorm"   ? QueryNorm::kBatch
            : L["query_norm"] == "layernorm" ? QueryNorm::kLayer
                                             : QueryNorm::kNone;
  const int N = L["tokens"], D = s.heads * s.d_key;
  std::map<std::string, std::vector<double>> P, G;
  for (const char* n : {"query.weight", "query.bias", "query_norm.weight", "query_norm.bias",
                        "keys1", "keys2", "u", "v"})
    if (r.has(std::string("param.") + n)) {
      P[n] = as_double(r, std::string("param.") + n);
      G[n] = std::vector<double>(P[n].size(), 0.0);
    }
  auto pp = [&](const char* n) -> double* { return P.count(n) ? P[n].data() : nullptr; };
  auto gp = [&](const char* n) -> double* { return G.count(n) ? G[n].data() : nullptr; };
  std::vector<double> rm(D, 0.0), rv(D, 1.0);
  PeerParams<double> p{pp("query.weight"),
                       pp("query.bias"),
                       pp("query_norm.weight"),
                       pp("query_norm.bias"),
                       pp("keys1"),
                       pp("keys2"),
                       pp("u"),
                       pp("v"),
                       rm.data(),
                       rv.data()};
  PeerLayer<double> layer(s);
  Arena m;
  layer.bind(m, N);
  Arena a(m.used());
  layer.bind(a, N);
  std::vector<double> x = as_double(r, "x"), R = as_double(r, "R"), y(std::size_t(N) * s.C),
                      dx(x.size(), 0.0);
  layer.forward(y.data(), x.data(), p, N, true);
  std::vector<int32_t> ids(layer.ids(), layer.ids() + N * s.heads * s.k);
  EXPECT_EQ(ids, r.read_i32("ids"));
  std::vector<double> gates(layer.weights(), layer.weights() + N * s.heads * s.k);
  EXPECT_TRUE(all_close("gates", gates, r.read_f64("gates"), 1e-12, 1e-10));
  std::vector<double> ry = r.read_f64("y");
  EXPECT_TRUE(all_close("y", y, ry, 1e-10 * max_abs(ry), 0));
  if (r.has("running_mean")) {
    EXPECT_TRUE(all_close("running_mean", rm, r.read_f64("running_mean"), 1e-12, 1e-10));
    EXPECT_TRUE(all_close("running_var", rv, r.read_f64("running_var"), 1e-12, 1e-10));
  }
  layer.backward(dx.data(),
                 {gp("query.weight"), gp("query.bias"), gp("query_norm.weight"),
                  gp("query_norm.bias"), gp("keys1"), gp("keys2"), gp("u"), gp("v")},
                 R.data(), x.data(), p);
  std::vector<double> ref = r.read_f64("grad.x");
  EXPECT_TRUE(all_close("grad.x", dx, ref, 1e-10 * max_abs(ref), 0));
  for (auto& [name, grad] : G) {
    ref = r.read_f64("grad." + name);
    EXPECT_TRUE(all_close("grad." + name, grad, ref, 1e-10 * max_abs(ref) + 1e-15, 0));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PeerReference,
                         ::testing::Values("bn_gelu", "nonorm_relu", "ln_gelu"));

}  // namespace
