// Our parameter names (docs/FORMATS.md) and their GGUF counterparts. The names map one to one
// and no tensor is transposed: ggml's ne = [C, H, E] is our row-major [E, H, C].
//   embed.weight ↔ token_embd.weight        layers.L.attn.wq ↔ blk.L.attn_q.weight (bq: .bias)
//   head.weight ↔ output.weight             layers.L.attn.q_norm ↔ blk.L.attn_q_norm.weight
//   norm.weight ↔ output_norm.weight        layers.L.ffn.router.weight ↔ blk.L.ffn_gate_inp.weight
//   layers.L.ffn.experts.w_up ↔ blk.L.ffn_up_exps.weight     (w_gate, w_down alike)
//   layers.L.ffn.shared.w_up ↔ blk.L.ffn_up_shexp.weight     (one shared MLP; gate alike)
//   layers.L.ffn.shared.gate ↔ blk.L.ffn_gate_inp_shexp.weight
//   layers.L.ffn.w_up ↔ blk.L.ffn_up.weight                  (dense blocks)
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "moe/model/config.h"

namespace moe::formats {

// The parameters a Transformer built from cfg (resolved) registers, in registration order, with
// their shapes — for the FFN kinds a file format can hold (dense, moe). PEER is an error.
std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const ModelConfig& cfg);
std::vector<std::string> parameter_names(const ModelConfig& cfg);

// Our name → the GGUF tensor name; a name with no GGUF counterpart (e.g. a noisy router's
// w_noise) is an error naming it.
std::string gguf_name_of(const std::string& our_name);

// Rotate-half ↔ interleaved RoPE (llama.cpp's NEOX ↔ NORM): within each head of hd rows,
// interleaved row 2i+s holds rotate-half row s·hd/2 + i. Applied to the rows of wq and wk (and
// their biases) it makes interleaved RoPE compute the scores rotate-half RoPE computes on the
// original rows (what llama.cpp's converter does for Llama checkpoints). w: [rows, cols],
// rows a multiple of hd.
void permute_rope_rows(float* w, int64_t rows, int64_t cols, int hd, bool to_interleaved);
// permute_rope_rows on our parameter `our_name` of `shape` when RoPE rotates it (wq, wk, bq,
// bk); any other parameter is left as it is.
void permute_rope_param(const std::string& our_name, const std::vector<int64_t>& shape, float* w,
                        int hd, bool to_interleaved);
// Whether permute_rope_param permutes `our_name` (wq, wk, bq, bk).
bool is_rope_param(const std::string& our_name);

}  // namespace moe::formats
