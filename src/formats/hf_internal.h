// Private to src/formats/hf_*.cpp: the tensor map between Hugging Face checkpoints and our
// parameters, and the bridge to the model features HF checkpoints need.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moe/formats/hf_model.h"
#include "moe/model/config.h"

namespace moe::formats::hf {

// ---- Model features (hf_features.cpp) --------------------------------------------------------
// Every access to the config fields that only some HF classes use (model.qkv_bias, model.qk_norm,
// model.rope_style, ffn.shared_d_expert, ffn.shared_gate, ffn.router.routed_scaling_factor) goes
// through these functions, so the mapping code reads the same whatever the fields' spelling.
// `where` names the HF file and key for errors.
using QkNorm = moe::QkNorm;
QkNorm qk_norm_of(const ModelConfig& m);
void set_qk_norm(ModelConfig& m, QkNorm q, const std::string& where);
bool qkv_bias_of(const ModelConfig& m);
void set_qkv_bias(ModelConfig& m, bool on, const std::string& where);
bool rope_half_of(const ModelConfig& m);  // rotate-half (HF's only convention)
int shared_width_of(const FfnConfig& f);  // Hs of the shared experts (moe.d_expert by default)
void set_shared_width(FfnConfig& f, int hs, const std::string& where);
bool shared_gate_of(const FfnConfig& f);
void set_shared_gate(FfnConfig& f, bool on, const std::string& where);
float routed_scaling_of(const FfnConfig& f);
void set_routed_scaling(FfnConfig& f, float s, const std::string& where);
// Our names and shapes of the feature tensors.
std::string attn_bias_name(int layer, char which);  // which = 'q', 'k', 'v'
std::vector<int64_t> q_norm_shape(const ModelConfig& m);
std::vector<int64_t> k_norm_shape(const ModelConfig& m);

// transformers' model_type of each class ("mixtral", "qwen2_moe", …); hf_config.cpp.
const char* model_type(HfArch a);

// ---- Tensor map (hf_tensors.cpp) -------------------------------------------------------------
struct HfPiece {
  std::string name;            // HF tensor name
  std::vector<int64_t> shape;  // its shape in the file
};
enum class HfLayout {
  kCopy,        // one piece with our numel, same element order (shapes may differ: [1, C] vs [C])
  kStack,       // E pieces, piece e = our [e, …]
  kSharedDown,  // one piece [C, S·Hs] ↔ our [S, C, Hs]: ours[s][c][h] = piece[c][s·Hs + h]
  kFusedHalf,   // read only: one piece [E, 2H, C] (transformers 5's experts.gate_up_proj);
                // ours[e] = piece[e][half·H … (half+1)·H)
};
struct HfTensor {
  std::string our_name;
  std::vector<int64_t> our_shape;
  HfLayout layout = HfLayout::kCopy;
  std::vector<HfPiece> pieces;
  int half = 0;  // kFusedHalf: 0 = gate rows, 1 = up rows
};
// Every parameter of a Transformer built from `cfg` (resolved; the class `arch` must compute it)
// in the Transformer's order, with the HF tensors that hold it.
std::vector<HfTensor> tensor_map(const ModelConfig& cfg, HfArch arch);
// transformers 5 keeps a block's experts fused: <block>.experts.gate_up_proj [E, 2H, C] (gate
// rows first) and <block>.experts.down_proj [E, C, H], with or without ".weight". Where the
// per-expert tensors are absent (`has` says) and the fused ones present, the entries of `map`
// are switched to them.
void use_fused_experts(std::vector<HfTensor>& map,
                       const std::function<bool(const std::string&)>& has);
// HF tensors a checkpoint may carry that compute nothing (rotary inverse-frequency buffers).
bool ignorable_hf_tensor(const std::string& name);

}  // namespace moe::formats::hf
