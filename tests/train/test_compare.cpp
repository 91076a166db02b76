// moe compare: equal training-FLOP budgets, and results that resume.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../train_util.h"
#include "moe/core/file_io.h"
#include "moe/dist/communicator.h"
#include "moe/train/compare.h"

using namespace moe;
using namespace moe::testing;
namespace fs = std::filesystem;

namespace {

TEST(Compare, EqualFlopBudgetsAndResumableResults) {
  TempDir d;
  make_data(d.path);
  auto write_cfg = [&](const std::string& name, const nlohmann::json& ffn) {
    const std::string p = d.path + "/" + name + ".json";
    write_file_atomic(p, nlohmann::json({{"model",
                                          {{"d_model", 32},
                                           {"n_layers", 2},
                                           {"n_heads", 2},
                                           {"max_seq_len", 16},
                                           {"ffn", ffn}}},
                                         {"data", {{"dir", d.path}}},
                                         {"train", {{"batch_size", 4}, {"seq_len", 16}}}})
                             .dump());
    return p;
  };
  CompareOptions o;
  o.flops = 3e8;
  o.configs = {write_cfg("small", {{"d_ff", 32}}), write_cfg("big", {{"d_ff", 256}})};
  o.out_dir = d.path + "/cmp";
  auto r = run_compare(o, single_process_communicator());
  ASSERT_EQ(r.size(), 2u);
  for (auto& j : r) {
    // Each run spends the budget to within one step.
    const double per_step = j["flops_per_token_train"].get<double>() * 64;
    EXPECT_LE(j["flops"].get<double>(), o.flops);
    EXPECT_GT(j["flops"].get<double>(), o.flops - per_step);
    EXPECT_TRUE(std::isfinite(j["val_bpb"].get<double>()));
  }
  EXPECT_GT(r[0]["steps"].get<int64_t>(),
            r[1]["steps"].get<int64_t>());  // cheaper model, more steps
  auto again =
      run_compare(o, single_process_communicator());  // resumable: read back, not retrained
  EXPECT_EQ(again[1]["wall_s"], r[1]["wall_s"]);
}

}  // namespace
