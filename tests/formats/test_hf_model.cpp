// Hugging Face model directories: our random tiny models go out as the class that computes
// them and come back bit for bit (F32), BF16 / F16 exports round to nearest even, sharded
// directories read back, and every hostile directory gets one clear line naming the file and
// what is wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "../error_util.h"
#include "../temp_dir.h"
#include "moe/core/file_io.h"
#include "moe/core/half.h"
#include "moe/core/json_util.h"
#include "moe/formats/hf_model.h"
#include "moe/model/transformer.h"

namespace moe::formats {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::expect_error;

ModelConfig base_model() {
  ModelConfig m;
  m.vocab_size = 50;
  m.d_model = 32;
  m.n_layers = 3;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.max_seq_len = 64;
  m.rope_theta = 5e5f;
  m.norm_eps = 1e-6f;
  m.tie_embeddings = false;
  return m;
}

FfnConfig moe_ffn(int E, int k, int H, bool normalize, int shared = 0) {
  FfnConfig f;
  f.kind = FfnConfig::Kind::kMoe;
  f.d_ff = H;
  f.moe.num_experts = E;
  f.moe.top_k = k;
  f.moe.d_expert = H;
  f.moe.shared_experts = shared;
  f.moe.router.normalize = normalize;
  return f;
}

FfnConfig dense_ffn(int d_ff) {
  FfnConfig f;
  f.kind = FfnConfig::Kind::kDense;
  f.d_ff = d_ff;
  return f;
}

struct Case {
  const char* name;
  ModelConfig cfg;
  const char* arch;  // the class hf_arch_for must pick
};

std::vector<Case> cases() {
  std::vector<Case> out;
  ModelConfig m = base_model();
  m.ffn = moe_ffn(4, 2, 24, true);
  out.push_back({"mixtral", m, "MixtralForCausalLM"});
  m = base_model();
  m.qk_norm = QkNorm::kRow;
  m.tie_embeddings = true;
  m.ffn = moe_ffn(6, 2, 16, false);
  out.push_back({"olmoe", m, "OlmoeForCausalLM"});
  m = base_model();
  m.ffn = moe_ffn(4, 3, 16, false, 2);  // two shared experts: down_proj interleaves them
  m.ffn_overrides = {{0, dense_ffn(40)}};
  out.push_back({"deepseek", m, "DeepseekForCausalLM"});
  m = base_model();
  m.ffn = moe_ffn(4, 1, 16, false);  // plain top-k, nothing else: DeepSeekMoE without extras
  out.push_back({"deepseek_plain", m, "DeepseekForCausalLM"});
  m = base_model();
  m.ffn = dense_ffn(48);
  m.head_dim = 16;  // ≠ d_model / n_heads
  out.push_back({"llama", m, "LlamaForCausalLM"});
  m = base_model();
  m.qkv_bias = true;
  m.ffn = moe_ffn(4, 2, 16, false, 1);
  m.ffn.moe.shared_d_expert = 40;  // ≠ d_expert
  m.ffn.moe.shared_gate = true;
  out.push_back({"qwen2moe", m, "Qwen2MoeForCausalLM"});
  m = base_model();
  m.qk_norm = QkNorm::kHead;
  m.head_dim = 16;
  m.ffn = moe_ffn(4, 2, 16, true);
  out.push_back({"qwen3moe", m, "Qwen3MoeForCausalLM"});
  m = base_model();
  m.qk_norm = QkNorm::kHead;
  m.tie_embeddings = true;
  m.ffn = dense_ffn(40);
  out.push_back({"qwen3", m, "Qwen3ForCausalLM"});
  for (Case& c : out) c.cfg.resolve();
  return out;
}

// Every parameter random (norm weights too, so a misplaced tensor cannot hide).
void randomize(ParamStore& ps, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.5f);
  for (Param& p : ps.all())
    for (std::size_t i = 0; i < p.numel; ++i) p.w[i] = nd(rng);
}

// The fields the HF config carries, one line each, for comparing configs.
std::string describe(const ModelConfig& m) {
  std::string s =
      fmt::format("V{} C{} L{} H{} KV{} hd{} T{} theta{} eps{} tie{} qk{} std{}\n", m.vocab_size,
                  m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.max_seq_len,
                  m.rope_theta, m.norm_eps, m.tie_embeddings, int(m.qk_norm), m.init_std);
  s += fmt::format("bias{} rope{}\n", m.qkv_bias, int(m.rope_style));
  for (int l = 0; l < m.n_layers; ++l) {
    const FfnConfig& f = m.ffn_for(l);
    s += f.kind == FfnConfig::Kind::kDense
             ? fmt::format("dense {}\n", f.d_ff)
             : fmt::format("moe E{} k{} H{} S{} norm{} Hs{} gate{} scale{}\n", f.moe.num_experts,
                           f.moe.top_k, f.moe.d_expert, f.moe.shared_experts,
                           f.moe.router.normalize, f.moe.shared_d_expert, f.moe.shared_gate,
                           f.moe.router.routed_scaling_factor);
  }
  return s;
}

class HfModel : public ::testing::Test {
 protected:
  std::string dir(const std::string& name) const { return dir_.file(name); }
  testing::TempDir dir_;
};

// Our model → HF directory → ModelReader gives the same config and every parameter bit for bit.
void expect_round_trip(const Case& c, const std::string& out, const HfWriteOptions& opt) {
  Transformer model(c.cfg, 1, 8);
  randomize(model.params(), 11);
  EXPECT_EQ(hf_arch_name(hf_arch_for(c.cfg)), std::string(c.arch)) << c.name;
  write_hf_model(c.cfg, model.params(), out, opt);
  auto r = open_hf_model(out);
  EXPECT_EQ(r->format(), "hf");
  EXPECT_EQ(r->architecture(), c.arch);
  EXPECT_EQ(describe(r->config()), describe(c.cfg)) << c.name;
  std::set<std::string> listed;
  for (const SourceTensor& t : r->tensors()) listed.insert(t.our_name);
  std::set<std::string> ours;
  for (const Param& p : model.params().all()) ours.insert(p.name);
  EXPECT_EQ(listed, ours) << c.name;
  for (const Param& p : model.params().all()) {
    std::vector<float> got(p.numel, std::nanf(""));
    r->read(p.name, p.shape, got.data());
    ASSERT_EQ(std::memcmp(got.data(), p.w, p.numel * sizeof(float)), 0) << c.name << " " << p.name;
  }
}

TEST_F(HfModel, EveryClassRoundTripsBitForBit) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    expect_round_trip(c, dir(c.name), {});
    EXPECT_TRUE(file_exists(dir(c.name) + "/model.safetensors"));
    EXPECT_FALSE(file_exists(dir(c.name) + "/model.safetensors.index.json"));
  }
}

TEST_F(HfModel, ShardedDirectoriesRoundTrip) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const std::string out = dir(c.name);
    expect_round_trip(c, out, {DType::F32, 8192});
    const json index = parse_json(read_file(out + "/model.safetensors.index.json"), "index");
    std::set<std::string> files;
    for (auto& [name, f] : index["weight_map"].items()) files.insert(f.get<std::string>());
    EXPECT_GT(files.size(), 2u);
    for (const std::string& f : files) {
      EXPECT_TRUE(file_exists(out + "/" + f)) << f;
      EXPECT_LE(fs::file_size(out + "/" + f), 8192u + 4096u) << f;  // + header
    }
    EXPECT_FALSE(file_exists(out + "/model.safetensors"));
  }
  // Exporting one file into a sharded directory drops the stale index (a reader prefers it).
  const Case c = cases()[0];
  expect_round_trip(c, dir(c.name), {});
  EXPECT_FALSE(file_exists(dir(c.name) + "/model.safetensors.index.json"));
}

// Property of round-to-nearest-even checked in double, independently of core/half.h: the stored
// value v is representable (bf16: low 16 bits zero), no neighbour code is nearer to x, and on a
// tie v's code is even.
void expect_nearest_even_bf16(float x, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  ASSERT_EQ(u & 0xffffu, 0u) << x;
  for (int d : {-1, 1}) {
    const uint32_t nu = u + uint32_t(d << 16);
    float n;
    std::memcpy(&n, &nu, 4);
    const double dv = std::fabs(double(x) - v), dn = std::fabs(double(x) - n);
    ASSERT_TRUE(dv < dn || (dv == dn && ((u >> 16) & 1u) == 0)) << x << " stored " << v;
  }
}

TEST_F(HfModel, HalfExportsRoundToNearestEven) {
  const Case c = cases()[0];
  Transformer model(c.cfg, 1, 8);
  randomize(model.params(), 5);
  // Put exact ties into the embedding: x = bf16 code + half a step, both parities.
  Param* e = model.params().find("embed.weight");
  for (uint32_t i = 0; i < 64; ++i) {
    const uint32_t bits = 0x3f800000u + (i << 16) + 0x8000u;
    std::memcpy(&e->w[i], &bits, 4);
  }
  for (DType d : {DType::BF16, DType::F16}) {
    const std::string out = dir(dtype_name(d));
    write_hf_model(c.cfg, model.params(), out, {d, 0});
    auto r = open_hf_model(out);
    EXPECT_EQ(r->tensors()[0].dtype, dtype_name(d));
    for (const Param& p : model.params().all()) {
      std::vector<float> got(p.numel);
      r->read(p.name, p.shape, got.data());
      for (std::size_t i = 0; i < p.numel; ++i) {
        if (d == DType::BF16) {
          expect_nearest_even_bf16(p.w[i], got[i]);
        } else {  // |x| < 4 here: F16 normals with a step of 2^(e−10), within half a step
          int ex;
          std::frexp(p.w[i], &ex);
          const double half_step = std::ldexp(1.0, std::max(ex - 1, -14) - 11);
          ASSERT_LE(std::fabs(double(p.w[i]) - got[i]), half_step) << p.name << " " << i;
        }
      }
    }
  }
}

// ---- hostile input ---------------------------------------------------------------------------

// A valid exported directory whose config.json the test then edits.
std::string exported(const std::string& out, const HfWriteOptions& opt = {}) {
  const Case c = cases()[0];
  Transformer model(c.cfg, 1, 8);
  randomize(model.params(), 3);
  write_hf_model(c.cfg, model.params(), out, opt);
  return out;
}

void edit_config(const std::string& dir, const std::function<void(json&)>& f) {
  json j = parse_json(read_file(dir + "/config.json"), "config");
  f(j);
  write_file_atomic(dir + "/config.json", j.dump());
}

TEST_F(HfModel, MissingConfigOrWeights) {
  const std::string d = exported(dir("m"));
  EXPECT_TRUE(is_hf_model_dir(d));
  EXPECT_FALSE(is_hf_model_dir(d + "/model.safetensors"));
  fs::remove(d + "/config.json");
  EXPECT_FALSE(is_hf_model_dir(d));
  expect_error([&] { open_hf_model(d); }, {"is a directory without config.json",
                                           "a Hugging Face model directory with config.json"});
  expect_error([&] { open_hf_model(dir("nowhere")); }, {"nowhere", "not a directory"});
  const std::string d2 = exported(dir("w"));
  fs::remove(d2 + "/model.safetensors");
  expect_error([&] { open_hf_model(d2); }, {"model.safetensors", "model.safetensors.index.json"});
}

TEST_F(HfModel, UnsupportedArchitecturesNameTheClassAndTheSupportedOnes) {
  const std::string d = exported(dir("a"));
  for (const char* a :
       {"DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM", "GptOssForCausalLM", "BertModel"}) {
    edit_config(d, [&](json& j) { j["architectures"] = {a}; });
    expect_error([&] { open_hf_model(d); },
                 {"config.json", a, "not supported", "MixtralForCausalLM", "Qwen3ForCausalLM"});
  }
  edit_config(d, [&](json& j) { j["architectures"] = {"DeepseekV3ForCausalLM"}; });
  expect_error([&] { open_hf_model(d); }, {"multi-head latent attention"});
}

TEST_F(HfModel, ConfigValuesWeCannotComputeAreRefusedByKey) {
  const std::string d = exported(dir("k"));
  struct Bad {
    const char* key;
    json value;
    const char* says;
  };
  const Bad bad[] = {
      {"rope_scaling", {{"type", "yarn"}, {"factor", 4}}, "yarn"},
      {"hidden_act", "gelu", "silu"},
      {"attention_bias", true, "attention biases"},
      {"sliding_window", 16, "sliding-window"},
      {"num_experts_per_tok", 9, "more than the 4 experts"},
      {"hidden_size", -3, "expected an integer"},
      {"quantization_config", {{"quant_method", "gptq"}}, "quantized"},
      {"rope_parameters", {{"rope_type", "llama3"}, {"rope_theta", 1e4}}, "rope_type"},
  };
  const json original = parse_json(read_file(d + "/config.json"), "config");
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.key);
    edit_config(d, [&](json& j) {
      j = original;
      j[b.key] = b.value;
    });
    expect_error([&] { open_hf_model(d); }, {"config.json", b.key, b.says});
  }
  // Sizes far beyond what the files hold are refused before anything is built from them.
  for (const char* key : {"num_hidden_layers", "num_local_experts"}) {
    edit_config(d, [&](json& j) {
      j = original;
      j[key] = 1 << 29;
    });
    expect_error([&] { open_hf_model(d); }, {"config.json", "536870912", "hold only"});
  }
  edit_config(d, [&](json& j) { j = original; });
  EXPECT_NO_THROW(open_hf_model(d));
}

// DeepSeekMoE renormalises only when k > 1 (modeling_deepseek.py: `if self.top_k > 1 and
// self.norm_topk_prob`): its top-1 weight is the plain softmax probability.
TEST_F(HfModel, DeepseekTopOneIsNeverRenormalised) {
  const Case c = cases()[3];  // deepseek_plain: k = 1
  ASSERT_EQ(c.cfg.ffn.moe.top_k, 1);
  Transformer model(c.cfg, 1, 8);
  write_hf_model(c.cfg, model.params(), dir("d"));
  edit_config(dir("d"), [](json& j) { j["norm_topk_prob"] = true; });
  EXPECT_FALSE(open_hf_model(dir("d"))->config().ffn.moe.router.normalize);
  edit_config(dir("d"), [](json& j) { j["num_experts_per_tok"] = 2; });
  EXPECT_TRUE(open_hf_model(dir("d"))->config().ffn.moe.router.normalize);
}

TEST_F(HfModel, ShapeDisagreeingWithConfig) {
  const std::string d = exported(dir("s"));
  edit_config(d, [](json& j) { j["intermediate_size"] = 20; });
  expect_error([&] { open_hf_model(d); },
               {"model.safetensors", "experts.0.w1.weight", "[24, 32]", "[20, 32]", "config.json"});
}

TEST_F(HfModel, ShardProblemsNameTheShard) {
  const std::string d = exported(dir("x"), {DType::F32, 8192});
  const std::string index_path = d + "/model.safetensors.index.json";
  json index = parse_json(read_file(index_path), "index");
  // A tensor moved to a shard that does not hold it.
  json moved = index;
  const std::string first = index["weight_map"]["model.embed_tokens.weight"];
  const std::string other = index["weight_map"]["model.norm.weight"];
  ASSERT_NE(first, other);
  moved["weight_map"]["model.embed_tokens.weight"] = other;
  write_file_atomic(index_path, moved.dump());
  expect_error([&] { open_hf_model(d); },
               {"index.json", "model.embed_tokens.weight", other, "does not hold"});
  // A shard outside the directory.
  json escape = index;
  escape["weight_map"]["model.norm.weight"] = "../x.safetensors";
  write_file_atomic(index_path, escape.dump());
  expect_error([&] { open_hf_model(d); }, {"index.json", "../x.safetensors", "file name"});
  // Not an index at all.
  write_file_atomic(index_path, "{\"weight_map\": [1, 2]}");
  expect_error([&] { open_hf_model(d); }, {"index.json", "'weight_map' object"});
  write_file_atomic(index_path, "{\"weight_map\": {");
  expect_error([&] { open_hf_model(d); }, {"index.json", "JSON"});
  // A shard missing.
  write_file_atomic(index_path, index.dump());
  fs::remove(d + "/" + other);
  expect_error([&] { open_hf_model(d); }, {"index.json", other, "does not exist"});
}

// The file rewritten without `drop` and with an extra tensor `add` (when not empty).
void rewrite(const std::string& path, const std::string& drop, const std::string& add) {
  SafeTensorsReader r(path);
  std::vector<TensorRef> refs;
  for (const std::string& n : r.names())
    if (n != drop) refs.push_back({n, r.info(n).dtype, r.info(n).shape, r.raw(n)});
  static const float zeros[32] = {};
  if (!add.empty()) refs.push_back({add, DType::F32, {32}, zeros});
  write_safetensors(path + ".edited", refs, {});
  fs::rename(path + ".edited", path);
}

TEST_F(HfModel, LeftoverOrMissingTensors) {
  const std::string d = exported(dir("t"));
  // An attention bias the config does not announce: a feature we would silently drop.
  rewrite(d + "/model.safetensors", "", "model.layers.0.self_attn.o_proj.bias");
  expect_error([&] { open_hf_model(d); },
               {"model.safetensors", "model.layers.0.self_attn.o_proj.bias", "no place",
                "MixtralForCausalLM"});
  rewrite(d + "/model.safetensors", "model.layers.0.self_attn.o_proj.bias", "");
  EXPECT_NO_THROW(open_hf_model(d));
  // A tied model's stray lm_head.weight is tied away by the class, as by us.
  edit_config(d, [](json& j) { j["tie_word_embeddings"] = true; });
  for (const SourceTensor& t : open_hf_model(d)->tensors()) EXPECT_NE(t.our_name, "head.weight");
  rewrite(d + "/model.safetensors", "model.norm.weight", "");
  expect_error([&] { open_hf_model(d); }, {"'model.norm.weight'", "missing", "norm.weight"});
}

// transformers 5 saves a block's experts fused (experts.gate_up_proj [E, 2H, C], gate rows
// first; experts.down_proj [E, C, H]; llama.cpp's conversion/qwen.py reads both spellings).
TEST_F(HfModel, FusedExpertTensorsReadLikePerExpertOnes) {
  const Case c = cases()[2];  // deepseek: block 0 dense, blocks 1-2 MoE with shared experts
  Transformer model(c.cfg, 1, 8);
  randomize(model.params(), 9);
  const std::string d = dir("fused");
  write_hf_model(c.cfg, model.params(), d);
  const std::string path = d + "/model.safetensors";
  std::vector<std::vector<float>> keep;  // the fused tensors' data
  std::vector<TensorRef> refs;
  {
    SafeTensorsReader r(path);
    for (const std::string& n : r.names())
      if (n.find(".experts.") == std::string::npos)
        refs.push_back({n, r.info(n).dtype, r.info(n).shape, r.raw(n)});
    const int64_t E = 4, H = 16, C = 32;
    for (int l = 1; l < 3; ++l) {
      const std::string b = fmt::format("model.layers.{}.mlp.experts.", l);
      const std::string suffix = l == 1 ? ".weight" : "";  // both spellings occur
      std::vector<float> gate_up, down;
      for (int64_t e = 0; e < E; ++e) {
        for (const char* w : {"gate_proj", "up_proj"}) {
          const std::vector<float> v = r.read_f32(fmt::format("{}{}.{}.weight", b, e, w));
          gate_up.insert(gate_up.end(), v.begin(), v.end());
        }
        const std::vector<float> v = r.read_f32(fmt::format("{}{}.down_proj.weight", b, e));
        down.insert(down.end(), v.begin(), v.end());
      }
      keep.push_back(std::move(gate_up));
      refs.push_back({b + "gate_up_proj" + suffix, DType::F32, {E, 2 * H, C}, keep.back().data()});
      keep.push_back(std::move(down));
      refs.push_back({b + "down_proj" + suffix, DType::F32, {E, C, H}, keep.back().data()});
    }
    write_safetensors(path + ".edited", refs, {});
  }
  fs::rename(path + ".edited", path);
  auto r = open_hf_model(d);
  for (const Param& p : model.params().all()) {
    std::vector<float> got(p.numel, std::nanf(""));
    r->read(p.name, p.shape, got.data());
    ASSERT_EQ(std::memcmp(got.data(), p.w, p.numel * sizeof(float)), 0) << p.name;
  }
}

TEST_F(HfModel, ExportRefusesWhatNoClassComputes) {
  struct Bad {
    std::function<void(ModelConfig&)> edit;
    const char* says;
  };
  const Bad bad[] = {
      {[](ModelConfig& m) { m.ffn.moe.router.kind = RouterConfig::Kind::kExpertChoice; },
       "expert_choice"},
      {[](ModelConfig& m) { m.ffn.moe.router.kind = RouterConfig::Kind::kNoisyTopK; },
       "noisy_topk"},
      {[](ModelConfig& m) { m.ffn.moe.router.score = RouterConfig::Score::kSigmoid; }, "sigmoid"},
      {[](ModelConfig& m) { m.ffn.moe.router.bias_balance = true; }, "selection bias"},
      {[](ModelConfig& m) { m.ffn.activation = Activation::kGELU; }, "gelu"},
      {[](ModelConfig& m) { m.ffn.moe.eval_capacity_factor = 1.25f; }, "eval_capacity_factor"},
      {[](ModelConfig& m) { m.ffn.moe.router.routed_scaling_factor = 2.5f; },
       "routed_scaling_factor 2.5"},
      {[](ModelConfig& m) { m.rope_style = RopeStyle::kInterleaved; }, "interleaved RoPE"},
      {[](ModelConfig& m) { m.qkv_bias = true; }, "q/k/v biases without a gated shared expert"},
      {[](ModelConfig& m) {
         m.ffn.kind = FfnConfig::Kind::kPeer;
         m.ffn.activation = Activation::kGELU;
         m.ffn.peer.num_experts = 16;
       },
       "PEER"},
      {[](ModelConfig& m) {
         m.ffn_overrides = {{2, dense_ffn(40)}};
       },
       "dense block 2 after MoE"},
      {[](ModelConfig& m) {
         m.ffn.moe.top_k = 1;
         m.ffn.moe.shared_experts = 1;
       },
       "renormalised top-1"},
      {[](ModelConfig& m) {
         m.qk_norm = QkNorm::kRow;
         m.ffn.moe.shared_experts = 1;
       },
       "whole-row QK-norm (OLMoE) with shared experts"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.says);
    ModelConfig m = base_model();
    m.ffn = moe_ffn(4, 2, 16, true);
    b.edit(m);
    m.resolve();
    expect_error([&] { hf_arch_for(m); }, {"no Hugging Face class computes", b.says});
  }
}

}  // namespace
}  // namespace moe::formats
