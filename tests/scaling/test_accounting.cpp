// The accountant against the allocated model: parameter counts equal what the Transformer
// allocates, FLOPs equal a hand count.
#include <gtest/gtest.h>

#include "../error_util.h"
#include "../train_util.h"
#include "moe/model/transformer.h"
#include "moe/scaling/accounting.h"

using namespace moe;
using namespace moe::testing;
namespace fs = std::filesystem;

namespace {

TEST(Accounting, CountsEqualAllocatedParameters) {
  for (
      const char* text :
      {R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 4}})",
       R"({"model": {"d_model": 48, "n_layers": 3, "n_heads": 6, "n_kv_heads": 2, "qk_norm": true, "tie_embeddings": false}})",
       R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "head_dim": 24, "ffn": {"activation": "gelu", "d_ff": 80}}})",
       R"({"model": {"d_model": 32, "n_layers": 3, "n_heads": 4, "ffn_overrides": {"1": {"activation": "gelu", "d_ff": 40}}}})",
       R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 12, "qk_norm": "head", "qkv_bias": true}})"}) {
    Config c = config_from_json(nlohmann::json::parse(text), "test");
    Transformer m(c.model, 1, 4);
    int64_t allocated = 0;
    for (auto& p : m.params().all()) allocated += int64_t(p.numel);
    ModelCount mc = count_model(c.model, 16);
    EXPECT_EQ(mc.total, allocated) << text;
    EXPECT_EQ(mc.active, mc.total) << text;  // dense: every parameter is active
  }
}

TEST(Accounting, MoeCountsEqualAllocatedParametersWithSharedWidthAndGate) {
  // Qwen2-MoE-like: shared experts of their own width behind a sigmoid gate [C], a dense lead.
  Config c = config_from_json(nlohmann::json::parse(R"({"model": {"d_model": 32, "n_layers": 2,
      "n_heads": 4, "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16,
      "shared_experts": 2, "shared_d_expert": 24, "shared_gate": true},
      "ffn_overrides": {"0": {"kind": "dense", "d_ff": 48}}}})"),
                              "test");
  Transformer m(c.model, 1, 4);
  int64_t allocated = 0;
  for (auto& p : m.params().all()) allocated += int64_t(p.numel);
  const ModelCount mc = count_model(c.model, 16);
  EXPECT_EQ(mc.total, allocated);
  EXPECT_EQ(mc.shared, 2 * 3 * 32 * 24 + 32);
}

TEST(Accounting, FlopsMatchHandCount) {
  // C=32, L=2, 4 heads of 8, byte vocab, SwiGLU d_ff=64, tied, T=16.
  Config c = config_from_json(
      nlohmann::json::parse(
          R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn": {"d_ff": 64}}, "train": {"seq_len": 16}})"),
      "test");
  ModelCount m = count_model(c.model, 16);
  const double attn = 2 * 4.0 * 32 * 32, ffn = 2 * 3.0 * 32 * 64, head = 256.0 * 32;
  EXPECT_DOUBLE_EQ(m.flops_matmul_fwd, 2 * (attn + ffn + head));
  EXPECT_DOUBLE_EQ(m.flops_attention_fwd, 2 * 2 * 2 * 32 * 17 / 2.0);
  EXPECT_DOUBLE_EQ(m.flops_train, 3 * (m.flops_matmul_fwd + m.flops_attention_fwd));
}

TEST(Accounting, CountsBeyondInt32AreExactAndBeyondInt64AreRefused) {
  // d_model = 805306304: the default SwiGLU width 8·C/3 used to be computed in int (signed
  // overflow); the counts here are near 2^63 and must be exact. The reference is the formula in
  // __int128, independent of the code's int64 arithmetic.
  Config c = config_from_json(
      nlohmann::json::parse(R"({"model": {"d_model": 805306304, "n_layers": 1}})"), "test");
  const __int128 C = 805306304, V = 256, d_ff = (8 * C / 3 + 63) / 64 * 64;
  EXPECT_EQ(c.model.ffn.d_ff, int64_t(d_ff));
  const __int128 total = V * C + 4 * C * C + 3 * C * d_ff + 2 * C + C;  // tied head
  ModelCount mc = count_model(c.model, 16);
  EXPECT_EQ(__int128(mc.total), total);
  EXPECT_EQ(__int128(mc.attention), 4 * C * C);
  // The issue's reproducer: more than 2^63 parameters is refused, naming the fields.
  c.model.n_layers = 1000000;
  c.model.d_model = 2147483584;
  c.model.ffn.d_ff = 64;
  c.model.head_dim = 0;
  expect_error([&] { count_model(c.model, 16); },
               {"more than 2^63 - 1 parameters", "d_model = 2147483584", "n_layers = 1000000"});
  // And the default d_ff of such a width does not fit the model's int widths.
  expect_error(
      [&] {
        config_from_json(nlohmann::json::parse(R"({"model": {"d_model": 2147483584}})"), "test");
      },
      {"model.ffn.d_ff", "5726622912"});
}

TEST(Accounting, ParamStoreRefusesShapesBeyondInt64) {
  // The element count of a shape used to wrap in size_t (a wrapped product allocates too little).
  for (std::vector<int64_t> shape : {std::vector<int64_t>{4294967296, 4294967296},
                                     std::vector<int64_t>{3074457345618258603, 3}}) {
    ParamStore ps;
    expect_error([&] { ps.add("w", shape, Init::kZeros, 0, false); },
                 {"w", "does not fit in 64 bits"});
  }
}

}  // namespace
