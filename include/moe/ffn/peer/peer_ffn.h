// FFN kind "peer": the FeedForward face of PeerLayer<float>. Checkpoint names under <prefix>:
//   query.weight [h·dk, C], query.bias [h·dk], query_norm.weight / .bias [h·dk] (batch or layer
//   norm), query_norm.running_mean / .running_var [h·dk] (batch norm; not trained), keys1 /
//   keys2 [S, dk/2] (shared by all heads), u / v [S², C] (the experts' input and output rows).
// u and v are row-sparse parameters: a training forward marks the retrieved rows, and only those
// rows get gradients and the row-lazy Adam update — inside the backward itself when the
// optimizer has handed the tables their rule (AdamWOptimizer::prepare; docs/PEER.md).
#pragma once
#include "moe/ffn/feed_forward.h"
#include "moe/ffn/peer/peer_layer.h"

namespace moe {

class PeerFfn final : public FeedForward {
 public:
  // `comm`: the ranks training together (see make_feed_forward).
  PeerFfn(const FfnConfig& ffn, const ModelConfig& model, ParamStore& params,
          const std::string& prefix, int layer, Communicator& comm);
  void bind(Arena& acts, int max_batch, int max_seq) override;
  void forward(float* out, const float* x, int n_tokens, const StepInfo& info) override;
  void backward(float* dx, const float* dout, const float* x, int n_tokens) override;
  std::string describe() const override;
  // bf16: the query projection and the sub-key scores take bf16 operands (PeerLayer::enable_bf16);
  // the experts' rows (gathers, not products of matrices) stay f32.
  void set_precision(Precision p) override;
  void refresh_low_precision() override;
  std::size_t low_precision_bytes() const override { return low_.capacity(); }
  nlohmann::json metrics() const override;
  void reset_metrics() override;

 private:
  PeerParams<float> params() const;
  Communicator& comm_;
  PeerSpec spec_;
  int layer_index_;
  PeerLayer<float> layer_;
  Param* query_weight_;            // [h·dk, C]
  Param* query_bias_;              // [h·dk]
  Param* norm_weight_ = nullptr;   // [h·dk] query norm's γ (batch or layer norm)
  Param* norm_bias_ = nullptr;     // [h·dk] its β
  Param* running_mean_ = nullptr;  // [h·dk] batch norm's running statistics
  Param* running_var_ = nullptr;
  Param *keys1_, *keys2_;                   // [S, dk/2] the sub-keys of each half
  Param *u_, *v_;                           // [S², C] the experts' input and output rows
  std::vector<std::vector<double>> usage_;  // per head: Σ router weight per expert since reset
  int64_t forwards_ = 0;
  bool dist_acc_ = false;  // usage_ holds this rank's share of distributed training forwards
  Precision precision_ = Precision::kFp32;
  Arena low_;  // bf16: the layer's shadows and scratch (set_precision)
};

}  // namespace moe
