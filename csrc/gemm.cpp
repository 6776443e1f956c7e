// gemm.cpp: the packed SGEMM behind gemm.hpp, in the Goto/BLIS style, with
// micro-kernels for AVX-512, AVX2+FMA and portable C++ chosen at run time, and
// the naive triple loop that serves as its oracle.
//
// Not here: convolution-specific packing (im2col lives in conv2d.cpp), float64,
// any -march dependence (one build runs on every x86-64; other architectures
// compile the portable kernels only).
#include "gemm.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "parallel.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define STRIATE_GEMM_X86 1
#include <immintrin.h>
#else
#define STRIATE_GEMM_X86 0
#endif

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

namespace {

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
// A B^T with small M, see gemm_dot_avx512) depends on the shape only.
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

// ---- portable packing, written so that compilers vectorise it; inlined into
// the ISA-specific wrappers below, which compile it for their instruction set.
template <int S>
inline __attribute__((always_inline)) void pack_a_portable(bool transA, const float* A, int64_t lda, int64_t i0,
                                                           int64_t m, int64_t k0, int64_t kc, int64_t mr,
                                                           float* dst) {
    for (int64_t p = 0; p < m; p += mr) {
        const int64_t R = std::min(mr, m - p);
        for (int64_t k = 0; k < kc; ++k) {
            float* d = dst + k * S;
            if (transA) {
                const float* src = A + (k0 + k) * lda + i0 + p;
                for (int64_t r = 0; r < R; ++r) d[r] = src[r];
            } else {
                const float* src = A + (i0 + p) * lda + k0 + k;
                for (int64_t r = 0; r < R; ++r) d[r] = src[r * lda];
            }
            for (int64_t r = R; r < S; ++r) d[r] = 0.f;
        }
        dst += S * kc;
    }
}

template <int NR>
inline __attribute__((always_inline)) void pack_b_portable(bool transB, const float* B, int64_t ldb, int64_t k0,
                                                           int64_t kc, int64_t j0, int64_t n, float* dst) {
    for (int64_t q = 0; q < n; q += NR) {
        const int64_t w = std::min<int64_t>(NR, n - q);
        for (int64_t k = 0; k < kc; ++k) {
            float* d = dst + k * NR;
            if (transB) {
                const float* src = B + (j0 + q) * ldb + k0 + k;
                for (int64_t j = 0; j < w; ++j) d[j] = src[j * ldb];
            } else {
                const float* src = B + (k0 + k) * ldb + j0 + q;
                for (int64_t j = 0; j < w; ++j) d[j] = src[j];
            }
            for (int64_t j = w; j < NR; ++j) d[j] = 0.f;
        }
        dst += NR * kc;
    }
}

// ---- portable kernels: plain C++ the compiler vectorises for the baseline ISA.
constexpr int kGenericMR = 4;
constexpr int kGenericNR = 16;

template <int R>
void sgemm_ukernel_x16__generic(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                                float alpha, float beta) {
    constexpr int NR = kGenericNR, S = kGenericMR;
    float acc[R][NR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        for (int r = 0; r < R; ++r) {
            const float ar = a[r];
            for (int j = 0; j < NR; ++j) acc[r][j] += ar * b[j];
        }
        a += S;
        b += ldb;
    }
    for (int r = 0; r < R; ++r) {
        float* cr = c + r * ldc;
        for (int j = 0; j < NR; ++j) cr[j] = merge_value(beta == 0.f ? 0.f : cr[j], alpha * acc[r][j], beta);
    }
}

void pack_a_generic(bool transA, const float* A, int64_t lda, int64_t i0, int64_t m, int64_t k0, int64_t kc,
                    int64_t mr, float* dst) {
    pack_a_portable<kGenericMR>(transA, A, lda, i0, m, k0, kc, mr, dst);
}
void pack_b_generic(bool transB, const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t n,
                    float* dst) {
    pack_b_portable<kGenericNR>(transB, B, ldb, k0, kc, j0, n, dst);
}

template <int... Rs>
constexpr KernelFamily make_generic_family(std::integer_sequence<int, Rs...>) {
    return KernelFamily{Isa::generic, "generic",      kGenericMR, kGenericNR, kGenericMR,
                        &pack_a_generic,  &pack_b_generic, {nullptr, &sgemm_ukernel_x16__generic<Rs + 1>...}, {}};
}
const KernelFamily kGenericFamily = make_generic_family(std::make_integer_sequence<int, kGenericMR>{});

#if STRIATE_GEMM_X86
// ---- AVX2 + FMA: R x 16, two ymm accumulators per row, R <= 6 (12 accumulators).
constexpr int kAvx2MR = 6;
constexpr int kAvx2S = 8;

template <int R>
__attribute__((target("avx2,fma"))) void sgemm_ukernel_x16__avx2(int64_t kc, const float* a, const float* b,
                                                                   int64_t ldb, float* c, int64_t ldc, float alpha,
                                                                   float beta) {
    __m256 acc0[R], acc1[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const __m256 ar = _mm256_broadcast_ss(a + r);
            acc0[r] = _mm256_fmadd_ps(ar, b0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(ar, b1, acc1[r]);
        }
        a += kAvx2S;
        b += ldb;
    }
    const __m256 va = _mm256_set1_ps(alpha);
    if (beta == 0.f) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            _mm256_storeu_ps(c + r * ldc, _mm256_mul_ps(va, acc0[r]));
            _mm256_storeu_ps(c + r * ldc + 8, _mm256_mul_ps(va, acc1[r]));
        }
    } else if (beta == 1.f) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            float* cr = c + r * ldc;
            _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), _mm256_mul_ps(va, acc0[r])));
            _mm256_storeu_ps(cr + 8, _mm256_add_ps(_mm256_loadu_ps(cr + 8), _mm256_mul_ps(va, acc1[r])));
        }
    } else {
        const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            float* cr = c + r * ldc;
            _mm256_storeu_ps(cr, _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), _mm256_mul_ps(va, acc0[r])));
            _mm256_storeu_ps(cr + 8, _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), _mm256_mul_ps(va, acc1[r])));
        }
    }
}

// dst[t*ld_dst + i] = src[i*ld_src + t] for i < rows (<= 8), t < kc; slots past
// `rows` are zero. 8 x 8 blocks are transposed in registers, the last kc % 8
// columns one by one.
__attribute__((target("avx2,fma"))) void transpose_pack_avx2(const float* src, int64_t ld_src, int64_t rows,
                                                             int64_t kc, float* dst, int64_t ld_dst) {
    const float* row[8];
    for (int i = 0; i < 8; ++i) row[i] = src + std::min<int64_t>(i, std::max<int64_t>(rows - 1, 0)) * ld_src;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        __m256 v[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) v[i] = i < rows ? _mm256_loadu_ps(row[i] + k) : _mm256_setzero_ps();
        __m256 t[8], u[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
        }
        // u[4h + c], 128-bit lane l: rows 4h .. 4h+3 of column 4l + c.
#pragma GCC unroll 8
        for (int h = 0; h < 8; h += 4) {
            u[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
            u[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
            u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
            u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
#pragma GCC unroll 8
        for (int c = 0; c < 4; ++c) {
            _mm256_store_ps(dst + (k + c) * ld_dst, _mm256_permute2f128_ps(u[c], u[4 + c], 0x20));
            _mm256_store_ps(dst + (k + 4 + c) * ld_dst, _mm256_permute2f128_ps(u[c], u[4 + c], 0x31));
        }
    }
    for (; k < kc; ++k)
        for (int i = 0; i < 8; ++i) dst[k * ld_dst + i] = i < rows ? row[i][k] : 0.f;
}

__attribute__((target("avx2,fma"))) void pack_a_avx2(bool transA, const float* A, int64_t lda, int64_t i0,
                                                     int64_t m, int64_t k0, int64_t kc, int64_t mr, float* dst) {
    if (transA) {
        pack_a_portable<kAvx2S>(transA, A, lda, i0, m, k0, kc, mr, dst);
        return;
    }
    for (int64_t p = 0; p < m; p += mr, dst += kAvx2S * kc) {
        transpose_pack_avx2(A + (i0 + p) * lda + k0, lda, std::min(mr, m - p), kc, dst, kAvx2S);
    }
}

__attribute__((target("avx2,fma"))) void pack_b_avx2(bool transB, const float* B, int64_t ldb, int64_t k0,
                                                     int64_t kc, int64_t j0, int64_t n, float* dst) {
    if (!transB) {
        pack_b_portable<16>(transB, B, ldb, k0, kc, j0, n, dst);
        return;
    }
    for (int64_t q = 0; q < n; q += 16, dst += 16 * kc) {
        const int64_t w = std::min<int64_t>(16, n - q);
        for (int h = 0; h < 2; ++h) {
            const int64_t wh = std::max<int64_t>(0, std::min<int64_t>(8, w - 8 * h));
            transpose_pack_avx2(B + (j0 + q + 8 * h) * ldb + k0, ldb, wh, kc, dst + 8 * h, 16);
        }
    }
}

template <int... Rs>
constexpr KernelFamily make_avx2_family(std::integer_sequence<int, Rs...>) {
    return KernelFamily{Isa::avx2, "avx2",       kAvx2MR, 16, kAvx2S,
                        &pack_a_avx2,  &pack_b_avx2, {nullptr, &sgemm_ukernel_x16__avx2<Rs + 1>...}, {}};
}
const KernelFamily kAvx2Family = make_avx2_family(std::make_integer_sequence<int, kAvx2MR>{});

// ---- AVX-512: R x 32, two zmm accumulators per row, R <= 14 (28 accumulators),
// A columns in 16-float slots (one cache line).
constexpr int kAvx512MR = 14;
constexpr int kAvx512S = 16;

template <int R>
__attribute__((target("avx512f,fma"))) void sgemm_ukernel_x32__avx512(int64_t kc, const float* a,
                                                                        const float* b, int64_t ldb, float* c,
                                                                        int64_t ldc, float alpha, float beta) {
    __m512 acc0[R], acc1[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_loadu_ps(b);
        const __m512 b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const __m512 ar = _mm512_set1_ps(a[r]);
            acc0[r] = _mm512_fmadd_ps(ar, b0, acc0[r]);
            acc1[r] = _mm512_fmadd_ps(ar, b1, acc1[r]);
        }
        a += kAvx512S;
        b += ldb;
    }
    const __m512 va = _mm512_set1_ps(alpha);
    if (beta == 0.f) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            _mm512_storeu_ps(c + r * ldc, _mm512_mul_ps(va, acc0[r]));
            _mm512_storeu_ps(c + r * ldc + 16, _mm512_mul_ps(va, acc1[r]));
        }
    } else if (beta == 1.f) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            float* cr = c + r * ldc;
            _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), _mm512_mul_ps(va, acc0[r])));
            _mm512_storeu_ps(cr + 16, _mm512_add_ps(_mm512_loadu_ps(cr + 16), _mm512_mul_ps(va, acc1[r])));
        }
    } else {
        const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            float* cr = c + r * ldc;
            _mm512_storeu_ps(cr, _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr), _mm512_mul_ps(va, acc0[r])));
            _mm512_storeu_ps(cr + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr + 16), _mm512_mul_ps(va, acc1[r])));
        }
    }
}

// The left half of sgemm_ukernel_x32__avx512 (same arithmetic per element),
// for edge tiles of at most 16 valid columns: b still has row stride ldb.
template <int R>
__attribute__((target("avx512f,fma"))) void sgemm_ukernel_x16__avx512(int64_t kc, const float* a,
                                                                        const float* b, int64_t ldb, float* c,
                                                                        int64_t ldc, float alpha, float beta) {
    __m512 acc[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_loadu_ps(b);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r]), b0, acc[r]);
        a += kAvx512S;
        b += ldb;
    }
    const __m512 va = _mm512_set1_ps(alpha);
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        float* cr = c + r * ldc;
        const __m512 t = _mm512_mul_ps(va, acc[r]);
        if (beta == 0.f) {
            _mm512_storeu_ps(cr, t);
        } else if (beta == 1.f) {
            _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), t));
        } else {
            _mm512_storeu_ps(cr, _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr), t));
        }
    }
}

inline __mmask16 low_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

__attribute__((target("avx512f"))) void pack_a_avx512(bool transA, const float* A, int64_t lda, int64_t i0,
                                                      int64_t m, int64_t k0, int64_t kc, int64_t mr, float* dst) {
    constexpr int S = kAvx512S;
    for (int64_t p = 0; p < m; p += mr) {
        const int64_t R = std::min(mr, m - p);
        if (transA) {
            const __mmask16 mask = low_mask(R);
            const float* src = A + k0 * lda + i0 + p;
            for (int64_t k = 0; k < kc; ++k) _mm512_store_ps(dst + k * S, _mm512_maskz_loadu_ps(mask, src + k * lda));
        } else {
            // Two 8-row halves: on Zen 4 the 8 x 8 AVX2 register transpose beats a
            // 16 x 16 AVX-512 one (bw 64x576x4096 +9%, FC 4096->128 +10%).
            for (int h = 0; h < 2; ++h) {
                const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(8, R - 8 * h));
                transpose_pack_avx2(A + (i0 + p + 8 * h) * lda + k0, lda, rows, kc, dst + 8 * h, S);
            }
        }
        dst += S * kc;
    }
}

__attribute__((target("avx512f"))) void pack_b_avx512(bool transB, const float* B, int64_t ldb, int64_t k0,
                                                      int64_t kc, int64_t j0, int64_t n, float* dst) {
    constexpr int NR = 32;
    if (transB) {
        for (int64_t q = 0; q < n; q += NR) {
            const int64_t w = std::min<int64_t>(NR, n - q);
            for (int h = 0; h < 4; ++h) {
                const int64_t wh = std::max<int64_t>(0, std::min<int64_t>(8, w - 8 * h));
                transpose_pack_avx2(B + (j0 + q + 8 * h) * ldb + k0, ldb, wh, kc, dst + 8 * h, NR);
            }
            dst += NR * kc;
        }
        return;
    }
    // Row after row of B, so that the source is read sequentially.
    const int64_t full = n / NR, w = n - full * NR;
    const __mmask16 lo = low_mask(w), hi = low_mask(std::max<int64_t>(0, w - 16));
    for (int64_t k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * ldb + j0;
        float* d = dst + k * NR;
        for (int64_t q = 0; q < full; ++q) {
            _mm512_store_ps(d + q * NR * kc, _mm512_loadu_ps(src + q * NR));
            _mm512_store_ps(d + q * NR * kc + 16, _mm512_loadu_ps(src + q * NR + 16));
        }
        if (w) {
            _mm512_store_ps(d + full * NR * kc, _mm512_maskz_loadu_ps(lo, src + full * NR));
            _mm512_store_ps(d + full * NR * kc + 16, _mm512_maskz_loadu_ps(hi, src + full * NR + 16));
        }
    }
}

template <int... Rs>
constexpr KernelFamily make_avx512_family(std::integer_sequence<int, Rs...>) {
    return KernelFamily{Isa::avx512,
                        "avx512",
                        kAvx512MR,
                        32,
                        kAvx512S,
                        &pack_a_avx512,
                        &pack_b_avx512,
                        {nullptr, &sgemm_ukernel_x32__avx512<Rs + 1>...},
                        {nullptr, &sgemm_ukernel_x16__avx512<Rs + 1>...}};
}
const KernelFamily kAvx512Family = make_avx512_family(std::make_integer_sequence<int, kAvx512MR>{});

// ---- AVX-512 "dot" kernels for C = alpha * A B^T + beta * C with A (M x K) and
// B (N x K) both row-major, i.e. transA = false, transB = true (the
// fully-connected forward pass and the convolution weight gradient). Both
// operands are contiguous along K, so nothing is packed: an RA x RB tile keeps
// RA*RB accumulators of 16 partial sums (lane l sums k = l mod 16, FMA in
// increasing k, the K tail read with masked loads as zeros), then reduces each
// accumulator with the fixed tree hsum16(). Every element gets the same
// arithmetic whatever RA and RB, so edge tiles are just smaller
// instantiations. The depth is blocked by kDotKC (from K only); block p > 0
// adds into C with beta = 1 as in the packed path.
constexpr int kDotRA = 4;
constexpr int kDotRB = 6;
constexpr int64_t kDotKC = 2048;
// The dot path wins when M is small (transposing B while packing would cost
// more, relative to the FMAs, than reading it in place) and A's block of
// M x kc stays in L2 while the tiles sweep over B.
bool use_dot_path(int64_t M, int64_t K) { return M <= 64 && M * std::min(K, kDotKC) <= 96 * 1024; }

using dot_kernel_fn = void (*)(int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                               int64_t ldc, float alpha, float beta);

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"  // _mm512_extractf64x4_pd's undefined pass-through
#endif
// Sum of the 16 lanes: pairs (l, l+8), then (l, l+4), (l, l+2), (0, 1).
__attribute__((target("avx512f"), always_inline)) inline float hsum16(__m512 v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 h = _mm256_add_ps(lo, hi);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

template <int RA, int RB>
__attribute__((target("avx512f,fma"))) void sgemm_dotkernel_x__avx512(int64_t kc, const float* a, int64_t lda,
                                                                        const float* b, int64_t ldb, float* c,
                                                                        int64_t ldc, float alpha, float beta) {
    __m512 acc[RA][RB];
#pragma GCC unroll 8
    for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) acc[i][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= kc; k += 16) {
        __m512 bv[RB];
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) bv[j] = _mm512_loadu_ps(b + j * ldb + k);
#pragma GCC unroll 8
        for (int i = 0; i < RA; ++i) {
            const __m512 av = _mm512_loadu_ps(a + i * lda + k);
#pragma GCC unroll 8
            for (int j = 0; j < RB; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    if (k < kc) {
        const __mmask16 mk = low_mask(kc - k);
        __m512 bv[RB];
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) bv[j] = _mm512_maskz_loadu_ps(mk, b + j * ldb + k);
#pragma GCC unroll 8
        for (int i = 0; i < RA; ++i) {
            const __m512 av = _mm512_maskz_loadu_ps(mk, a + i * lda + k);
#pragma GCC unroll 8
            for (int j = 0; j < RB; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) {
            float* cij = c + i * ldc + j;
            *cij = merge_value(beta == 0.f ? 0.f : *cij, alpha * hsum16(acc[i][j]), beta);
        }
}

template <int RA, int... RBs>
constexpr std::array<dot_kernel_fn, kDotRB + 1> dot_row(std::integer_sequence<int, RBs...>) {
    return {nullptr, &sgemm_dotkernel_x__avx512<RA, RBs + 1>...};
}
template <int... RAs>
constexpr std::array<std::array<dot_kernel_fn, kDotRB + 1>, kDotRA + 1> dot_table(std::integer_sequence<int, RAs...>) {
    return {std::array<dot_kernel_fn, kDotRB + 1>{}, dot_row<RAs + 1>(std::make_integer_sequence<int, kDotRB>{})...};
}
const auto kDotKernels = dot_table(std::make_integer_sequence<int, kDotRA>{});

// Tasks are column blocks of whole RB groups (any split gives the same result).
int64_t dot_groups_per_task(int64_t M, int64_t N, int64_t K, int threads) {
    const int64_t groups = ceil_div(N, kDotRB);
    int64_t tasks = 1;
    const double flops = 2.0 * double(M) * double(N) * double(K);
    if (threads > 1 && !in_parallel_region() && flops > kMinParallelFlops) {
        tasks = std::min<int64_t>(groups, 4 * threads);
    }
    return ceil_div(groups, tasks);
}

// C = alpha * A B^T + beta * C (A: M x K, B: N x K, row-major); M, N, K >= 1.
void gemm_dot_avx512(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                     int64_t ldb, float beta, float* C, int64_t ldc, int threads) {
    const int64_t kc = ceil_div(K, ceil_div(K, kDotKC));
    const int64_t groups = ceil_div(N, kDotRB);
    const int64_t per = dot_groups_per_task(M, N, K, threads);
    const int64_t tasks = ceil_div(groups, per);
    parallel_for(
        tasks,
        [&](int64_t t) {
            const int64_t j_end = std::min(N, (t + 1) * per * kDotRB);
            for (int64_t k0 = 0; k0 < K; k0 += kc) {
                const int64_t kb = std::min(kc, K - k0);
                const float beta_k = k0 == 0 ? beta : 1.f;
                for (int64_t j = t * per * kDotRB; j < j_end; j += kDotRB) {
                    const int64_t rb = std::min<int64_t>(kDotRB, j_end - j);
                    for (int64_t i = 0; i < M; i += kDotRA) {
                        const int64_t ra = std::min<int64_t>(kDotRA, M - i);
                        kDotKernels[ra][rb](kb, A + i * lda + k0, lda, B + j * ldb + k0, ldb, C + i * ldc + j, ldc,
                                            alpha, beta_k);
                    }
                }
            }
        },
        threads);
}
#endif  // STRIATE_GEMM_X86

const KernelFamily& family_for(Isa isa) {
    switch (isa) {
#if STRIATE_GEMM_X86
        case Isa::avx512:
            return kAvx512Family;
        case Isa::avx2:
            return kAvx2Family;
#endif
        default:
            return kGenericFamily;
    }
}

// ---- per-thread packing workspace: grows, never shrinks, freed at thread exit.
struct AlignedFree {
    void operator()(float* p) const { std::free(p); }
};

struct Workspace {
    std::unique_ptr<float[], AlignedFree> a, b;
    size_t a_cap = 0, b_cap = 0;

    static float* grow(std::unique_ptr<float[], AlignedFree>& p, size_t& cap, size_t n) {
        if (n > cap) {
            const size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
            float* q = static_cast<float*>(std::aligned_alloc(64, bytes));
            if (!q) throw std::bad_alloc();
            p.reset(q);
            cap = bytes / sizeof(float);
        }
        return p.get();
    }
};

Workspace& thread_workspace() {
    thread_local Workspace ws;
    return ws;
}

// ---- blocking. kc depends on K only and the row panels on M only; the task
// grid may depend on the thread count because its edges fall on panel edges.
constexpr int64_t kKC = 256;      // depth of a block: the A panel (S x kc) stays in L1
constexpr int64_t kNC = 512;      // columns of a packed B block: kc x nc stays in L2
constexpr int64_t kMCMax = 1024;  // rows of a task: its packed A block (about mc x kc) streams from L3
// A non-transposed B is read in place when a task has at most 3 row panels, or
// at most kDirectMaxPanels with a block depth of at least kDirectMinKC (thin
// blocks make the column-panel-outer order write C in a strided pattern) and a
// row stride that is not a multiple of 4 KiB (such rows all fall in the same
// cache sets, so the panel does not survive its re-reads).
constexpr int64_t kDirectMaxPanels = 12;
constexpr int64_t kDirectMinKC = 128;

bool read_b_in_place(bool transB, int64_t panels, int64_t kc, int64_t ldb) {
    if (transB) return false;
    return panels <= 3 || (panels <= kDirectMaxPanels && kc >= kDirectMinKC && ldb % 1024 != 0);
}

struct Plan {
    int64_t mr;      // rows per A panel (<= family mr), from M only
    int64_t kc;      // depth per block, from K only
    int64_t mt, nt;  // rows and columns per task: multiples of mr and nr
    int64_t tm, tn;  // number of tasks along M and N
};

Plan make_plan(const KernelFamily& f, int64_t M, int64_t N, int64_t K, int threads) {
    Plan p;
    p.mr = ceil_div(M, ceil_div(M, f.mr));
    p.kc = ceil_div(K, ceil_div(K, kKC));
    const int64_t mp = ceil_div(M, p.mr), np = ceil_div(N, f.nr);  // row and column panels
    const int64_t tm_min = ceil_div(mp, std::max<int64_t>(1, kMCMax / p.mr));
    int64_t pm = ceil_div(mp, tm_min), pn = np;  // panels per task
    const double flops = 2.0 * double(M) * double(N) * double(K);
    if (threads > 1 && !in_parallel_region() && flops > kMinParallelFlops) {
        // Estimated cycles of the slowest thread: FMA work plus packing per task.
        auto cost = [&](int64_t a, int64_t b) {
            const double rows = double(a * p.mr), cols = double(b * f.nr);
            const int64_t tasks = ceil_div(mp, a) * ceil_div(np, b);
            return double(ceil_div(tasks, threads)) * (rows * cols * double(K) / 16.0 + 0.5 * double(K) * (rows + cols) + 2000.0);
        };
        double best = cost(pm, pn);
        for (int64_t tm = tm_min; tm <= std::min(mp, tm_min * 8); ++tm) {
            for (int64_t tn = 1; tn <= std::min<int64_t>(np, 32); ++tn) {
                const int64_t a = ceil_div(mp, tm), b = ceil_div(np, tn);
                const double c = cost(a, b);
                if (c < best * 0.999) {
                    best = c;
                    pm = a;
                    pn = b;
                }
            }
        }
    }
    p.mt = pm * p.mr;
    p.nt = pn * f.nr;
    p.tm = ceil_div(M, p.mt);
    p.tn = ceil_div(N, p.nt);
    return p;
}

// Merge an R x n block of the temporary tile (row stride ld_t) into C with strides (rs, cs).
void merge_tile(int64_t R, int64_t n, const float* t, int64_t ld_t, float* C, int64_t rs, int64_t cs,
                float beta) {
    for (int64_t r = 0; r < R; ++r) {
        for (int64_t j = 0; j < n; ++j) {
            float* c = C + r * rs + j * cs;
            *c = merge_value(beta == 0.f ? 0.f : *c, t[r * ld_t + j], beta);
        }
    }
}

// C = beta * C for K == 0 (zeros when beta == 0, whatever C held).
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
    if (beta == 1.f) return;
    for (int64_t i = 0; i < M; ++i) {
        float* c = C + i * ldc;
        if (beta == 0.f) {
            std::fill(c, c + N, 0.f);
        } else {
            for (int64_t j = 0; j < N; ++j) c[j] *= beta;
        }
    }
}

// C(i, j) = C[i*rs + j*cs]; M, N, K >= 1.
void gemm_blocked(const KernelFamily& f, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t rs,
                  int64_t cs, int threads) {
    const Plan p = make_plan(f, M, N, K, threads);
    const int64_t nr = f.nr, S = f.s;
    const int64_t nc = std::min(p.nt, std::max<int64_t>(nr, kNC / nr * nr));
    parallel_for_2d(
        p.tm, p.tn,
        [&](int64_t ti, int64_t tj) {
            const int64_t i0 = ti * p.mt, j0 = tj * p.nt;
            const int64_t m = std::min(p.mt, M - i0), n = std::min(p.nt, N - j0);
            Workspace& ws = thread_workspace();
            float* pa = Workspace::grow(ws.a, ws.a_cap, size_t(ceil_div(m, p.mr) * S * p.kc));
            float* pb = Workspace::grow(ws.b, ws.b_cap, size_t(ceil_div(std::min(nc, n), nr) * nr * p.kc));
            alignas(64) float tile[kMaxMR * kMaxNR];
            const bool direct_b = read_b_in_place(transB, ceil_div(m, p.mr), p.kc, ldb);
            for (int64_t k0 = 0; k0 < K; k0 += p.kc) {
                const int64_t kc = std::min(p.kc, K - k0);
                const float beta_k = k0 == 0 ? beta : 1.f;
                f.pack_a(transA, A, lda, i0, m, k0, kc, p.mr, pa);
                // One tile: row panel ii (R rows, packed at ap) times column panel q.
                auto tile_op = [&](const float* ap, int64_t ii, int64_t R, const float* bp, int64_t ldbp, int64_t jj,
                                   int64_t w) {
                    float* c = C + (i0 + ii) * rs + (j0 + jj) * cs;
                    if (w == nr && cs == 1) {
                        f.kernel[R](kc, ap, bp, ldbp, c, rs, alpha, beta_k);
                    } else {
                        const ukernel_fn edge = 2 * w <= nr && f.half[R] ? f.half[R] : f.kernel[R];
                        edge(kc, ap, bp, ldbp, tile, nr, alpha, 0.f);
                        merge_tile(R, w, tile, nr, c, rs, cs, beta_k);
                    }
                };
                if (direct_b) {
                    // Column panel outer, so each B panel is re-read from L1 by the few row panels.
                    const int64_t full = n / nr, w = n - full * nr;
                    if (w) f.pack_b(false, B, ldb, k0, kc, j0 + full * nr, w, pb);
                    for (int64_t q = 0; q <= full; ++q) {
                        if (q == full && !w) break;
                        const float* bp = q < full ? B + k0 * ldb + j0 + q * nr : pb;
                        const int64_t ldbp = q < full ? ldb : nr;
                        const float* ap = pa;
                        for (int64_t ii = 0; ii < m; ii += p.mr, ap += S * kc) {
                            tile_op(ap, ii, std::min(p.mr, m - ii), bp, ldbp, q * nr, q < full ? nr : w);
                        }
                    }
                    continue;
                }
                for (int64_t jc = 0; jc < n; jc += nc) {
                    const int64_t nb = std::min(nc, n - jc), npan = ceil_div(nb, nr);
                    f.pack_b(transB, B, ldb, k0, kc, j0 + jc, nb, pb);
                    const float* ap = pa;
                    for (int64_t ii = 0; ii < m; ii += p.mr, ap += S * kc) {
                        const int64_t R = std::min(p.mr, m - ii);
                        for (int64_t q = 0; q < npan; ++q) {
                            tile_op(ap, ii, R, pb + q * nr * kc, nr, jc + q * nr, std::min(nr, nb - q * nr));
                        }
                    }
                }
            }
        },
        threads);
}

void check_args(bool transA, bool transB, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
    auto fail = [](const char* what, int64_t got, const std::string& need) {
        throw std::invalid_argument(std::string("sgemm: `") + what + "` must be " + need + ", got " +
                                    std::to_string(got));
    };
    if (M < 0) fail("M", M, ">= 0");
    if (N < 0) fail("N", N, ">= 0");
    if (K < 0) fail("K", K, ">= 0");
    const int64_t wa = transA ? M : K, wb = transB ? K : N;
    if (M > 0 && K > 0 && lda < wa) fail("lda", lda, ">= " + std::to_string(wa));
    if (K > 0 && N > 0 && ldb < wb) fail("ldb", ldb, ">= " + std::to_string(wb));
    if (M > 0 && N > 0 && ldc < N) fail("ldc", ldc, ">= " + std::to_string(N));
}

}  // namespace

namespace {
enum class Route { Packed, Transposed, Dot };

// Which path computes this shape: a function of the shape and family only.
Route route_for(const KernelFamily& f, bool transA, bool transB, int64_t M, int64_t N, int64_t K) {
#if STRIATE_GEMM_X86
    if (f.isa == Isa::avx512 && !transA && transB && use_dot_path(M, K)) return Route::Dot;
#else
    (void)transA, (void)transB, (void)K;
#endif
    // Tiles are nr columns wide. When N is narrow and M is not, compute
    // C^T = op(B)^T op(A)^T instead so that the long dimension fills the vectors.
    const int64_t waste_n = M * ceil_div(N, f.nr) * f.nr, waste_t = N * ceil_div(M, f.nr) * f.nr;
    return 4 * waste_t < 3 * waste_n ? Route::Transposed : Route::Packed;
}

// The family of `isa`; one the CPU cannot run throws std::invalid_argument.
const KernelFamily& checked_family(Isa isa) {
    if (static_cast<int>(isa) > static_cast<int>(detected_isa())) {
        throw std::invalid_argument(std::string("sgemm: `isa` '") + isa_name(isa) +
                                    "' is not supported by this CPU (widest supported: '" +
                                    isa_name(detected_isa()) + "')");
    }
    return family_for(isa);
}
}  // namespace

int64_t sgemm_task_count(Isa isa, bool transA, bool transB, int64_t M, int64_t N, int64_t K, int threads) {
    const KernelFamily& f = checked_family(isa);
    if (M <= 0 || N <= 0 || K <= 0) return 0;
    if (threads <= 0) threads = get_num_threads();
    switch (route_for(f, transA, transB, M, N, K)) {
#if STRIATE_GEMM_X86
        case Route::Dot:
            return ceil_div(ceil_div(N, kDotRB), dot_groups_per_task(M, N, K, threads));
#endif
        case Route::Transposed: {
            const Plan p = make_plan(f, N, M, K, threads);
            return p.tm * p.tn;
        }
        default: {
            const Plan p = make_plan(f, M, N, K, threads);
            return p.tm * p.tn;
        }
    }
}

void sgemm_isa(Isa isa, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
               int threads) {
    check_args(transA, transB, M, N, K, lda, ldb, ldc);
    const KernelFamily& f = checked_family(isa);
    if (M == 0 || N == 0) return;
    if (K == 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    // The plan splits tasks for the thread count that will actually run them.
    if (threads <= 0) threads = get_num_threads();
    switch (route_for(f, transA, transB, M, N, K)) {
#if STRIATE_GEMM_X86
        case Route::Dot:
            gemm_dot_avx512(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads);
            break;
#endif
        case Route::Transposed:
            gemm_blocked(f, !transB, !transA, N, M, K, alpha, B, ldb, A, lda, beta, C, 1, ldc, threads);
            break;
        default:
            gemm_blocked(f, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, threads);
    }
}

void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads) {
    sgemm_isa(active_isa(), transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads);
}

void sgemm_row_invariant(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads) {
    check_args(transA, transB, M, N, K, lda, ldb, ldc);
    const KernelFamily& f = checked_family(active_isa());
    if (M == 0 || N == 0) return;
    if (K == 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    if (threads <= 0) threads = get_num_threads();
#if STRIATE_GEMM_X86
    // The dot kernels give every element the same arithmetic whatever the
    // tile, so row blocks of 64 (which keep A's block in L2 up to this depth)
    // compute each row exactly as a lone row would be. Below a depth of 128
    // the per-element reduction costs more than the packed path.
    constexpr int64_t kRows = 64;
    if (f.isa == Isa::avx512 && !transA && transB && K >= 128 && kRows * K <= 96 * 1024) {
        for (int64_t i = 0; i < M; i += kRows) {
            gemm_dot_avx512(std::min(kRows, M - i), N, K, alpha, A + i * lda, lda, B, ldb, beta,
                            C + i * ldc, ldc, threads);
        }
        return;
    }
#endif
    // The packed path: the depth blocking depends on K only and every element
    // accumulates over k in the same order whatever tile holds it.
    gemm_blocked(f, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, threads);
}

}  // namespace striate
