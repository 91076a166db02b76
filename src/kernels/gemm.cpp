#include "moe/kernels/gemm.h"

#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include "moe/core/error.h"

extern "C" {
int openblas_get_parallel(void);
char* openblas_get_config(void);
char* openblas_get_corename(void);
}

namespace moe {

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                  const double* B, int ldb, double beta, double* C, int ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

std::string blas_info() {
  const int par = openblas_get_parallel();
  return fmt::format("{} ({}, core {}, {} OpenMP threads)", openblas_get_config(),
                     par == 2   ? "OpenMP build"
                     : par == 1 ? "pthread build"
                                : "serial build",
                     openblas_get_corename(), omp_get_max_threads());
}

void check_blas_is_openmp() {
  // 0 = sequential, 1 = pthreads, 2 = OpenMP. The pthread build would fight our OpenMP
  // regions for the cores.
  MOE_CHECK(openblas_get_parallel() == 2,
            "the loaded OpenBLAS is not the OpenMP build ({}); install libopenblas-openmp-dev "
            "and rebuild",
            blas_info());
}

}  // namespace moe
