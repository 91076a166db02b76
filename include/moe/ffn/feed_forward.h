// The one interface every FFN kind implements (dense now; moe and peer plug in here). A block
// owns one FeedForward and never looks inside it, so attention and the trainer do not change
// when a new kind arrives.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/core/arena.h"
#include "moe/core/params.h"
#include "moe/dist/communicator.h"
#include "moe/model/config.h"

namespace moe {

// What a layer may need to know about the step it runs in (routing noise is keyed by step and
// layer; expert-choice groups tokens by position, so it needs the batch shape).
struct StepInfo {
  bool training = true;
  int64_t step = 0;
  uint64_t seed = 0;
  int batch = 1;    // B
  int seq_len = 1;  // T; tokens are laid out [B, T] row-major
  // Gradient scale of the step's loss (1/grad_accum); auxiliary losses scale their gradients by
  // it too, so they accumulate like the main loss.
  float loss_scale = 1.f;
  // A counting pre-pass forward (training; see FeedForward::needs_count_pass): no backward
  // follows. A layer gathers the step-wide statistics it asked for and otherwise leaves no trace
  // (no metrics, no state); a layer with state that a forward changes refuses it.
  bool count_pass = false;
};

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // Carves this layer's activation buffers for up to max_batch × max_seq tokens out of `acts`.
  // Called twice (a measuring pass, then the real arena) and must take the same sizes both times.
  virtual void bind(Arena& acts, int max_batch, int max_seq) = 0;
  // out [N,C] (written) from x [N,C]. x stays valid and unchanged until backward.
  virtual void forward(float* out, const float* x, int n_tokens, const StepInfo& info) = 0;
  // dx [N,C] (+=), parameter gradients (+=); dout [N,C], x as given to forward.
  virtual void backward(float* dx, const float* dout, const float* x, int n_tokens) = 0;
  // Extra loss terms this layer added in the last forward (balancing losses; 0 for dense).
  virtual double aux_loss() const { return 0; }
  virtual std::string describe() const = 0;
  // Routing metrics accumulated over the forwards since the last reset (null for dense).
  virtual nlohmann::json metrics() const { return nullptr; }
  // Called by the trainer once per optimizer step, after the update, when every micro-batch's
  // forward and backward of the step are done: per-step state such as DeepSeek-V3's selection
  // bias (moe: router.bias_update) changes here.
  virtual void end_step() {}
  // True when this layer needs statistics of the whole optimizer step before any of the step's
  // backwards (moe: aux_loss_scope global_batch). With grad_accum > 1 the trainer then first
  // runs a forward of every micro-batch of the step with StepInfo::count_pass, then the usual
  // forward and backward of each; the micro-batches, weights and random keys are the same, so
  // the counting forwards route exactly as the real ones will. One forward runs, on one
  // micro-batch, when grad_accum = 1: its statistics are already the step's.
  virtual bool needs_count_pass() const { return false; }
  // train.precision (docs/KERNELS.md). set_precision is called once, after bind and before the
  // first forward; a layer that has no bf16 path keeps computing in f32 (and says so in
  // describe()). refresh_low_precision() is called by the owner once per optimizer step, before
  // the step's first forward and before each evaluation, and rounds the f32 masters into the
  // layer's bf16 shadows, so every product of a step sees the same rounded weights.
  virtual void set_precision(Precision) {}
  virtual void refresh_low_precision() {}
  // Bytes the bf16 path allocated (set_precision): shadows, saved operands, scratch.
  virtual std::size_t low_precision_bytes() const { return 0; }
  virtual void reset_metrics() {}
  // The experts each token of the last forward selected, for routing analysis: [N, k] ids
  // (before capacity), k in *per_token. Empty (k = 0) for kinds without a fixed k per token
  // (dense, PEER, expert choice, relu).
  virtual std::vector<int32_t> last_choices(int* per_token) const {
    *per_token = 0;
    return {};
  }
};

// `layer` is the block index (it keys the routing noise). `comm`: the ranks training together
// (MoE and PEER layers gather routing statistics over them; expert-parallel MoE layers hold
// their block of experts and exchange tokens over them).
std::unique_ptr<FeedForward> make_feed_forward(const FfnConfig& ffn, const ModelConfig& model,
                                               ParamStore& params, const std::string& prefix,
                                               int layer, Communicator& comm);

}  // namespace moe
