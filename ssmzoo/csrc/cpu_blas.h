// Row-major matrix products on the Fortran BLAS that torch's CPU library carries (MKL's sgemm_/dgemm_),
// called single-threaded from inside OpenMP regions. Where torch exports no such symbol the extension fails
// to load and the op's dispatch falls back to its next backend.
#pragma once

#include <algorithm>
#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace ssmzoo_cpu {

inline void gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                 const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                 const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline void gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
                 const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
                 const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// C (m, n) = alpha op(A) op(B) + beta C for row-major matrices with leading dimensions lda, ldb, ldc
// (BLAS is column-major: it computes Cᵀ = op(B)ᵀ op(A)ᵀ).
template <typename scalar_t>
void mm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha, const scalar_t* a, int64_t lda,
        const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  gemm(&ta, &tb, &M, &N, &K, &alpha, b, &la, a, &lb, &beta, c, &lc);
}

// Products with a lower (block-)triangular (n, n) matrix L (row-major, leading dimension n), the chunked scans'
// masked scores: they go by blocks of `block` rows and skip the blocks above the diagonal (37% fewer flops for
// n = 256, block = 64). Only the diagonal blocks' upper parts are ever read, so only those need zeros.

// out (n, cols) = L R + beta out: rows [r0, r1) of out need columns [0, r1) of L.
template <typename scalar_t>
void lower_times(int64_t n, int64_t block, int64_t cols, const scalar_t* L, const scalar_t* R, int64_t ldr,
                 scalar_t beta, scalar_t* out, int64_t ldo) {
  for (int64_t r0 = 0; r0 < n; r0 += block) {
    const int64_t r1 = std::min(r0 + block, n);
    mm<scalar_t>(false, false, r1 - r0, cols, r1, 1, L + r0 * n, n, R, ldr, beta, out + r0 * ldo, ldo);
  }
}

// out (n, cols) = L^T R + beta out: rows [c0, c1) of out need rows [c0, n) of L and R.
template <typename scalar_t>
void lower_transposed_times(int64_t n, int64_t block, int64_t cols, const scalar_t* L, const scalar_t* R,
                            int64_t ldr, scalar_t beta, scalar_t* out, int64_t ldo) {
  for (int64_t c0 = 0; c0 < n; c0 += block) {
    const int64_t c1 = std::min(c0 + block, n);
    mm<scalar_t>(true, false, c1 - c0, cols, n - c0, 1, L + c0 * n + c0, n, R + c0 * ldr, ldr, beta, out + c0 * ldo,
                 ldo);
  }
}

// The lower blocks of out (n, n) = A B^T, A and B (n, K): rows [r0, r1) and columns [0, r1) of each row block, what
// the masked products above read.
template <typename scalar_t>
void lower_outer(int64_t n, int64_t block, int64_t K, const scalar_t* A, int64_t lda, const scalar_t* B, int64_t ldb,
                 scalar_t* out) {
  for (int64_t r0 = 0; r0 < n; r0 += block) {
    const int64_t r1 = std::min(r0 + block, n);
    mm<scalar_t>(false, true, r1 - r0, r1, K, 1, A + r0 * lda, lda, B, ldb, 0, out + r0 * n, n);
  }
}

}  // namespace ssmzoo_cpu
