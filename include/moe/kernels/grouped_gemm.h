// The grouped GEMM of the MoE experts: our own float GEMM for one expert's panel (issue 3),
// C = A·B with B packed by the caller and A read in place when it is row-major, else copied per
// k pass (tiles of a column-read A, or rows gathered by index); and on top of it the fused
// products of one expert (first projection, down projection, and their backwards), which the
// expert bank (ffn/moe/experts.h) runs per expert, one expert per task.
//
// Why not OpenBLAS here: per expert the layer runs nine products of ~512×512×128, and OpenBLAS
// packs both operands of every call (and clears C first when beta = 0). Here a row-major A is not
// copied at all, a packed B (a weight, or one activation panel) can serve two products, and C is
// written directly: fewer copies, and at small-expert shapes a faster layer step
// (bench/RESULTS.md, docs/MOE.md).
//
// Packed-B layout: ⌈N/32⌉ column panels, each K rows of 32 floats, columns past N zero. Bp must
// be 64-byte aligned (it is read and written with aligned loads and stores). The micro-kernel holds
// a 12×32 block of C in 24 zmm registers and, per k, loads one 32-float row of the panel and
// broadcasts 12 elements of A.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

inline constexpr int kPanelNR = 32;

// Floats of a packed B with K rows and N columns.
std::size_t panel_b_floats(int K, int N);

// Packs rows k0..k0+kn and columns n0..n0+nn of B (K rows, N columns in all) into Bp, from src:
// element (k0 + i, n0 + j) = trans ? src[j·ld + i] : src[i·ld + j]. Several calls fill one
// packed B from different sources (e.g. [W_gate; W_up] stacked along K or along N). The call
// that writes the last columns (n0 + nn == N) also zeroes the padding of the last panel.
// Row-major sources only (trans = false): rows[i] picks the source row of packed row k0 + i
// (else row i), and row_scale[i] multiplies it (e.g. an expert's tokens times their gates).
void panel_pack_b(float* Bp, int K, int N, int k0, int n0, int kn, int nn, const float* src, int ld,
                  bool trans, const int32_t* rows = nullptr, const float* row_scale = nullptr);

// Floats of the scratch panel_gemm needs for an A of M rows read with a_trans or a_rows.
std::size_t panel_a_floats(int M);

// C[M, N] = A·B (accumulate: C += A·B), row-major C with leading dimension ldc. Inside an
// OpenMP parallel region (the MoE layer running one expert per thread) on the calling thread;
// outside one, the work of each k pass is shared out among the threads. Either way each element
// of C is summed over k in increasing order by one thread: the result does not depend on the
// thread count. A(i, k) = a_trans ? A[k·lda + i] : A[i·lda + k]; Bp packed as above with K rows;
// apack: panel_a_floats(M) floats of scratch, used when a_trans or a_rows. a_rows (optional)
// picks A's rows from a larger matrix: row i of A is A[a_rows[i]·lda ...] (not a_trans), or
// column k is taken from row a_rows[k] (a_trans). stream_c: C is an output nobody reads soon
// (it goes to memory anyway): written with streaming stores, which skip reading its lines in
// first, where C is written once (K within one k pass and not accumulate); same values.
void panel_gemm(int M, int N, int K, const float* A, int lda, bool a_trans, const float* Bp,
                float* C, int ldc, bool accumulate, float* apack = nullptr,
                const int32_t* a_rows = nullptr, bool stream_c = false);

// True when built with AVX-512 (the fast micro-kernel); otherwise the functions above run a
// portable loop of the same semantics and callers should prefer OpenBLAS.
bool panel_gemm_native();

// ---- One expert's products on panel_gemm (float). Sizes: m rows routed to the expert, model
// width C, hidden width H, W1 = 2H when gated (SwiGLU: gate in columns 0..H-1, up in H..2H-1)
// else H. Weights as the checkpoint stores them: W_gate, W_up [H, C], W_down [C, H].
// pack: packed-B scratch of at least panel_b_floats of every B used below, 64-byte aligned;
// apack: panel_a_floats(max(m, C, W1, H)) floats of A scratch.
// rows (optional): X is the token matrix and the expert's row i is token rows[i] (no gathered
// copy of the expert's inputs).

// gu [m, W1] (=) = X [m, C] · [W_gate; W_up]ᵀ (gated) or X · W_upᵀ. wg unused when not gated.
void panel_first_forward(float* gu, const float* X, const int32_t* rows, const float* wg,
                         const float* wu, int m, int C, int H, bool gated, float* pack,
                         float* apack);

// ye [m, C] (=) = hid [m, H] · W_downᵀ, written with streaming stores (nobody reads it soon).
void panel_down_forward(float* ye, const float* hid, const float* wd, int m, int C, int H,
                        float* pack);

// The down projection's backward, in one of two forms.
// From a d(ye) panel d [m, C] (rows, gate, dgate and u null): dW_down [C, H] += dᵀ · hid, then
// hid ← d(hid) = d · W_down.
// Fused (rows set): d is the token matrix dy and d(ye)_i = gate_i·dy[rows_i], so
//   dW_down [C, H] += Σ_i dy[rows_i]ᵀ · (gate_i·hid_i),
//   u [m, H] = dy[rows] · W_down;  dgate_i (=) = u_i · hid_i (= dy·ye, as ye = hid·W_downᵀ);
//   hid ← d(hid) = gate·u.
// u: [m, H] scratch (fused only).
void panel_down_backward(float* dwd, float* hid, const float* d, const int32_t* rows,
                         const float* gate, float* dgate, const float* wd, int m, int C, int H,
                         float* pack, float* apack, float* u);

// The fused down backward's last step, shared by the f32 and bf16 products: with u [m, H] =
// dy[rows]·W_down, dgate_i (=) = u_i · hid_i and hid_i ← gate_i·u_i (in place).
void gate_split_backward(float* hid, float* dgate, const float* u, const float* gate, int m, int H);

// From dgu [m, W1]: dW_gate, dW_up [H, C] += dguᵀ · X (one packed X for both), then
// dX [m, C] (= or += when accumulate) = dgu · [W_gate; W_up] (streaming stores).
void panel_first_backward(float* dX, float* dwg, float* dwu, const float* dgu, const float* X,
                          const int32_t* rows, const float* wg, const float* wu, int m, int C,
                          int H, bool gated, bool accumulate, float* pack, float* apack);

}  // namespace moe
