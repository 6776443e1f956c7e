// gemm.hpp: single-precision matrix multiply, the engine under convolution
// and the fully-connected layers.
//
// Contract (row-major throughout):
//   C[M x N] = alpha * op(A)[M x K] * op(B)[K x N] + beta * C
//   op(A)(i, k) = transA ? A[k * lda + i] : A[i * lda + k]
//   op(B)(k, j) = transB ? B[j * ldb + k] : B[k * ldb + j]
//   beta == 0 overwrites C: whatever C held (NaN included) is ignored.
//   M, N or K may be 0; K == 0 gives beta * C (or zeros when beta == 0).
//
// Threads: `threads` > 1 splits the work over tiles of C only. The reduction
// over K runs in the same order whatever the thread count, so the result is
// bit-identical for any `threads`. Called from inside a parallel_for region
// it runs on the calling thread. threads <= 0 means get_num_threads().
//
// Not here: the micro-kernels (gemm_kernels.hpp), convolution-specific
// packing (im2col, with the conv code), float64.
#pragma once

#include <cstdint>

#include "cpu.hpp"

namespace striate {

void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads = 0);

// sgemm whose rows of C are each computed with the same arithmetic whatever M
// is, so that a sample's result does not depend on the batch it is computed
// in (fully-connected layers). The path is chosen from N, K and active_isa()
// only, never from M; plain sgemm may pick a faster path per M.
void sgemm_row_invariant(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                         int threads = 0);

// The straightforward triple loop with the same contract: the oracle for tests.
void sgemm_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Micro-kernel families: one per instruction-set path of cpu.hpp. sgemm() and
// sgemm_row_invariant() use the family of active_isa(), so st.set_isa() and
// STRIATE_ISA steer them; sgemm_isa() forces one, so that tests and
// benchmarks reach every family the CPU runs. The AVX2 and AVX-512 families
// give the same bits except for A B^T with 5 to 64 rows of A, which only
// AVX-512 computes with its dot kernels, and the row-invariant product (dot
// kernels on AVX-512, the lane-interleaved depth of gemm_kernels.hpp on AVX2);
// the generic family rounds multiply and add separately.
//
// sgemm() with a chosen family; one wider than detected_isa() throws
// std::invalid_argument. Negative sizes, or a leading dimension below the
// logical width, throw too.
void sgemm_isa(Isa isa, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads = 0);
// A packed once for many products with the same A (Winograd's weights per
// transform point, reused by every block of tiles): sgemm_pack_a() writes
// op(A) = A (M x K, row-major) in the panel layout of `isa`'s family into dst
// (sgemm_packed_a_size() floats, 64-byte aligned); sgemm_packed() then computes
// C = A B (B: K x N, row-major, not transposed; beta = 0) on the calling
// thread, reading B's full column panels in place. Every element of C is the
// same sum, in the same order, as sgemm_isa()'s packed path gives, without
// re-packing A or re-planning per call. M, N, K >= 1.
int64_t sgemm_packed_a_size(Isa isa, int64_t M, int64_t K);
void sgemm_pack_a(Isa isa, int64_t M, int64_t K, const float* A, int64_t lda, float* dst);
void sgemm_packed(Isa isa, int64_t M, int64_t N, int64_t K, const float* packed_a, const float* B, int64_t ldb,
                  float* C, int64_t ldc);
// How many tasks (tiles of C handed to parallel_for) sgemm_isa() would use for
// this shape and thread count (threads <= 0: get_num_threads()); for tests.
int64_t sgemm_task_count(Isa isa, bool transA, bool transB, int64_t M, int64_t N, int64_t K, int threads = 0);

}  // namespace striate
