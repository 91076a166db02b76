// Shared by the tests that train or evaluate a whole model: a temporary directory per test, a
// small English-like corpus, and a tiny config (GQA, QK-norm, dense SwiGLU, 12 steps with
// gradient accumulation, evaluation and logging every few steps).
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/core/file_io.h"
#include "moe/train/config.h"
#include "temp_dir.h"

namespace moe::testing {

// Writes small train/val/test splits of English-like text.
inline std::string make_data(const std::string& dir) {
  const char* words[] = {"the",    "jury",      "said",   "that", "city",   "election",
                         "was",    "conducted", "in",     "a",    "manner", "of",
                         "praise", "and",       "thanks", "for",  "it"};
  for (const char* split : {"train", "val", "test"}) {
    std::string text;
    uint32_t x = split[0];
    const int n = split[0] == 't' && split[1] == 'r' ? 6000 : 800;
    for (int i = 0; i < n; ++i) {
      x = x * 1664525u + 1013904223u;
      text += words[(x >> 16) % 17];
      text += (i % 11 == 10) ? " .\n" : " ";
    }
    write_file_atomic(dir + "/" + split + ".txt", text);
  }
  return dir;
}

inline Config tiny_config(const std::string& data_dir, const std::string& out_dir) {
  nlohmann::json j = {{"model",
                       {{"d_model", 32},
                        {"n_layers", 2},
                        {"n_heads", 4},
                        {"n_kv_heads", 2},
                        {"max_seq_len", 32},
                        {"qk_norm", true},
                        {"ffn", {{"kind", "dense"}, {"d_ff", 64}}}}},
                      {"data", {{"dir", data_dir}}},
                      {"train",
                       {{"batch_size", 4},
                        {"seq_len", 16},
                        {"steps", 12},
                        {"lr", 3e-3},
                        {"warmup_steps", 3},
                        {"min_lr", 3e-4},
                        {"eval_every", 6},
                        {"eval_batches", 2},
                        {"log_every", 3},
                        {"checkpoint_every", 0},
                        {"grad_accum", 2},
                        {"out_dir", out_dir}}}};
  return config_from_json(j, "test");
}

}  // namespace moe::testing
