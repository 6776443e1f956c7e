// gemm_kernels.cpp: the micro-kernel families declared in gemm_kernels.hpp:
// portable C++, AVX2+FMA (R x 16) and AVX-512 (R x 32, plus R x 16 edge
// kernels), each with its packing routines, and the AVX-512 dot kernels.
//
// Not here: blocking, task planning, threads (gemm.cpp), CPU detection
// (cpu.hpp; the caller picks the family).
#include "gemm_kernels.hpp"

#include <algorithm>
#include <array>
#include <utility>

#include "parallel.hpp"

#if STRIATE_GEMM_X86
#include <immintrin.h>
#endif

namespace striate {
namespace gemm_detail {

namespace {

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

// v[i] = row i of an 8 x 8 block -> v[c] = column c, in registers.
__attribute__((target("avx2,fma"))) inline void transpose8x8_avx2(__m256 (&v)[8]) {
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
        v[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        v[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

// v[c] = column k + c of rows row[0..7]: each row's 8 floats loaded as two
// halves into the lanes of rows i and i + 4, then 4 x 4 transposes inside the
// lanes (16 shuffles, none across lanes, where transpose8x8_avx2 takes 24).
__attribute__((target("avx2,fma"))) inline void load_transpose8x8_avx2(const float* const* row, int64_t k,
                                                                       __m256 (&v)[8]) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // columns k + 4h .. k + 4h + 3
        __m256 a[4], t[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i)
            a[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(row[i] + k + 4 * h)),
                                        _mm_loadu_ps(row[i + 4] + k + 4 * h), 1);
        t[0] = _mm256_unpacklo_ps(a[0], a[1]);
        t[1] = _mm256_unpackhi_ps(a[0], a[1]);
        t[2] = _mm256_unpacklo_ps(a[2], a[3]);
        t[3] = _mm256_unpackhi_ps(a[2], a[3]);
        v[4 * h] = _mm256_shuffle_ps(t[0], t[2], _MM_SHUFFLE(1, 0, 1, 0));
        v[4 * h + 1] = _mm256_shuffle_ps(t[0], t[2], _MM_SHUFFLE(3, 2, 3, 2));
        v[4 * h + 2] = _mm256_shuffle_ps(t[1], t[3], _MM_SHUFFLE(1, 0, 1, 0));
        v[4 * h + 3] = _mm256_shuffle_ps(t[1], t[3], _MM_SHUFFLE(3, 2, 3, 2));
    }
}

// dst[d(t)*ld_dst + i] = src[i*ld_src + t] for i < rows (<= 8), t < kc, where
// d(t) = t, or with `lanes8` the position of depth t in the lane-interleaved
// order (lanes_sub_offset(kc, t % 8) + t / 8); slots past `rows` are zero.
// 8 x 8 blocks are transposed in registers (column c of a block goes to
// sub-block c in the lane-interleaved order), the last kc % 8 columns one by one.
__attribute__((target("avx2,fma"))) void transpose_pack_avx2(const float* src, int64_t ld_src, int64_t rows,
                                                             int64_t kc, float* dst, int64_t ld_dst,
                                                             bool lanes8 = false) {
    const float* row[8];
    for (int i = 0; i < 8; ++i) row[i] = src + std::min<int64_t>(i, std::max<int64_t>(rows - 1, 0)) * ld_src;
    int64_t off[8];  // where column c of the block at depth k goes: (off[c] + k / step) * ld_dst
    const int64_t step = lanes8 ? 8 : 1;
    for (int c = 0; c < 8; ++c) off[c] = lanes8 ? lanes_sub_offset(kc, c) : c;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        __m256 v[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) v[i] = i < rows ? _mm256_loadu_ps(row[i] + k) : _mm256_setzero_ps();
        transpose8x8_avx2(v);
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) _mm256_store_ps(dst + (off[c] + k / step) * ld_dst, v[c]);
    }
    for (int c = 0; k + c < kc; ++c)
        for (int i = 0; i < 8; ++i) dst[(off[c] + k / step) * ld_dst + i] = i < rows ? row[i][k + c] : 0.f;
}

__attribute__((target("avx2,fma"))) void pack_a_avx2(bool transA, const float* A, int64_t lda, int64_t i0,
                                                     int64_t m, int64_t k0, int64_t kc, int64_t mr, float* dst) {
    if (transA) {
        // Each depth step of a panel is R <= 8 consecutive floats of a row of A:
        // one masked load, one whole-vector store (zeros past R).
        static_assert(kAvx2S == 8, "one vector per packed column of A");
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (int64_t p = 0; p < m; p += mr, dst += kAvx2S * kc) {
            const int64_t R = std::min(mr, m - p);
            const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(R)), lanes);
            const float* src = A + k0 * lda + i0 + p;
            for (int64_t k = 0; k < kc; ++k)
                _mm256_storeu_ps(dst + k * kAvx2S, _mm256_maskload_ps(src + k * lda, mask));
        }
        return;
    }
    for (int64_t p = 0; p < m; p += mr, dst += kAvx2S * kc) {
        transpose_pack_avx2(A + (i0 + p) * lda + k0, lda, std::min(mr, m - p), kc, dst, kAvx2S);
    }
}

__attribute__((target("avx2,fma"))) void pack_b_avx2(bool transB, const float* B, int64_t ldb, int64_t k0,
                                                     int64_t kc, int64_t j0, int64_t n, float* dst) {
    if (!transB) {
        // Row after row of B, whole vectors (the portable loop, with its
        // runtime width, took 13% of a pointwise 64 -> 128 forward on 16x16).
        const int64_t full = n / 16, w = n - full * 16;
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(w)), lanes);
        const __m256i hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(w) - 8), lanes);
        for (int64_t k = 0; k < kc; ++k) {
            const float* src = B + (k0 + k) * ldb + j0;
            float* d = dst + k * 16;
            for (int64_t q = 0; q < full; ++q) {
                _mm256_storeu_ps(d + q * 16 * kc, _mm256_loadu_ps(src + q * 16));
                _mm256_storeu_ps(d + q * 16 * kc + 8, _mm256_loadu_ps(src + q * 16 + 8));
            }
            if (w) {
                _mm256_storeu_ps(d + full * 16 * kc, _mm256_maskload_ps(src + full * 16, lo));
                _mm256_storeu_ps(d + full * 16 * kc + 8, _mm256_maskload_ps(src + full * 16 + 8, hi));
            }
        }
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

}  // namespace

void pack_a_lanes8_avx2(const float* A, int64_t lda, int64_t i0, int64_t m, int64_t k0, int64_t kc, int64_t mr,
                        float* dst) {
    for (int64_t p = 0; p < m; p += mr, dst += kAvx2S * kc)
        transpose_pack_avx2(A + (i0 + p) * lda + k0, lda, std::min(mr, m - p), kc, dst, kAvx2S, true);
}

void pack_b_lanes8_avx2(const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t n, float* dst) {
    for (int64_t q = 0; q < n; q += 16, dst += 16 * kc) {
        const int64_t w = std::min<int64_t>(16, n - q);
        for (int h = 0; h < 2; ++h) {
            const int64_t wh = std::max<int64_t>(0, std::min<int64_t>(8, w - 8 * h));
            transpose_pack_avx2(B + (j0 + q + 8 * h) * ldb + k0, ldb, wh, kc, dst + 8 * h, 16, true);
        }
    }
}

namespace {
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

// ---- "dot" kernels (AVX-512, and AVX2 below with the same bits) for C = alpha * A B^T + beta * C with A (M x K) and
// B (N x K) both row-major, i.e. transA = false, transB = true (the
// fully-connected forward pass and the convolution weight gradient). Both
// operands are contiguous along K, so nothing is packed: an RA x RB tile keeps
// RA*RB accumulators of 16 partial sums (lane l sums k = l mod 16, FMA in
// increasing k, the K tail read with masked loads as zeros), then reduces each
// accumulator with the fixed tree hsum16(). Every element gets the same
// arithmetic whatever RA and RB, so edge tiles are just smaller
// instantiations. The depth is blocked by the caller's kc_max (kDotKC, or wider for the
// fully-connected product; from K and kc_max only); block p > 0
// adds into C with beta = 1 as in the packed path.
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

// The same dot kernels for AVX2 + FMA, with the same arithmetic per element:
// each 16-lane accumulator of the AVX-512 kernel is a pair of 8-lane halves
// (lanes 0-7 and 8-15, k = l mod 16 as there), the tail is loaded as zeros
// with masks, and the reduction adds the two halves first, which is the first
// step of hsum16(). The results are therefore the AVX-512 ones, bit for bit.
// Tiles are at most 2 x 3 (12 accumulator registers of the 16).
constexpr int kDot2RA = 2;
constexpr int kDot2RB = 3;

// Lanes l < r set (r may be <= 0 or >= 8).
__attribute__((target("avx2"), always_inline)) inline __m256i tail_mask8(int64_t r) {
    const int v = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(8, r)));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// hsum16() of the 16 lanes held as (lo, hi).
__attribute__((target("avx2"), always_inline)) inline float hsum16_pair(__m256 lo, __m256 hi) {
    const __m256 h = _mm256_add_ps(lo, hi);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

template <int RA, int RB>
__attribute__((target("avx2,fma"))) void sgemm_dotkernel_x__avx2(int64_t kc, const float* a, int64_t lda,
                                                                   const float* b, int64_t ldb, float* c,
                                                                   int64_t ldc, float alpha, float beta) {
    __m256 acc[2][RA][RB];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h)
#pragma GCC unroll 8
        for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < RB; ++j) acc[h][i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= kc; k += 16) {
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            __m256 bv[RB];
#pragma GCC unroll 8
            for (int j = 0; j < RB; ++j) bv[j] = _mm256_loadu_ps(b + j * ldb + k + 8 * h);
#pragma GCC unroll 8
            for (int i = 0; i < RA; ++i) {
                const __m256 av = _mm256_loadu_ps(a + i * lda + k + 8 * h);
#pragma GCC unroll 8
                for (int j = 0; j < RB; ++j) acc[h][i][j] = _mm256_fmadd_ps(av, bv[j], acc[h][i][j]);
            }
        }
    }
    if (k < kc) {
        // Both halves take their FMA even when one is all zeros, as the
        // AVX-512 kernel's masked lanes do.
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i mk = tail_mask8(kc - k - 8 * h);
            __m256 bv[RB];
#pragma GCC unroll 8
            for (int j = 0; j < RB; ++j) bv[j] = _mm256_maskload_ps(b + j * ldb + k + 8 * h, mk);
#pragma GCC unroll 8
            for (int i = 0; i < RA; ++i) {
                const __m256 av = _mm256_maskload_ps(a + i * lda + k + 8 * h, mk);
#pragma GCC unroll 8
                for (int j = 0; j < RB; ++j) acc[h][i][j] = _mm256_fmadd_ps(av, bv[j], acc[h][i][j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) {
            float* cij = c + i * ldc + j;
            *cij = merge_value(beta == 0.f ? 0.f : *cij, alpha * hsum16_pair(acc[0][i][j], acc[1][i][j]), beta);
        }
}

// Dispatch tables: kernels[ra][rb] for 1 <= ra <= RA, 1 <= rb <= RB of the
// family (entries past its tile are null).
using dot_table_t = std::array<std::array<dot_kernel_fn, kDotRB + 1>, kDotRA + 1>;

template <int RA, int... RBs>
constexpr std::array<dot_kernel_fn, kDotRB + 1> dot_row512(std::integer_sequence<int, RBs...>) {
    return {nullptr, &sgemm_dotkernel_x__avx512<RA, RBs + 1>...};
}
template <int... RAs>
constexpr dot_table_t dot_table512(std::integer_sequence<int, RAs...>) {
    return {std::array<dot_kernel_fn, kDotRB + 1>{}, dot_row512<RAs + 1>(std::make_integer_sequence<int, kDotRB>{})...};
}
template <int RA, int... RBs>
constexpr std::array<dot_kernel_fn, kDotRB + 1> dot_row2(std::integer_sequence<int, RBs...>) {
    return {nullptr, &sgemm_dotkernel_x__avx2<RA, RBs + 1>...};
}
template <int... RAs>
constexpr dot_table_t dot_table2(std::integer_sequence<int, RAs...>) {
    return {std::array<dot_kernel_fn, kDotRB + 1>{}, dot_row2<RAs + 1>(std::make_integer_sequence<int, kDot2RB>{})...};
}

struct DotFamily {
    int ra, rb;  // tile: at most ra rows of A by rb rows of B
    dot_table_t kernels;
};
const DotFamily kDot512{kDotRA, kDotRB, dot_table512(std::make_integer_sequence<int, kDotRA>{})};
const DotFamily kDot2{kDot2RA, kDot2RB, dot_table2(std::make_integer_sequence<int, kDot2RA>{})};
static_assert(kDotRB % kDot2RB == 0 && kDotRA % kDot2RA == 0, "AVX2 dot tiles must divide the task groups");

}  // namespace

// Tasks are column blocks of whole RB groups, 16 per thread: the last task
// to finish then leaves the other threads idle for a small part of the call.
// Against 4 per thread (Zen 4, AVX-512, 2 threads, side by side): the
// forward of 3136 -> 1024 at batch 64 1.03x, batch 1 1.05x, batch 256 1.01x;
// 400 -> 120 at batch 64 1.10x; the 7x7 stem's weight gradient 1.05x.
int64_t dot_groups_per_task(int64_t M, int64_t N, int64_t K, int threads) {
    const int64_t groups = ceil_div(N, kDotRB);
    int64_t tasks = 1;
    const double flops = 2.0 * double(M) * double(N) * double(K);
    if (threads > 1 && !in_parallel_region() && flops > kMinParallelFlops) {
        tasks = std::min<int64_t>(groups, 16 * threads);
    }
    return ceil_div(groups, tasks);
}

void gemm_dot(Isa isa, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
              int64_t ldb, float beta, float* C, int64_t ldc, int threads, int64_t kc_max) {
    const DotFamily& f = isa == Isa::avx512 ? kDot512 : kDot2;
    const int64_t kc = ceil_div(K, ceil_div(K, kc_max));
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
                for (int64_t j = t * per * kDotRB; j < j_end; j += f.rb) {
                    const int64_t rb = std::min<int64_t>(f.rb, j_end - j);
                    for (int64_t i = 0; i < M; i += f.ra) {
                        const int64_t ra = std::min<int64_t>(f.ra, M - i);
                        f.kernels[ra][rb](kb, A + i * lda + k0, lda, B + j * ldb + k0, ldb, C + i * ldc + j, ldc,
                                            alpha, beta_k);
                    }
                }
            }
        },
        threads);
}

namespace {
// acc += the terms of columns [k, kend) of 8 rows, in order.
__attribute__((target("avx2,fma"))) inline void gemv8_terms(const float* const* row, const float* a, int64_t k,
                                                            int64_t kend, __m256& acc) {
    for (; k + 8 <= kend; k += 8) {
        __m256 v[8];
        load_transpose8x8_avx2(row, k, v);
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) acc = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + i), v[i], acc);
    }
    if (k < kend) {  // the last kend - k < 8 columns: masked loads, then only those terms
        const int kt = static_cast<int>(kend - k);
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(kt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 v[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) v[i] = _mm256_maskload_ps(row[i] + k, mask);
        transpose8x8_avx2(v);
        for (int i = 0; i < kt; ++i) acc = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + i), v[i], acc);
    }
}

// c[0, rows) = alpha * acc + beta * c, merged as the kernels merge (merge_value).
__attribute__((target("avx2,fma"))) inline void gemv8_merge(__m256 acc, int64_t rows, float alpha, float beta,
                                                            float* c) {
    const __m256 t = _mm256_mul_ps(_mm256_set1_ps(alpha), acc);
    if (rows == 8) {
        const __m256 r = beta == 0.f   ? t
                         : beta == 1.f ? _mm256_add_ps(_mm256_loadu_ps(c), t)
                                       : _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(c), t);
        _mm256_storeu_ps(c, r);
    } else {
        alignas(32) float tv[8];
        _mm256_store_ps(tv, t);
        for (int64_t j = 0; j < rows; ++j) c[j] = merge_value(beta == 0.f ? 0.f : c[j], tv[j], beta);
    }
}

// gemv_t on rows [0, rows) of B, rows <= 8 G: G groups of 8 rows, one
// accumulator per group. For each 8 columns of a group, its 8 rows are
// transposed in registers, and the 8 columns then enter the accumulator one
// after the other, so every element sums its terms in increasing k, as the
// packed kernels do; the G groups' chains run side by side.
template <int G>
__attribute__((target("avx2,fma"))) void gemv_rows_avx2(int64_t rows, int64_t K, int64_t kcb, float alpha,
                                                        const float* a, const float* B, int64_t ldb, float beta,
                                                        float* c) {
    const float* row[8 * G];
    for (int i = 0; i < 8 * G; ++i) row[i] = B + std::min<int64_t>(i, rows - 1) * ldb;  // past `rows`: not stored
    for (int64_t k0 = 0; k0 < K; k0 += kcb) {
        const int64_t kend = std::min(K, k0 + kcb);
        __m256 acc[G];
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
        int64_t k = k0;
        // 16 columns (a cache line of each row) per step: with a row stride that is
        // a multiple of 4 KB the rows share cache sets, and a line must be used up
        // before the other rows evict it (2048 and 4096 columns ran at 29 GB/s
        // with 8 columns per step).
        for (; k + 16 <= kend; k += 16) {
#pragma GCC unroll 8
            for (int g = 0; g < G; ++g) {
#pragma GCC unroll 2
                for (int h = 0; h < 16; h += 8) {
                    __m256 v[8];
                    load_transpose8x8_avx2(row + 8 * g, k + h, v);
#pragma GCC unroll 8
                    for (int i = 0; i < 8; ++i)
                        acc[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + h + i), v[i], acc[g]);
                }
            }
        }
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) {  // the last kend - k < 16 columns, group by group
            gemv8_terms(row + 8 * g, a, k, kend, acc[g]);
            if (rows > 8 * g)
                gemv8_merge(acc[g], std::min<int64_t>(8, rows - 8 * g), alpha, k0 == 0 ? beta : 1.f, c + 8 * g);
        }
    }
}

// gemv_rows_avx2<1> with two depth blocks side by side, for rows a multiple
// of 4 KB apart: their lines share cache sets, so fewer rows at a time (8),
// and two independent chains (the blocks, merged into c in order, so the
// bits are gemv_rows_avx2's) to keep the FMAs busy.
__attribute__((target("avx2,fma"))) void gemv_rows8_two_blocks_avx2(int64_t rows, int64_t K, int64_t kcb,
                                                                     float alpha, const float* a, const float* B,
                                                                     int64_t ldb, float beta, float* c) {
    const float* row[8];
    for (int i = 0; i < 8; ++i) row[i] = B + std::min<int64_t>(i, rows - 1) * ldb;  // past `rows`: not stored
    for (int64_t k0 = 0; k0 < K; k0 += 2 * kcb) {
        const int64_t k1 = std::min(K, k0 + kcb), k2 = std::min(K, k1 + kcb);  // blocks [k0, k1) and [k1, k2)
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        const int64_t both = (k2 - k1) / 8 * 8;  // columns the two blocks step through together
        for (int64_t kk = 0; kk < both; kk += 8) {
            gemv8_terms(row, a, k0 + kk, k0 + kk + 8, acc0);
            gemv8_terms(row, a, k1 + kk, k1 + kk + 8, acc1);
        }
        gemv8_terms(row, a, k0 + both, k1, acc0);
        gemv8_merge(acc0, rows, alpha, k0 == 0 ? beta : 1.f, c);
        if (k2 > k1) {
            gemv8_terms(row, a, k1 + both, k2, acc1);
            gemv8_merge(acc1, rows, alpha, 1.f, c);
        }
    }
}

// Rows per task: 8 kGemvGroups. Two groups (16 rows read side by side) beat
// more: 3136 -> 1024 on 2 threads of a Zen 4 took 0.149 ms with 2 groups,
// 0.17 with 3, 0.18 with 4 and 0.20 with 6 (more rows, more streams for the
// prefetchers), and 0.22 with 1 (one FMA chain, latency-bound).
constexpr int kGemvGroups = 2;
}  // namespace

void gemv_t(int64_t N, int64_t K, int64_t kcb, float alpha, const float* a, const float* B, int64_t ldb, float beta,
            float* c, int threads) {
    const bool aliased = ldb % 1024 == 0;  // rows a multiple of 4 KB apart
    const int64_t rows = aliased ? 8 : 8 * kGemvGroups;
    const int64_t tasks = ceil_div(N, rows);
    const bool parallel = threads > 1 && !in_parallel_region() && 2.0 * double(N) * double(K) > kMinParallelFlops;
    parallel_for(
        tasks,
        [&](int64_t t) {
            const int64_t j = t * rows, n = std::min(rows, N - j);
            if (aliased) {
                gemv_rows8_two_blocks_avx2(n, K, kcb, alpha, a, B + j * ldb, ldb, beta, c + j);
            } else {
                gemv_rows_avx2<kGemvGroups>(n, K, kcb, alpha, a, B + j * ldb, ldb, beta, c + j);
            }
        },
        parallel ? threads : 1);
}

namespace {
// gemv_lanes8 on rows [0, rows) of B, rows <= 8: one accumulator per row, its
// lane l holding sub-block l of the current depth block (the depths
// k0 + l + 8t, one FMA each in increasing t, from zero; lanes past the last
// depth of the block add 0 * 0, which leaves a sum that started at +0 as it
// is). At the end of a block the 8 accumulators are transposed, so that vector
// l holds sub-block l of the 8 rows, and merged into c one sub-block after the
// other, as the packed kernels merge.
__attribute__((target("avx2,fma"))) void gemv_lanes8_rows_avx2(int64_t rows, int64_t K, float alpha,
                                                               const float* a, const float* B, int64_t ldb,
                                                               float beta, float* c) {
    const float* row[8];
    for (int i = 0; i < 8; ++i) row[i] = B + std::min<int64_t>(i, rows - 1) * ldb;  // past `rows`: not stored
    const int64_t kcb = lanes_block_depth(K);
    for (int64_t k0 = 0; k0 < K; k0 += kcb) {
        const int64_t kc = std::min(kcb, K - k0);
        __m256 acc[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
        int64_t k = k0;
        for (; k + 8 <= k0 + kc; k += 8) {
            const __m256 av = _mm256_loadu_ps(a + k);
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(av, _mm256_loadu_ps(row[i] + k), acc[i]);
        }
        if (k < k0 + kc) {
            const __m256i mask = tail_mask8(k0 + kc - k);
            const __m256 av = _mm256_maskload_ps(a + k, mask);
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(av, _mm256_maskload_ps(row[i] + k, mask), acc[i]);
        }
        transpose8x8_avx2(acc);
        for (int l = 0; l < 8 && lanes_sub_size(kc, l) > 0; ++l)
            gemv8_merge(acc[l], rows, alpha, k0 == 0 && l == 0 ? beta : 1.f, c);
    }
}
}  // namespace

void gemv_lanes8_avx2(int64_t N, int64_t K, float alpha, const float* a, const float* B, int64_t ldb, float beta,
                      float* c, int threads) {
    const int64_t tasks = ceil_div(N, 8);
    const bool parallel = threads > 1 && !in_parallel_region() && 2.0 * double(N) * double(K) > kMinParallelFlops;
    parallel_for(
        tasks,
        [&](int64_t t) {
            gemv_lanes8_rows_avx2(std::min<int64_t>(8, N - 8 * t), K, alpha, a, B + 8 * t * ldb, ldb, beta,
                                  c + 8 * t);
        },
        parallel ? threads : 1);
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

}  // namespace gemm_detail
}  // namespace striate
