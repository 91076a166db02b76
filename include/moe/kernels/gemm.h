// C[M,N] = alpha · op(A) · op(B) + beta · C, row-major, via OpenBLAS. Templated so every op
// that uses it also runs in double for the gradient checks (float → sgemm, double → dgemm).
// Inside an OpenMP parallel region the OpenMP build of OpenBLAS runs single-threaded, so
// per-head or per-expert calls from our own parallel loops compose without oversubscription.
#pragma once
#include <string>

namespace moe {

template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc);

// Checks at start-up that the OpenMP build of OpenBLAS is the one loaded (see CMakeLists.txt);
// returns a description such as "OpenBLAS 0.3.21 (OpenMP, 2 threads, SkylakeX)".
std::string blas_info();
void check_blas_is_openmp();

}  // namespace moe
