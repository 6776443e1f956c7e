// gemm_kernels.hpp: the micro-kernel families behind sgemm (gemm.cpp), and
// the contract every one of them follows. Internal to gemm.cpp and
// gemm_kernels.cpp; everything else calls gemm.hpp.
//
// One family per instruction-set path of cpu.hpp (generic, AVX2+FMA,
// AVX-512), each with its packing routines, plus the AVX-512 "dot" kernels
// for A B^T with few rows (also on AVX2, with the same bits). The x86 families are compiled with function-level
// target attributes, never -march, so one build runs on every x86-64; other
// architectures compile the generic family only.
//
// Not here: blocking, task planning and threads (gemm.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <algorithm>

#include "cpu.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define STRIATE_GEMM_X86 1
#else
#define STRIATE_GEMM_X86 0
#endif

namespace striate {
namespace gemm_detail {

// ---------------------------------------------------------------------------
// Micro-kernel contract (every kernel below follows it)
//
//   template <int R> void sgemm_ukernel_x<NR>__<isa>(kc, a, b, ldb, c, ldc, alpha, beta)
//
// (so sgemm_ukernel_x32__avx512<14> is the 14x32 AVX-512 kernel) computes one
// R x NR tile of C, for r < R and j < NR:
//   acc(r, j) = sum over k = 0 .. kc-1 of a[k*S + r] * b[k*ldb + j], accumulated
//               from zero in increasing k (one FMA per term on the x86 kernels);
//   t = alpha * acc (alpha == 1 is exact, so there is no special case);
//   beta == 0:  C(r, j) = t, and C is never read (NaN or garbage in C is ignored);
//   beta == 1:  C(r, j) = C(r, j) + t;
//   otherwise:  C(r, j) = fma(beta, C(r, j), t);
// with C(r, j) = c[r*ldc + j]. kc >= 1.
//
// Packed panels (built by the family's pack_a / pack_b):
//   a: R rows of op(A) over kc columns, column after column ("k-major"), each
//      column in a slot of S >= MR floats: a[k*S + r], 64-byte aligned when
//      S*4 is. Each family is instantiated for every R from 1 to its MR, and the
//      last row panel of a block is simply a panel with a smaller R, so there is
//      no padding along M and the kernel never branches on rows. Slots r >= R
//      are zero-filled and never read.
//   b: kc rows of NR columns of op(B), row after row: b[k*ldb + j]. Packed
//      panels have ldb = NR, are 64-byte aligned, and columns past N are
//      zero-filled while packing. When few row panels share a B panel and B is
//      not transposed, full panels are instead read in place (ldb = row stride
//      of B): packing would cost as much as it saves.
// The kernel writes all R x NR elements of c with unit column stride. Tiles
// with fewer than NR valid columns, or a C with non-unit column stride (the
// transposed problem, see sgemm_isa), are computed into a small aligned
// temporary with beta = 0 and merged into C by merge_tile() with the same
// arithmetic, so the kernel itself has no edge branches. A family may add
// R x NR/2 kernels (the left half of the same tile, same arithmetic) that the
// driver uses for edge tiles of at most NR/2 columns.
//
// The reduction over K runs in blocks whose size depends on K only; block p > 0
// uses beta = 1. Threads split only tiles of C, along panel edges. Together this
// makes every element of C follow the same roundings whatever the thread count.
// Which path a shape takes (packed, transposed, or the AVX-512 dot kernels for
// A B^T with small M, see gemm_dot) depends on the shape and the
// family only, never on the thread count.
// ---------------------------------------------------------------------------

using ukernel_fn = void (*)(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                            float alpha, float beta);
// Pack rows [i0, i0+m) x depth [k0, k0+kc) of op(A) into consecutive panels of
// `mr` rows (the last one may hold fewer), each S*kc floats.
using pack_a_fn = void (*)(bool transA, const float* A, int64_t lda, int64_t i0, int64_t m, int64_t k0, int64_t kc,
                           int64_t mr, float* dst);
// Pack depth [k0, k0+kc) x columns [j0, j0+n) of op(B) into panels of NR
// columns, each NR*kc floats, zero-filling the columns past n.
using pack_b_fn = void (*)(bool transB, const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t n,
                           float* dst);

constexpr int kMaxMR = 16;  // bound on any family's MR (size of the dispatch table)
constexpr int kMaxNR = 32;  // bound on any family's NR (size of the temporary tile)

struct KernelFamily {
    Isa isa;
    const char* name;
    int mr;                         // largest row count R
    int nr;                         // columns per tile = width of a packed B panel
    int s;                          // slot of one packed A column (S in the contract)
    pack_a_fn pack_a;
    pack_b_fn pack_b;
    ukernel_fn kernel[kMaxMR + 1];  // kernel[R] computes R x nr, R = 1 .. mr
    ukernel_fn half[kMaxMR + 1];    // optional R x nr/2 kernels for edge tiles of at most nr/2 columns
};

inline float merge_value(float c, float t, float beta) {
    return beta == 0.f ? t : (beta == 1.f ? c + t : std::fma(beta, c, t));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Below this many flops (about 10 us on one core) a call stays on one thread:
// opening a parallel region would cost a noticeable part of it.
constexpr double kMinParallelFlops = 1e6;

// The family of one instruction-set path (the generic one for a path this
// build has no kernels for). The caller checks that the CPU runs it.
const KernelFamily& family_for(Isa isa);

// ---- the "dot" path for C = alpha * A B^T + beta * C on the AVX2 and AVX-512
// paths, with the same bits on both (see gemm_kernels.cpp). Tasks are groups
// of kDotRB columns; tiles are kDotRA x kDotRB on AVX-512 and 2 x 3 on AVX2.
constexpr int kDotRA = 4;
constexpr int kDotRB = 6;
constexpr int64_t kDotKC = 2048;
// The dot path wins when M is small (transposing B while packing would cost
// more, relative to the FMAs, than reading it in place) and A's block of
// M x kc stays in L2 while the tiles sweep over B. On AVX2, with its smaller
// tiles, "small" is M <= 4: measured on Zen 4 at one thread, the dot path
// took 0.3x (M = 1), 0.4-0.6x (M = 2) and 0.75x (M = 4) of the packed path's
// time on fully-connected shapes, but 1.2-2x at M = 8 and above.
inline bool use_dot_path(Isa isa, int64_t M, int64_t K) {
    const int64_t max_rows = isa == Isa::avx512 ? 64 : isa == Isa::avx2 ? 4 : 0;
    return M <= max_rows && M * std::min(K, kDotKC) <= 96 * 1024;
}
#if STRIATE_GEMM_X86
// Column groups of kDotRB per task (any split gives the same result).
int64_t dot_groups_per_task(int64_t M, int64_t N, int64_t K, int threads);
// C = alpha * A B^T + beta * C (A: M x K, B: N x K, row-major); M, N, K >= 1;
// isa is avx2 or avx512. The depth is blocked by at most kc_max (from K and
// kc_max only: the blocking sets the bits).
void gemm_dot(Isa isa, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
              int64_t ldb, float beta, float* C, int64_t ldc, int threads, int64_t kc_max = kDotKC);
// One row of A B^T: c[j] = alpha * sum_k a[k] B[j*ldb + k] (+ beta c[j]) for
// j < N, every element with the packed kernels' arithmetic for a depth block
// of kcb (blocks from zero in increasing k, merged as merge_value), so the
// result is the packed path's row on both x86 families, without packing B:
// each 8 x 8 block of B is transposed in registers. N, K, kcb >= 1.
void gemv_t(int64_t N, int64_t K, int64_t kcb, float alpha, const float* a, const float* B, int64_t ldb, float beta,
            float* c, int threads);

// ---- the AVX2 row-invariant product A B^T with lane-interleaved depth.
// sgemm_row_invariant() on the AVX2 path computes A B^T with K >= kLanesMinK
// this way, so that one row of A (a batch of one through a fully-connected
// layer) can read the rows of B straight through, with whole vectors along
// the depth, and still give the bits of the many-row product. Each depth block
// [k0, k0 + kc) (kc = lanes_block_depth(K), from K only) is split into 8
// sub-blocks: sub-block l holds the depths k0 + l, k0 + l + 8, ... Every
// element of C sums each sub-block from zero, one FMA per term in increasing
// depth, and merges it into C as the packed kernels merge (alpha times the
// sum; beta for sub-block 0 of block 0, then 1), sub-block after sub-block in
// order. Many rows: the packed path, whose depth blocks are these sub-blocks
// of panels packed in the lane-interleaved order (pack_*_lanes8_avx2); one
// row: gemv_lanes8_avx2, where lane l of a vector carries sub-block l.
constexpr int64_t kLanesMinK = 128;
constexpr int64_t kLanesKC = 1024;
inline int64_t lanes_block_depth(int64_t K) { return ceil_div(K, ceil_div(K, kLanesKC)); }
// Depths in sub-block l (< 8) of a block of kc: ceil((kc - l) / 8), 0 when kc <= l.
inline int64_t lanes_sub_size(int64_t kc, int l) { return kc > l ? (kc - l + 7) / 8 : 0; }
// Where sub-block l starts in the lane-interleaved order of a block of kc.
inline int64_t lanes_sub_offset(int64_t kc, int l) { return l * (kc / 8) + std::min<int64_t>(l, kc % 8); }
// pack_a (op(A) = A, not transposed) and pack_b (op(B) = B^T, B's rows are
// columns of op(B)) of the AVX2 family, each panel's depth in the
// lane-interleaved order.
void pack_a_lanes8_avx2(const float* A, int64_t lda, int64_t i0, int64_t m, int64_t k0, int64_t kc, int64_t mr,
                        float* dst);
void pack_b_lanes8_avx2(const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t n, float* dst);
// One row: c[j] = alpha * sum_k a[k] B[j*ldb + k] (+ beta c[j]) for j < N,
// with the arithmetic above. N >= 1, K >= 1.
void gemv_lanes8_avx2(int64_t N, int64_t K, float alpha, const float* a, const float* B, int64_t ldb, float beta,
                      float* c, int threads);
#endif

}  // namespace gemm_detail
}  // namespace striate
