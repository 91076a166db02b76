// Sweeps: one line per run appended, finished runs skipped on a rerun.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../train_util.h"
#include "moe/core/file_io.h"
#include "moe/dist/communicator.h"
#include "moe/train/sweep.h"

using namespace moe;
using namespace moe::testing;
namespace fs = std::filesystem;

namespace {

TEST(Sweep, AppendsOneLinePerRunAndResumesBySkippingFinishedRuns) {
  TempDir d;
  make_data(d.path);
  write_file_atomic(d.path + "/base.json",
                    nlohmann::json({{"model", {{"max_seq_len", 16}}},
                                    {"data", {{"dir", d.path}}},
                                    {"train", {{"batch_size", 4}, {"seq_len", 16}}}})
                        .dump());
  const std::string grid = d.path + "/grid.json";
  write_file_atomic(grid, nlohmann::json({{"base", d.path + "/base.json"},
                                          {"out_dir", d.path + "/sweep"},
                                          {"d_model", {64}},
                                          {"tokens", {320, 640}},
                                          {"granularity", {1, 2}},
                                          {"expansion", 2}})
                              .dump());
  SweepSummary a = run_sweep(grid, single_process_communicator());
  EXPECT_EQ(a.ran, 4);
  const std::string text = read_file(a.runs_file);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4);
  auto first = nlohmann::json::parse(text.substr(0, text.find('\n')));
  for (const char* k : {"name", "N", "D", "G", "E", "flops", "loss", "val_bpb"})
    EXPECT_TRUE(first.contains(k)) << k;
  EXPECT_EQ(first["D"].get<double>(), 320.0);
  // N: non-embedding, router excluded: 1 block of d=64 with 2·G experts of width 256/G (GELU)
  // = attention 4·64² + FFN 2·64·256·2 + norms 3·64.
  EXPECT_EQ(first["N"].get<double>(), 4.0 * 64 * 64 + 2.0 * 64 * 256 * 2 + 3 * 64);
  SweepSummary b = run_sweep(grid, single_process_communicator());
  EXPECT_EQ(b.ran, 0);
  EXPECT_EQ(b.skipped, 4);
}

}  // namespace
