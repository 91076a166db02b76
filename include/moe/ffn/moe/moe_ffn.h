// FFN kind "moe": the FeedForward face of MoeLayer<float> (moe_layer.h), with its parameters in
// the model's ParamStore under <prefix> (checkpoint names, docs/FORMATS.md):
//   router.weight [E,C]; router.w_noise [E,C] (noisy_topk); router.bias [E] (bias_balance,
//   not trained by the optimizer); experts.w_gate [E,H,C] (SwiGLU), experts.w_up [E,H,C],
//   experts.w_down [E,C,H]; shared.w_gate / shared.w_up [S,H,C], shared.w_down [S,C,H];
//   router.l1_exponent [1] (relu: λ = relu_l1_init·relu_l1_rate^value, not trained; remoe.h).
#pragma once
#include <memory>
#include <vector>

#include "moe/ffn/feed_forward.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe/ffn/moe/remoe.h"

namespace moe {

class MoeFfn final : public FeedForward {
 public:
  // `comm`: the ranks training together (see make_feed_forward).
  MoeFfn(const FfnConfig& ffn, const ModelConfig& model, ParamStore& params,
         const std::string& prefix, int layer, Communicator& comm);
  void bind(Arena& acts, int max_batch, int max_seq) override;
  void forward(float* out, const float* x, int n_tokens, const StepInfo& info) override;
  void backward(float* dx, const float* dout, const float* x, int n_tokens) override;
  double aux_loss() const override { return layer_.aux_loss(); }
  std::string describe() const override;
  nlohmann::json metrics() const override;
  // bias_balance: the bias update from the loads of every training forward since the last
  // end_step (all micro-batches, all ranks), then the loads start afresh. relu: the L1
  // coefficient's update (ReluL1Schedule::end_step, once for all the layers sharing it).
  void end_step() override;
  // aux_loss_scope global_batch with a balancing loss (token choice).
  bool needs_count_pass() const override;
  void reset_metrics() override;
  std::vector<int32_t> last_choices(int* per_token) const override;
  // bf16: the routed and shared experts' products (experts.h); router, gates, losses and the
  // combine stay f32. refresh_low_precision packs the expert weights (once per optimizer step).
  void set_precision(Precision precision) override { layer_.set_precision(precision); }
  void refresh_low_precision() override { layer_.refresh_low_precision(params()); }
  std::size_t low_precision_bytes() const override { return layer_.bf16_bytes(); }
  const MoeLayer<float>& layer() const { return layer_; }
  // relu: the L1 schedule this layer uses (its own until share_relu_schedule links the model's).
  const std::shared_ptr<ReluL1Schedule>& relu_schedule() const { return relu_schedule_; }

 private:
  MoeParams<float> params() const;
  MoeGrads<float> grads() const;
  nlohmann::json metrics_common() const;

  Communicator& comm_;
  MoeSpec spec_;
  int layer_index_;
  std::string router_kind_;
  MoeLayer<float> layer_;
  Param *router_ = nullptr, *w_noise_ = nullptr, *bias_ = nullptr;
  Param *w_gate_ = nullptr, *w_up_ = nullptr, *w_down_ = nullptr;
  Param *s_gate_ = nullptr, *s_up_ = nullptr, *s_down_ = nullptr, *s_router_ = nullptr;
  // bias_balance: per-expert selections summed over this optimizer step's training forwards.
  std::vector<double> step_loads_;
  int step_forwards_ = 0;
  // Metrics accumulated since reset_metrics().
  std::vector<int64_t> acc_tokens_;
  int64_t acc_assign_ = 0, acc_dropped_ = 0, acc_forwards_ = 0;
  double acc_entropy_ = 0, acc_aux_ = 0, acc_z_ = 0;
  double acc_active_ = 0, acc_sparsity_ = 0;  // relu

  friend void share_relu_schedule(const std::vector<std::unique_ptr<FeedForward>>& ffns);
  Param* l1_exponent_ = nullptr;                   // relu
  std::shared_ptr<ReluL1Schedule> relu_schedule_;  // relu
};

// ReMoE adapts one λ for the whole model from the sparsity of all its relu layers (remoe.h):
// gives every relu MoeFfn among ffns the first one's schedule. Throws moe::Error when two relu
// layers differ in top_k, num_experts, relu_l1_init or relu_l1_rate (one target, one λ).
void share_relu_schedule(const std::vector<std::unique_ptr<FeedForward>>& ffns);

}  // namespace moe
