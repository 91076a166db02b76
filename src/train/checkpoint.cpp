#include "moe/train/checkpoint.h"

#include <sys/statvfs.h>

#include <cmath>
#include <deque>
#include <filesystem>

#include "moe/core/error.h"
#include "moe/core/json_util.h"
#include "moe/core/safetensors.h"
#include "moe/dist/communicator.h"

namespace moe {

using json = nlohmann::json;

// Expert parallelism: the whole tensor of a sharded parameter (or of its optimizer moment), on
// every rank. Each rank contributes its rows to a zero tensor and the ranks sum them (exact: every
// element has one non-zero term). A collective: every rank must call it, in the same order.
static const float* gather_shard(Communicator& comm, const Param& p, const float* local,
                                 std::deque<std::vector<float>>& keep) {
  if (!p.sharded()) return local;
  std::vector<float>& full = keep.emplace_back(std::size_t(p.global_rows) * p.row_numel(), 0.f);
  std::copy(local, local + p.numel, full.begin() + std::size_t(p.shard_first) * p.row_numel());
  comm.allreduce_sum(full.data(), full.size());
  return full.data();
}

void save_checkpoint(const std::string& path, Transformer& model, const AdamWOptimizer* opt,
                     const CheckpointMeta& meta) {
  ParamStore& ps = model.params();
  Communicator& comm = model.communicator();  // the ranks holding the model's shards
  std::vector<TensorRef> tensors;
  std::deque<std::vector<float>> gathered;  // whole tensors of expert-parallel shards
  std::size_t bytes = 0;
  for (const Param& p : ps.all()) {
    tensors.push_back({p.name, DType::F32, p.global_shape(), gather_shard(comm, p, p.w, gathered)});
    bytes += p.numel * 4;
  }
  if (opt) {
    auto* o = const_cast<AdamWOptimizer*>(opt);
    for (const Param& p : ps.all()) {
      tensors.push_back({"optim.m." + p.name, DType::F32, p.global_shape(),
                         gather_shard(comm, p, o->m() + p.offset, gathered)});
      tensors.push_back({"optim.v." + p.name, DType::F32, p.global_shape(),
                         gather_shard(comm, p, o->v() + p.offset, gathered)});
      bytes += 2 * p.numel * 4;
      if (const int32_t* t = o->row_steps(p)) {  // lazy Adam's per-row step counts
        tensors.push_back({"optim.t." + p.name, DType::I32, {p.shape[0]}, t});
        bytes += p.shape[0] * 4;
      }
    }
  }
  if (!comm.is_root()) return;  // the ranks hold the same model now: one writer
  // Refuse early, with a clear message, rather than fail half way through the write.
  std::string dir = std::filesystem::path(path).parent_path().string();
  struct statvfs sv {};
  if (::statvfs(dir.empty() ? "." : dir.c_str(), &sv) == 0) {
    const double avail = double(sv.f_bavail) * double(sv.f_frsize);
    MOE_CHECK(avail > double(bytes) + (1 << 20),
              "{}: not enough free disk for the checkpoint ({:.1f} MiB needed, {:.1f} MiB free); "
              "the previous checkpoint is untouched",
              path, bytes / 1048576.0, avail / 1048576.0);
  }
  json st = {{"step", meta.state.step},
             {"tokens_seen", meta.state.tokens_seen},
             {"elapsed_s", meta.state.elapsed_s}};
  std::map<std::string, std::string> md = {{"format", kCheckpointFormat},
                                           {"config", meta.config.to_json().dump()},
                                           {"train_state", st.dump()},
                                           {"tokenizer.kind", meta.tokenizer_kind},
                                           {"tokenizer.blob", meta.tokenizer_blob},
                                           {"has_optimizer", opt ? "1" : "0"}};
  write_safetensors(path, tensors, md);
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  SafeTensorsReader r(path);
  auto it = r.metadata().find("format");
  MOE_CHECK(it != r.metadata().end() && it->second == kCheckpointFormat,
            "{}: not a moe.cpp checkpoint (__metadata__.format is {}, expected \"{}\")", path,
            it == r.metadata().end() ? std::string("missing") : "\"" + it->second + "\"",
            kCheckpointFormat);
  CheckpointMeta m;
  // Depth-bounded: an untrusted checkpoint's metadata reaches the config's error messages.
  const json cj = parse_json(r.meta("config"), path + ": __metadata__.config");
  m.config = config_from_json(cj, path + " (__metadata__.config)");
  const json st = parse_json(r.meta("train_state"), path + ": __metadata__.train_state");
  MOE_CHECK(st.is_object() && st.contains("step"),
            "{}: __metadata__.train_state is not a valid JSON object with a step", path);
  // Each field type-checked naming it (a string step used to surface as nlohmann's
  // "type_error.302" with no file or field).
  for (const char* k : {"step", "tokens_seen", "elapsed_s"})
    MOE_CHECK(!st.contains(k) ||
                  (std::string(k) == "elapsed_s" ? st[k].is_number() : st[k].is_number_integer()),
              "{}: __metadata__.train_state field {}: got {}, expected {}", path, k,
              json_excerpt(st[k]), std::string(k) == "elapsed_s" ? "a number" : "an integer");
  m.state.step = st.value("step", int64_t(0));
  m.state.tokens_seen = st.value("tokens_seen", int64_t(0));
  m.state.elapsed_s = st.value("elapsed_s", 0.0);
  // A negative step used to start training at step −4 and end in NaN blamed on the learning rate.
  MOE_CHECK(m.state.step >= 0 && m.state.tokens_seen >= 0 && std::isfinite(m.state.elapsed_s) &&
                m.state.elapsed_s >= 0,
            "{}: __metadata__.train_state has step {}, tokens_seen {}, elapsed_s {}: expected "
            "non-negative values",
            path, m.state.step, m.state.tokens_seen, m.state.elapsed_s);
  m.tokenizer_kind = r.meta("tokenizer.kind");
  m.tokenizer_blob = r.meta("tokenizer.blob");
  return m;
}

void load_checkpoint(const std::string& path, Transformer& model, AdamWOptimizer* opt) {
  SafeTensorsReader r(path);
  auto it = r.metadata().find("format");
  MOE_CHECK(it != r.metadata().end() && it->second == kCheckpointFormat,
            "{}: not a moe.cpp checkpoint (no __metadata__.format = \"{}\")", path,
            kCheckpointFormat);
  // A sharded parameter (expert parallelism) takes its rows of the whole stored tensor.
  auto read = [&](const std::string& name, const Param& p, float* dst) {
    if (!p.sharded()) return r.read_into(name, DType::F32, p.shape, dst);
    std::vector<float> full(std::size_t(p.global_rows) * p.row_numel());
    r.read_into(name, DType::F32, p.global_shape(), full.data());
    const auto first = full.begin() + std::size_t(p.shard_first) * p.row_numel();
    std::copy(first, first + p.numel, dst);
  };
  for (Param& p : model.params().all()) {
    MOE_CHECK(r.has(p.name), "{}: tensor '{}' missing (does the checkpoint match the config?)",
              path, p.name);
    read(p.name, p, p.w);
  }
  if (opt) {
    for (Param& p : model.params().all()) {
      const std::string mn = "optim.m." + p.name, vn = "optim.v." + p.name;
      MOE_CHECK(r.has(mn) && r.has(vn),
                "{}: optimizer state for '{}' missing: this checkpoint cannot resume training "
                "(start a fresh run from its weights instead: init_from)",
                path, p.name);
      read(mn, p, opt->m() + p.offset);
      read(vn, p, opt->v() + p.offset);
      if (p.sparse_rows && r.has("optim.t." + p.name)) {
        opt->ensure_row_steps(p);
        r.read_into("optim.t." + p.name, DType::I32, {p.shape[0]}, opt->row_steps(p));
      }
    }
  }
}

namespace {

// The dense FFN tensor an MoE layer's experts start from: layers.L.ffn.experts.w_up ←
// layers.L.ffn.w_up (shared experts alike); "" for any other tensor.
std::string dense_source_of(const std::string& name, std::string* mat) {
  for (const char* group : {".ffn.experts.", ".ffn.shared."}) {
    const auto pos = name.find(group);
    if (pos == std::string::npos) continue;
    *mat = name.substr(pos + std::string(group).size());  // w_gate | w_up | w_down
    if (*mat != "w_gate" && *mat != "w_up" && *mat != "w_down") return "";
    return name.substr(0, pos) + ".ffn." + *mat;
  }
  return "";
}

// Parameters that have no dense counterpart and keep their fresh initialisation: the routers
// (weights, noise projections, balancing bias) and the shared experts' sigmoid gate.
bool starts_fresh_when_upcycled(const std::string& name) {
  return name.find(".ffn.router.") != std::string::npos ||
         name.find(".ffn.shared.gate") != std::string::npos;
}

// p [E, H, C] (w_down: [E, C, H]) ← slices of the dense tensor t [D, C] (w_down: [C, D]).
void fill_experts_from_dense(const SafeTensorsReader& r, const std::string& path, Param& p,
                             const std::string& mat, const std::string& src) {
  MOE_CHECK(r.has(src),
            "{}: upcycling '{}' {} needs the dense tensor '{}', which the checkpoint does not "
            "have",
            path, p.name, shape_str(p.shape), src);
  const TensorInfo& t = r.info(src);
  const int64_t E = p.shape[0];
  const bool down = mat == "w_down";
  const int64_t H = down ? p.shape[2] : p.shape[1], C = down ? p.shape[1] : p.shape[2];
  const bool two_d = t.shape.size() == 2;
  const int64_t D = two_d ? (down ? t.shape[1] : t.shape[0]) : 0;
  MOE_CHECK(t.dtype == DType::F32, "{}: upcycling '{}': tensor '{}' has dtype {}, expected F32",
            path, p.name, src, dtype_name(t.dtype));
  MOE_CHECK(two_d && (down ? t.shape[0] : t.shape[1]) == C && D > 0 && D % H == 0,
            "{}: upcycling '{}' {}: tensor '{}' has shape {}, expected {} (a dense width D that "
            "is a multiple of d_expert = {}, model width {})",
            path, p.name, shape_str(p.shape), src, shape_str(t.shape),
            down ? fmt::format("[{}, D]", C) : fmt::format("[D, {}]", C), H, C);
  std::vector<float> dense = r.read_f32(src);
  const int64_t slices = D / H;
  for (int64_t e = 0; e < E; ++e) {
    // First hidden unit of this expert's slice (by its global index under expert parallelism).
    const int64_t s0 = ((p.shard_first + e) % slices) * H;
    float* dst = p.w + e * H * C;
    for (int64_t i = 0; i < (down ? C : H); ++i)
      for (int64_t j = 0; j < (down ? H : C); ++j)
        dst[i * (down ? H : C) + j] = down ? dense[i * D + s0 + j] : dense[(s0 + i) * C + j];
  }
}

}  // namespace

int upcycle_from_dense(const std::string& path, Transformer& model) {
  SafeTensorsReader r(path);
  auto it = r.metadata().find("format");
  MOE_CHECK(it != r.metadata().end() && it->second == kCheckpointFormat,
            "{}: not a moe.cpp checkpoint (no __metadata__.format = \"{}\")", path,
            kCheckpointFormat);
  // Every tensor is filled from the checkpoint except the routers: a missing, reshaped
  // (e.g. transposed) or non-F32 tensor used to keep its random initialisation silently.
  int filled = 0;
  for (Param& p : model.params().all()) {
    std::string mat;
    const std::string src = dense_source_of(p.name, &mat);
    if (!src.empty() && !r.has(p.name)) {
      fill_experts_from_dense(r, path, p, mat, src);
      ++filled;
      continue;
    }
    if (starts_fresh_when_upcycled(p.name) && !r.has(p.name)) continue;
    MOE_CHECK(r.has(p.name),
              "{}: upcycling needs tensor '{}' (F32 {}), which the checkpoint does not have "
              "(only the routers start fresh; was this checkpoint trained with the same "
              "d_model, n_layers and attention?)",
              path, p.name, shape_str(p.shape));
    const TensorInfo& t = r.info(p.name);
    MOE_CHECK(t.dtype == DType::F32 && t.shape == p.shape,
              "{}: upcycling: tensor '{}' is {} {}, expected F32 {}", path, p.name,
              dtype_name(t.dtype), shape_str(t.shape), shape_str(p.shape));
    r.read_into(p.name, DType::F32, p.shape, p.w);
    ++filled;
  }
  return filled;
}

}  // namespace moe
