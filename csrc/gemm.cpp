// gemm.cpp: SGEMM behind the contract in gemm.hpp.
#include "gemm.hpp"

#include "parallel.hpp"

namespace striate {

void sgemm_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < N; ++j) {
            float acc = 0.f;
            for (int64_t k = 0; k < K; ++k) {
                const float a = transA ? A[k * lda + i] : A[i * lda + k];
                const float b = transB ? B[j * ldb + k] : B[k * ldb + j];
                acc += a * b;
            }
            float* c = C + i * ldc + j;
            *c = beta == 0.f ? alpha * acc : alpha * acc + beta * *c;
        }
    }
}

void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads) {
    // Rows of C are independent; each is computed in the same order whatever the split.
    parallel_for(
        M,
        [&](int64_t i) {
            sgemm_naive(transA, transB, 1, N, K, alpha, transA ? A + i : A + i * lda, lda, B, ldb, beta,
                        C + i * ldc, ldc);
        },
        threads);
}

}  // namespace striate
