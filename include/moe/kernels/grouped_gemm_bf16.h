// The MoE experts' products in bf16 (train.precision = bf16; issue 19): bf16 operands, f32
// accumulation, f32 results, on gemm_bf16's 12×32 vdpbf16ps microkernel. The f32 twin is
// grouped_gemm.h; the numbers are gemm_bf16.h's.
//
// Both operands of a product are packed panels of bf16 pairs along K (the layout the microkernel
// reads), P = ⌈K/2⌉ pair steps, zero past K and past the last row / column:
//   B [K, N]: ⌈N/32⌉ panels, Bp[(jb·P + p)·64 + j·2 + h] = round(B(2p+h, 32·jb + j))
//   A [M, K]: ⌈M/12⌉ panels, Ap[(ib·P + p)·24 + i·2 + h] = round(A(12·ib + i, 2p+h))
// round = f32 → bf16, nearest even (core/half.h's f32_to_bf16, bit for bit). Activations are
// rounded while they are packed, once per product; the weights' four layouts are packed once per
// optimizer step (bf16_pack_expert_weights, from MoeFfn::refresh_low_precision).
//
// Paths (Bf16GemmPath, gemm_bf16.h): avx512bf16 runs the microkernel over K blocks of kBf16KC
// pair steps (a 32-column B block stays in cache while every A panel passes), each C
// element summed by one thread in a fixed order: bit-identical for any thread count. widen (any
// x86-64) unpacks both panels to f32 and runs OpenBLAS sgemm: the same rounded operands,
// repeatable per thread count. amx (where kAuto resolves to it) and amx-model run gemm_bf16's AMX
// tile program on the same panels: B's tiles are 16 steps of a panel (the last partial chunk
// copied with zero steps), A's rows are staged 32 at a time from the 12-row panels (transposed
// 16 × 16 pairs in registers) or straight from the rows given in place; whole K per element, in
// the program's order: bit-identical for any thread count. Packing does not depend on the path.
//
// Threads: called inside an OpenMP parallel region (one expert per thread) everything runs on
// the calling thread; outside one, bf16_panel_gemm shares its tiles out among the threads.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/kernels/gemm_bf16.h"

namespace moe {

// bf16 values of a packed B [K, N] / A [M, K].
std::size_t bf16_pack_b_elems(int K, int N);
std::size_t bf16_pack_a_elems(int M, int K);

// A logical f32 matrix L read from memory: the stored S(s, t) = scale(s)·p[row(s)·ld + t], with
// row(s) = rows ? rows[s] : s and scale(s) = row_scale ? row_scale[s] : 1 (multiplied in f32
// before rounding), and L = trans ? Sᵀ : S. (rows pick an expert's tokens from the token matrix;
// row_scale puts the gates on their rows.)
// bits, when set, is the same storage already rounded to bf16 (bits[row(s)·ld + t] =
// round(p[row(s)·ld + t]); p is then unused and row_scale must be null): the packers copy
// instead of rounding, so a token matrix that several experts gather is rounded once.
struct Bf16Src {
  const float* p = nullptr;
  int ld = 0;
  bool trans = false;
  const int32_t* rows = nullptr;
  const float* row_scale = nullptr;
  const uint16_t* bits = nullptr;
};

// Bp (=) the packed B of L [K, N] (K = L's rows). Every element of Bp is written.
void bf16_pack_b(uint16_t* Bp, int K, int N, const Bf16Src& L);
// Ap (=) the packed A of L [M, K] (M = L's rows). Every element of Ap is written.
void bf16_pack_a(uint16_t* Ap, int M, int K, const Bf16Src& L);

// C [M, N] (= or += when accumulate; row stride ldc) = A·B from packed panels. M, N, K ≥ 0;
// K = 0 writes zeros (or leaves C) like any empty sum.
void bf16_panel_gemm(int M, int N, int K, const uint16_t* Ap, const uint16_t* Bp, float* C, int ldc,
                     bool accumulate, Bf16GemmPath path = Bf16GemmPath::kAuto);

// Pair steps of one K block on the avx512bf16 path (the B block of 32 columns: 128 KiB, read
// from L2). Every expert product up to K = 2048 runs as one block, so C is stored once: on the
// E = 8, H = 1024 step (K up to 2048) 256 pair steps (a 32 KiB block in L1) ran ~2% slower
// (alternating runs, 2026-12-07); the shorter blocks' L1 hits bought less than C's extra passes.
inline constexpr int kBf16KC = 1024;

// ---- One expert's products (grouped_gemm.h's panel_* twins; shapes as there: m rows, model
// width C, hidden H, W1 = 2H gated (SwiGLU: gate columns 0..H−1, up H..2H−1) else H).

// The packed bf16 weights of one expert, four layouts (each a packed B):
//   first_t [C, W1] = [W_gate; W_up]ᵀ   (gu = X·first_t)
//   down_t  [H, C]  = W_downᵀ           (ye = hid·down_t)
//   down    [C, H]  = W_down            (d(hid) = d(ye)·down)
//   first   [W1, C] = [W_gate; W_up]    (dX = dgu·first)
struct Bf16ExpertWeights {
  const uint16_t* first_t = nullptr;
  const uint16_t* down_t = nullptr;
  const uint16_t* down = nullptr;
  const uint16_t* first = nullptr;
};

// bf16 values of one expert's four packed layouts.
std::size_t bf16_expert_weight_elems(int C, int H, bool gated);
// Packs W_gate, W_up [H, C] (wg null when not gated) and W_down [C, H] into dst
// (bf16_expert_weight_elems values) and returns the four layouts' pointers into it. With dst
// 64-byte aligned the panels bypass the cache (written for later reads).
Bf16ExpertWeights bf16_pack_expert_weights(uint16_t* dst, const float* wg, const float* wu,
                                           const float* wd, int C, int H, bool gated);

// Scratch of one thread for experts of up to max_rows rows (bf16 values): packed A, packed B.
struct Bf16ExpertScratch {
  uint16_t* a = nullptr;
  uint16_t* b = nullptr;
};
std::size_t bf16_expert_scratch_a(int max_rows, int C, int H, bool gated);
std::size_t bf16_expert_scratch_b(int max_rows, int C, int H);

// gu [m, W1] (=) = round(X[rows]) · first_t. (Xb, dyb below: when set, round(X) / round(dy)
// of the whole token matrix, made once by the caller and read instead of rounding X / dy; the
// same bits.)
void bf16_first_forward(float* gu, const float* X, const int32_t* rows, const Bf16ExpertWeights& w,
                        int m, int C, int H, bool gated, const Bf16ExpertScratch& s,
                        Bf16GemmPath path = Bf16GemmPath::kAuto, const uint16_t* Xb = nullptr);

// ye [m, C] (=) = round(hid) · down_t. (hidb: when set, round(hid) [m, H] made by the caller
// while it computed hid, read instead of hid: in place by the microkernel where it can.)
void bf16_down_forward(float* ye, const float* hid, const Bf16ExpertWeights& w, int m, int C, int H,
                       const Bf16ExpertScratch& s, Bf16GemmPath path = Bf16GemmPath::kAuto,
                       const uint16_t* hidb = nullptr);

// The down projection's backward (panel_down_backward's two forms).
// Unfused (rows, gate, dgate, u null): d = d(ye) [m, C];
//   dW_down [C, H] += round(d)ᵀ · round(hid);  hid ← d(hid) = round(d) · down.
// Fused (rows set): d = dy [N, C] the token matrix, d(ye)_i = gate_i·dy[rows_i]:
//   dW_down += round(dy[rows])ᵀ · round(gate·hid);  u [m, H] = round(dy[rows]) · down;
//   dgate_i (=) u_i · hid_i (f32);  hid ← gate·u.
void bf16_down_backward(float* dwd, float* hid, const float* d, const int32_t* rows,
                        const float* gate, float* dgate, const Bf16ExpertWeights& w, int m, int C,
                        int H, const Bf16ExpertScratch& s, float* u,
                        Bf16GemmPath path = Bf16GemmPath::kAuto, const uint16_t* dyb = nullptr);

// From dgu [m, W1]: dW_gate, dW_up [H, C] += round(dgu)ᵀ · round(X[rows]) (one packed X for
// both), then dX [m, C] (= or += when accumulate) = round(dgu) · first. (dgub: when set,
// round(dgu) [m, W1] made by the caller, read instead of dgu — null then — and by dX's product
// in place where it can.)
void bf16_first_backward(float* dX, float* dwg, float* dwu, const float* dgu, const float* X,
                         const int32_t* rows, const Bf16ExpertWeights& w, int m, int C, int H,
                         bool gated, bool accumulate, const Bf16ExpertScratch& s,
                         Bf16GemmPath path = Bf16GemmPath::kAuto, const uint16_t* Xb = nullptr,
                         const uint16_t* dgub = nullptr);

}  // namespace moe
