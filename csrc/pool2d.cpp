// pool2d.cpp: the pooling kernels declared in pool2d.hpp, forward beside
// backward, one (n, c) plane per parallel work item.
//
// Semantics (equal to torch.nn.functional):
// - max: the window starting at oh*sh - ph visits rows ih0, ih0+dh, ... that
//   lie inside the input, in row-major order; a value replaces the running
//   maximum when it is greater or NaN, so the first maximum wins ties and a
//   NaN makes the output NaN (with several NaNs, the last one's index).
//   Padding never wins. The index is h*W + w. A window that dilation leaves
//   without any input element gives -inf and PyTorch's index past the plane,
//   which max_pool2d_backward then rejects.
// - avg: the window is clipped to the padded input first (that size is the
//   count_include_pad divisor), then to the input (the other divisor).
// - lp: avg (no padding, count_include_pad) of x**p, times kh*kw, to the 1/p;
//   gradient dy * y**(1-p) * (kh*kw/count) * x**(p-1), zero where y == 0.
// - adaptive avg: window [floor(i*H/OH), ceil((i+1)*H/OH)), sum / kh / kw.
//
// Not here: argument validation (bind_pool.cpp), threads (parallel.hpp).
#include "pool2d.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "cpu.hpp"
#include "parallel.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace striate {

namespace {

// First row (or column) of a window that lies inside the input: start,
// start + step, ... (start may be negative because of padding).
inline int64_t first_inside(int64_t start, int64_t step) {
    if (start >= 0) return start;
    return start + ((-start + step - 1) / step) * step;
}

// The running maximum of a window: v replaces best when it is greater or NaN.
// Selects through integer masks so that compilers emit no branch (random data
// would mispredict half of them).
inline void max_step(float v, int64_t i, float& best, int64_t& best_i) {
    const bool take = (v > best) | (v != v);
    uint32_t vb, bb;
    std::memcpy(&vb, &v, sizeof vb);
    std::memcpy(&bb, &best, sizeof bb);
    const uint32_t m = 0u - static_cast<uint32_t>(take);
    bb = (vb & m) | (bb & ~m);
    std::memcpy(&best, &bb, sizeof bb);
    best_i = take ? i : best_i;
}

// x**e with the exponents that PyTorch evaluates exactly made exact here too.
inline float pow_exact(float x, double e) {
    if (e == 0.0) return 1.f;
    if (e == 1.0) return x;
    if (e == 2.0) return x * x;
    return static_cast<float>(std::pow(static_cast<double>(x), e));
}

// ---------------------------------------------------------------------------
// Max pooling. The generic kernels below handle any kernel, stride, padding
// and dilation and are the reference for the specialised ones after them.

// One output of max pooling: y[oh, ow] and its index. x is (H, W).
inline void max_window(const float* x, const PoolGeom& g, int64_t oh, int64_t ow, float* y, int64_t* ind) {
    const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
    const int64_t h1 = std::min(hs + (g.kh - 1) * g.dh + 1, g.H);
    const int64_t w1 = std::min(ws + (g.kw - 1) * g.dw + 1, g.W);
    const int64_t h0 = first_inside(hs, g.dh), w0 = first_inside(ws, g.dw);
    float best = -std::numeric_limits<float>::infinity();
    int64_t best_i = h0 * g.W + w0;
    for (int64_t ih = h0; ih < h1; ih += g.dh) {
        for (int64_t iw = w0; iw < w1; iw += g.dw) {
            const int64_t i = ih * g.W + iw;
            max_step(x[i], i, best, best_i);
        }
    }
    y[oh * g.OW + ow] = best;
    ind[oh * g.OW + ow] = best_i;
}

// x is (H, W), y and ind are (OH, OW). Outputs in rows [oh0, OH) and, in rows
// [0, oh0), columns [ow0, OW): the part a specialised kernel left over.
void max_plane_forward_rest(const float* x, float* y, int64_t* ind, const PoolGeom& g, int64_t oh0, int64_t ow0) {
    for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = oh < oh0 ? ow0 : 0; ow < g.OW; ++ow) max_window(x, g, oh, ow, y, ind);
}

// Outputs [lo, hi) along one axis whose windows lie wholly inside the input.
struct Span {
    int64_t lo, hi;
};
inline Span inside_span(int64_t out, int64_t in, int64_t k, int64_t s, int64_t pad, int64_t d) {
    const int64_t last_start = in - 1 - (k - 1) * d + pad;  // largest o*s that still fits
    const int64_t hi = last_start < 0 ? 0 : std::min(out, last_start / s + 1);
    return {std::min((pad + s - 1) / s, hi), hi};
}

// Any geometry: windows wholly inside the plane take a loop without bounds
// logic, the others go through max_window.
void max_plane_forward_generic(const float* x, float* y, int64_t* ind, const PoolGeom& g) {
    const Span rows = inside_span(g.OH, g.H, g.kh, g.sh, g.ph, g.dh);
    const Span cols = inside_span(g.OW, g.W, g.kw, g.sw, g.pw, g.dw);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        if (oh < rows.lo || oh >= rows.hi) {
            for (int64_t ow = 0; ow < g.OW; ++ow) max_window(x, g, oh, ow, y, ind);
            continue;
        }
        for (int64_t ow = 0; ow < cols.lo; ++ow) max_window(x, g, oh, ow, y, ind);
        const int64_t row_start = (oh * g.sh - g.ph) * g.W;
        for (int64_t ow = cols.lo; ow < cols.hi; ++ow) {
            const int64_t start = row_start + ow * g.sw - g.pw;
            const float* p = x + start;
            float best = p[0];
            int64_t best_off = 0;
            for (int64_t a = 0; a < g.kh; ++a) {
                for (int64_t b = (a == 0 ? 1 : 0); b < g.kw; ++b) {
                    const int64_t off = a * g.dh * g.W + b * g.dw;
                    max_step(p[off], off, best, best_off);
                }
            }
            y[oh * g.OW + ow] = best;
            ind[oh * g.OW + ow] = start + best_off;
        }
        for (int64_t ow = cols.hi; ow < g.OW; ++ow) max_window(x, g, oh, ow, y, ind);
    }
}

[[noreturn]] void throw_bad_index(int64_t plane, int64_t pos, int64_t value, int64_t hw) {
    throw std::invalid_argument("`indices` holds " + std::to_string(value) + " at plane " +
                                std::to_string(plane) + ", position " + std::to_string(pos) +
                                ", outside the valid range [0, H*W = " + std::to_string(hw) + ")");
}

// dy and ind are (OH, OW), dx is (H, W): zero-fill, then scatter in output order.
void max_plane_backward_generic(const float* dy, const int64_t* ind, float* dx, const PoolGeom& g,
                                int64_t plane) {
    const int64_t hw = g.H * g.W;
    const int64_t n = g.OH * g.OW;
    std::memset(dx, 0, static_cast<size_t>(hw) * sizeof(float));
    for (int64_t o = 0; o < n; ++o) {
        const int64_t i = ind[o];
        if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(hw)) throw_bad_index(plane, o, i, hw);
        dx[i] += dy[o];
    }
}

// ---------------------------------------------------------------------------
// Specialised max pooling.
//
// Forward, kernel K x K (K = 2 or 3), stride 2, no padding, dilation 1: the
// windows that lie fully inside the plane are computed with vectors (even and
// odd columns split by a permute), the rest (ceil_mode edges) by max_window.
// Indices are built as int32 (the plane has fewer than 2^31 elements) and
// widened on store.
//
// Backward, 2x2 blocks: when OH = H/2 and OW = W/2 (rounded down) and every
// index lies in its own block [2oh, 2oh+2) x [2ow, 2ow+2), the blocks are
// disjoint, so dx is written in one pass: dy where the index points, +0
// elsewhere (0 + dy, exactly what zero-fill and scatter give). Any other index
// sends the plane to the generic kernel, which checks the range. This depends
// only on the index values, never on how they were made.
//
// Every specialised kernel gives the bits of the generic one (the tests
// compare them under every instruction-set path); the path is active_isa()
// (cpu.hpp) at the time of the call, never a compiler flag. Average pooling
// has AVX-512 kernels of the same shapes further down; on the AVX2 path it
// runs the generic code.

// dy where `hit`, else +0, computed as 0 + dy like the zero-fill and scatter
// of the generic kernel; integer masks keep it free of branches.
inline float select_or_zero(bool hit, uint32_t dy_bits) {
    const uint32_t b = dy_bits & (0u - static_cast<uint32_t>(hit));
    float v;
    std::memcpy(&v, &b, sizeof v);
    return 0.f + v;
}

// The 2x2 block test and write for one output, portable code. Returns false
// when the index is outside its block.
inline bool block2_backward_one(float dyv, int64_t i, int64_t base, int64_t W, float* r0, float* r1) {
    const int64_t d = i - base;
    uint32_t bits;
    std::memcpy(&bits, &dyv, sizeof bits);
    r0[0] = select_or_zero(d == 0, bits);
    r0[1] = select_or_zero(d == 1, bits);
    r1[0] = select_or_zero(d == W, bits);
    r1[1] = select_or_zero(d == W + 1, bits);
    return (d == 0) | (d == 1) | (d == W) | (d == W + 1);
}

// Zero what the 2x2 blocks do not cover: the last column (W odd) of the
// covered rows, and the rows below them (H odd).
void block2_zero_rest(float* dx, const PoolGeom& g) {
    if (g.W > 2 * g.OW)
        for (int64_t h = 0; h < 2 * g.OH; ++h)
            std::memset(dx + h * g.W + 2 * g.OW, 0, static_cast<size_t>(g.W - 2 * g.OW) * sizeof(float));
    if (g.H > 2 * g.OH)
        std::memset(dx + 2 * g.OH * g.W, 0, static_cast<size_t>((g.H - 2 * g.OH) * g.W) * sizeof(float));
}

bool max_plane_backward_block2_portable(const float* dy, const int64_t* ind, float* dx, const PoolGeom& g) {
    const int64_t W = g.W;
    bool ok = true;
    for (int64_t oh = 0; oh < g.OH && ok; ++oh) {
        float* r0 = dx + 2 * oh * W;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t o = oh * g.OW + ow;
            ok &= block2_backward_one(dy[o], ind[o], 2 * oh * W + 2 * ow, W, r0 + 2 * ow, r0 + W + 2 * ow);
        }
    }
    return ok;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define STRIATE_X86_KERNELS 1

// Lanes [0, n) of a 16-lane mask (n clamped to [0, 16]).
__attribute__((target("avx512f"))) inline __mmask16 lanes16(int64_t n) {
    if (n <= 0) return 0;
    if (n >= 16) return 0xffff;
    return static_cast<__mmask16>((1u << n) - 1u);
}

__attribute__((target("avx512f"))) inline void max_update_avx512(__m512 v, __m512i vi, __m512& m, __m512i& mi) {
    const __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    m = _mm512_mask_blend_ps(take, m, v);
    mi = _mm512_mask_blend_epi32(take, mi, vi);
}

template <int K>
__attribute__((target("avx512f"))) void max_plane_forward_s2_avx512(const float* x, float* y, int64_t* ind,
                                                                     const PoolGeom& g) {
    const int64_t W = g.W;
    const int64_t ohf = std::min(g.OH, (g.H - K) / 2 + 1);  // rows of full windows
    const int64_t owf = std::min(g.OW, (g.W - K) / 2 + 1);  // columns of full windows
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t oh = 0; oh < ohf; ++oh) {
        for (int64_t ow = 0; ow < owf; ow += 16) {
            const int64_t r = std::min<int64_t>(16, owf - ow);
            const __mmask16 ma_lo = lanes16(2 * r), ma_hi = lanes16(2 * r - 16);
            const __mmask16 mb_lo = lanes16(2 * r - 1), mb_hi = lanes16(2 * r - 17);
            const int32_t base = static_cast<int32_t>(2 * oh * W + 2 * ow);
            const __m512i bidx = _mm512_add_epi32(_mm512_set1_epi32(base), even);
            __m512 m = _mm512_setzero_ps();
            __m512i mi = bidx;
            for (int rr = 0; rr < K; ++rr) {
                const float* p = x + (2 * oh + rr) * W + 2 * ow;
                const __m512 a0 = _mm512_maskz_loadu_ps(ma_lo, p);
                const __m512 a1 = _mm512_maskz_loadu_ps(ma_hi, p + 16);
                const __m512 e = _mm512_permutex2var_ps(a0, even, a1);
                const __m512 o = _mm512_permutex2var_ps(a0, odd, a1);
                const __m512i row = _mm512_add_epi32(bidx, _mm512_set1_epi32(static_cast<int32_t>(rr * W)));
                if (rr == 0) {
                    m = e;
                } else {
                    max_update_avx512(e, row, m, mi);
                }
                max_update_avx512(o, _mm512_add_epi32(row, _mm512_set1_epi32(1)), m, mi);
                if (K == 3) {
                    const __m512 b0 = _mm512_maskz_loadu_ps(mb_lo, p + 2);
                    const __m512 b1 = _mm512_maskz_loadu_ps(mb_hi, p + 18);
                    const __m512 e2 = _mm512_permutex2var_ps(b0, even, b1);
                    max_update_avx512(e2, _mm512_add_epi32(row, _mm512_set1_epi32(2)), m, mi);
                }
            }
            const int64_t o = oh * g.OW + ow;
            const __mmask16 mo = lanes16(r);
            _mm512_mask_storeu_ps(y + o, mo, m);
            _mm512_mask_storeu_epi64(ind + o, static_cast<__mmask8>(mo & 0xff),
                                     _mm512_cvtepi32_epi64(_mm512_castsi512_si256(mi)));
            _mm512_mask_storeu_epi64(ind + o + 8, static_cast<__mmask8>(mo >> 8),
                                     _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(mi, 1)));
        }
    }
    max_plane_forward_rest(x, y, ind, g, ohf, owf);
}

__attribute__((target("avx512f"))) bool max_plane_backward_block2_avx512(const float* dy, const int64_t* ind,
                                                                        float* dx, const PoolGeom& g) {
    const int64_t W = g.W;
    const __m512i step = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i sixteen = _mm512_set1_epi64(16);
    const __m512i off1 = _mm512_set1_epi64(1), offw = _mm512_set1_epi64(W), offw1 = _mm512_set1_epi64(W + 1);
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        float* r0 = dx + 2 * oh * W;
        float* r1 = r0 + W;
        for (int64_t ow = 0; ow < g.OW; ow += 16) {
            const int64_t r = std::min<int64_t>(16, g.OW - ow);
            const __mmask16 mo = lanes16(r);
            const int64_t o = oh * g.OW + ow;
            const __m512i i0 = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(mo & 0xff), ind + o);
            const __m512i i1 = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(mo >> 8), ind + o + 8);
            const __m512 d = _mm512_maskz_loadu_ps(mo, dy + o);
            const __m512i b0 = _mm512_add_epi64(_mm512_set1_epi64(2 * oh * W + 2 * ow), step);
            const __m512i d0 = _mm512_sub_epi64(i0, b0);
            const __m512i d1 = _mm512_sub_epi64(i1, _mm512_add_epi64(b0, sixteen));
            const __mmask16 m00 = static_cast<__mmask16>(_mm512_cmpeq_epi64_mask(d0, _mm512_setzero_si512()) |
                                                         (_mm512_cmpeq_epi64_mask(d1, _mm512_setzero_si512()) << 8));
            const __mmask16 m01 = static_cast<__mmask16>(_mm512_cmpeq_epi64_mask(d0, off1) |
                                                         (_mm512_cmpeq_epi64_mask(d1, off1) << 8));
            const __mmask16 m10 = static_cast<__mmask16>(_mm512_cmpeq_epi64_mask(d0, offw) |
                                                         (_mm512_cmpeq_epi64_mask(d1, offw) << 8));
            const __mmask16 m11 = static_cast<__mmask16>(_mm512_cmpeq_epi64_mask(d0, offw1) |
                                                         (_mm512_cmpeq_epi64_mask(d1, offw1) << 8));
            if (static_cast<__mmask16>((m00 | m01 | m10 | m11) & mo) != mo) return false;
            const __m512 v00 = _mm512_add_ps(zero, _mm512_maskz_mov_ps(m00, d));
            const __m512 v01 = _mm512_add_ps(zero, _mm512_maskz_mov_ps(m01, d));
            const __m512 v10 = _mm512_add_ps(zero, _mm512_maskz_mov_ps(m10, d));
            const __m512 v11 = _mm512_add_ps(zero, _mm512_maskz_mov_ps(m11, d));
            const __mmask16 ms_lo = lanes16(2 * r), ms_hi = lanes16(2 * r - 16);
            _mm512_mask_storeu_ps(r0 + 2 * ow, ms_lo, _mm512_permutex2var_ps(v00, lo, v01));
            _mm512_mask_storeu_ps(r0 + 2 * ow + 16, ms_hi, _mm512_permutex2var_ps(v00, hi, v01));
            _mm512_mask_storeu_ps(r1 + 2 * ow, ms_lo, _mm512_permutex2var_ps(v10, lo, v11));
            _mm512_mask_storeu_ps(r1 + 2 * ow + 16, ms_hi, _mm512_permutex2var_ps(v10, hi, v11));
        }
    }
    return true;
}

__attribute__((target("avx2"))) inline __m256 even8(__m256 a0, __m256 a1) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0x88)), 0xD8));
}
__attribute__((target("avx2"))) inline __m256 odd8(__m256 a0, __m256 a1) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0xDD)), 0xD8));
}

__attribute__((target("avx2"))) inline void max_update_avx2(__m256 v, __m256i vi, __m256& m, __m256i& mi) {
    const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    m = _mm256_blendv_ps(m, v, take);
    mi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(mi), _mm256_castsi256_ps(vi), take));
}

// Lanes [0, n) of 8 (32-bit) and of 4 (64-bit), n clamped to the lane count.
__attribute__((target("avx2"))) inline __m256i lanes8(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(std::clamp<int64_t>(n, 0, 8))),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
__attribute__((target("avx2"))) inline __m256i lanes4x64(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(std::clamp<int64_t>(n, 0, 4)), _mm256_setr_epi64x(0, 1, 2, 3));
}

// The window columns of r <= 8 stride-2 windows from input row p (K = 2 or 3
// wide): e = p[2i], o = p[2i + 1] and, for K = 3, e2 = p[2i + 2] in lane i.
// MASKED loads only the inputs of the r windows; else whole vectors, reading
// 16 (K = 2) or 18 (K = 3) floats from p, whose lanes past the r windows the
// callers store over later.
template <int K, bool MASKED>
__attribute__((target("avx2"))) inline void s2_row_avx2(const float* p, int64_t r, __m256& e, __m256& o,
                                                        __m256& e2) {
    __m256 a0, a1;
    if (MASKED) {
        a0 = _mm256_maskload_ps(p, lanes8(2 * r));
        a1 = _mm256_maskload_ps(p + 8, lanes8(2 * r - 8));
    } else {
        a0 = _mm256_loadu_ps(p);
        a1 = _mm256_loadu_ps(p + 8);
    }
    e = even8(a0, a1);
    o = odd8(a0, a1);
    if (K == 3) {
        const __m256 b0 = MASKED ? _mm256_maskload_ps(p + 2, lanes8(2 * r - 1)) : _mm256_loadu_ps(p + 2);
        const __m256 b1 = MASKED ? _mm256_maskload_ps(p + 10, lanes8(2 * r - 9)) : _mm256_loadu_ps(p + 10);
        e2 = even8(b0, b1);
    }
}

// Whether a chunk of 8 stride-2 windows of K rows from input pixel i0 of an
// (h, w) plane, with outputs from o0 of an n-output plane, may load and store
// whole vectors: the loads (s2_row_avx2) and the 8 outputs stay inside the
// planes. Masked stores are slow on AMD cores (with masked tails the AVX2
// max-pool forward took 1.5-1.9x its time on 28x28 and 14x14 planes).
template <int K>
inline bool s2_whole(int64_t i0, int64_t h, int64_t w, int64_t o0, int64_t n) {
    return i0 + (K - 1) * w + (K == 3 ? 18 : 16) <= h * w && o0 + 8 <= n;
}

// Lanes [0, n) of v to p (n clamped to [0, 8]): a whole vector, or a masked store.
__attribute__((target("avx2"))) inline void store_lanes8(float* p, int64_t n, __m256 v) {
    if (n >= 8) {
        _mm256_storeu_ps(p, v);
    } else if (n > 0) {
        _mm256_maskstore_ps(p, lanes8(n), v);
    }
}

// a0 b0 a1 b1 ... a(r-1) b(r-1) to q (a 2x2-block backward's dx row): 16
// whole floats where they stay before `end` (the lanes past 2r land on values
// the caller writes later), else only the 2r through masked stores.
__attribute__((target("avx2"))) inline void store_interleaved(float* q, const float* end, int64_t r, __m256 a,
                                                              __m256 b) {
    const __m256 l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);  // a0 b0 a1 b1 | a4 b4 a5 b5
    const bool whole = q + 16 <= end;
    store_lanes8(q, whole ? 8 : 2 * r, _mm256_permute2f128_ps(l, h, 0x20));
    store_lanes8(q + 8, whole ? 8 : 2 * r - 8, _mm256_permute2f128_ps(l, h, 0x31));
}

template <int K, bool MASKED>
__attribute__((target("avx2"))) inline void max_chunk_s2_avx2(const float* x, int64_t W, int64_t i0, int64_t r,
                                                              float* y, int64_t* ind) {
    const __m256i bidx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(i0)),
                                          _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    __m256 m = _mm256_setzero_ps();
    __m256i mi = bidx;
    for (int rr = 0; rr < K; ++rr) {
        __m256 e, o, e2;
        s2_row_avx2<K, MASKED>(x + i0 + rr * W, r, e, o, e2);
        const __m256i row = _mm256_add_epi32(bidx, _mm256_set1_epi32(static_cast<int32_t>(rr * W)));
        if (rr == 0) {
            m = e;
        } else {
            max_update_avx2(e, row, m, mi);
        }
        max_update_avx2(o, _mm256_add_epi32(row, _mm256_set1_epi32(1)), m, mi);
        if (K == 3) max_update_avx2(e2, _mm256_add_epi32(row, _mm256_set1_epi32(2)), m, mi);
    }
    const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(mi));
    const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(mi, 1));
    if (MASKED) {
        _mm256_maskstore_ps(y, lanes8(r), m);
        _mm256_maskstore_epi64(reinterpret_cast<long long*>(ind), lanes4x64(r), lo);
        _mm256_maskstore_epi64(reinterpret_cast<long long*>(ind + 4), lanes4x64(r - 4), hi);
    } else {
        _mm256_storeu_ps(y, m);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ind), lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ind + 4), hi);
    }
}

// Chunks of 8 full windows with AVX2 (left to max_window, the 6 of 14 columns
// of a 28-wide plane made the AVX2 forward 7x slower than the AVX-512 one on
// LeNet-5's pools); the ceil_mode edges by max_window. The last chunk of a row
// computes 8 windows too where s2_whole allows: its lanes past the row land on
// outputs this plane writes later (the next row's, or the edges left to
// max_plane_forward_rest).
template <int K>
__attribute__((target("avx2"))) void max_plane_forward_s2_avx2(const float* x, float* y, int64_t* ind,
                                                               const PoolGeom& g) {
    const int64_t ohf = std::min(g.OH, (g.H - K) / 2 + 1);
    const int64_t owf = std::min(g.OW, (g.W - K) / 2 + 1);
    for (int64_t oh = 0; oh < ohf; ++oh) {
        for (int64_t ow = 0; ow < owf; ow += 8) {
            const int64_t r = std::min<int64_t>(8, owf - ow);  // outputs in this chunk
            const int64_t i0 = 2 * oh * g.W + 2 * ow, o = oh * g.OW + ow;
            if (s2_whole<K>(i0, g.H, g.W, o, g.OH * g.OW)) {
                max_chunk_s2_avx2<K, false>(x, g.W, i0, r, y + o, ind + o);
            } else {
                max_chunk_s2_avx2<K, true>(x, g.W, i0, r, y + o, ind + o);
            }
        }
    }
    max_plane_forward_rest(x, y, ind, g, ohf, owf);
}

// Lanes 0..3 of a and 0..3 of b (32-bit halves of 64-bit lanes of masks) as lanes 0..7.
__attribute__((target("avx2"))) inline __m256 pack_masks64(__m256i a, __m256i b) {
    return even8(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
}

// The 2x2-block backward with AVX2, 8 outputs (16 dx values of each of the
// two rows) per step: dy[o] to the one of its block's 4 positions that
// ind[o] names, 0 + dy (as the generic kernel adds it to zero) there and
// +0.0 at the other three; false when an index lies outside its block. A
// row pair's chunks run last one first, and whole loads and stores are used
// wherever they stay inside the planes: the lanes past the last chunk of a
// row land on values written later (the next row's, or block2_zero_rest's),
// and masked stores are slow on AMD cores (the scalar tail of 7- and 14-wide
// outputs, and 4 outputs a step, left this kernel 1.3-1.6x the AVX-512
// time on 64x64x14x14 and 64x32x28x28).
__attribute__((target("avx2"))) bool max_plane_backward_block2_avx2(const float* dy, const int64_t* ind, float* dx,
                                                                    const PoolGeom& g) {
    const int64_t W = g.W, n_out = g.OH * g.OW;
    const float* end = dx + g.H * W;
    const __m256i step = _mm256_setr_epi64x(0, 2, 4, 6), eight = _mm256_set1_epi64x(8);
    const __m256i off1 = _mm256_set1_epi64x(1), offw = _mm256_set1_epi64x(W), offw1 = _mm256_set1_epi64x(W + 1);
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        float* r0 = dx + 2 * oh * W;
        for (int64_t ow = (g.OW - 1) / 8 * 8; ow >= 0; ow -= 8) {
            const int64_t r = std::min<int64_t>(8, g.OW - ow), o = oh * g.OW + ow;
            __m256i i0, i1;
            __m256 d;
            if (o + 8 <= n_out) {
                i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ind + o));
                i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ind + o + 4));
                d = _mm256_loadu_ps(dy + o);
            } else {
                i0 = _mm256_maskload_epi64(reinterpret_cast<const long long*>(ind + o), lanes4x64(r));
                i1 = _mm256_maskload_epi64(reinterpret_cast<const long long*>(ind + o + 4), lanes4x64(r - 4));
                d = _mm256_maskload_ps(dy + o, lanes8(r));
            }
            const __m256i b0 = _mm256_add_epi64(_mm256_set1_epi64x(2 * oh * W + 2 * ow), step);
            const __m256i d0 = _mm256_sub_epi64(i0, b0), d1 = _mm256_sub_epi64(i1, _mm256_add_epi64(b0, eight));
            const __m256i z = _mm256_setzero_si256();
            const __m256 m00 = pack_masks64(_mm256_cmpeq_epi64(d0, z), _mm256_cmpeq_epi64(d1, z));
            const __m256 m01 = pack_masks64(_mm256_cmpeq_epi64(d0, off1), _mm256_cmpeq_epi64(d1, off1));
            const __m256 m10 = pack_masks64(_mm256_cmpeq_epi64(d0, offw), _mm256_cmpeq_epi64(d1, offw));
            const __m256 m11 = pack_masks64(_mm256_cmpeq_epi64(d0, offw1), _mm256_cmpeq_epi64(d1, offw1));
            const int valid = (1 << r) - 1;
            const int hit = _mm256_movemask_ps(_mm256_or_ps(_mm256_or_ps(m00, m01), _mm256_or_ps(m10, m11)));
            if ((hit & valid) != valid) return false;
            for (int row = 0; row < 2; ++row)
                store_interleaved(r0 + row * W + 2 * ow, end, r,
                                  _mm256_add_ps(zero, _mm256_and_ps(d, row ? m10 : m00)),
                                  _mm256_add_ps(zero, _mm256_and_ps(d, row ? m11 : m01)));
        }
    }
    return true;
}
#endif  // x86 kernels

// The vector path of the pooling kernels: the active one, except that output
// rows of at most 8 take the AVX2 kernels on the AVX-512 path (every CPU with
// AVX-512 has AVX2): their 8-lane vectors are full and stored whole, where
// the 16-lane ones run half empty under masks (Zen 4, 2 threads, in-process
// A/B on 64x64x14x14: max forward 1.28x, backward 1.36x, average forward
// 1.20x; 64x16x10x10 1.16x and 1.26x; 3x3 on 15x15 1.34x). The kernels of
// both paths give the same bits.
#ifdef STRIATE_X86_KERNELS
Isa pool_isa(const PoolGeom& g) {
    const Isa isa = active_isa();
    return isa == Isa::avx512 && g.OW <= 8 ? Isa::avx2 : isa;
}
#endif

using MaxForwardPlane = void (*)(const float*, float*, int64_t*, const PoolGeom&);

// The plane kernel for this geometry and CPU.
MaxForwardPlane pick_max_forward(const PoolGeom& g) {
#ifdef STRIATE_X86_KERNELS
    const bool s2 = g.kh == g.kw && (g.kh == 2 || g.kh == 3) && g.sh == 2 && g.sw == 2 && g.ph == 0 &&
                    g.pw == 0 && g.dh == 1 && g.dw == 1 && g.H * g.W <= std::numeric_limits<int32_t>::max();
    if (s2) {
        switch (pool_isa(g)) {
            case Isa::avx512:
                return g.kh == 2 ? max_plane_forward_s2_avx512<2> : max_plane_forward_s2_avx512<3>;
            case Isa::avx2:
                return g.kh == 2 ? max_plane_forward_s2_avx2<2> : max_plane_forward_s2_avx2<3>;
            case Isa::generic:
                break;
        }
    }
#endif
    return max_plane_forward_generic;
}

using MaxBackwardBlock = bool (*)(const float*, const int64_t*, float*, const PoolGeom&);

// The 2x2-block plane kernel when the shapes allow it, else nullptr.
MaxBackwardBlock pick_max_backward_block2(const PoolGeom& g) {
    if (g.OH != g.H / 2 || g.OW != g.W / 2 || g.OH == 0 || g.OW == 0) return nullptr;
#ifdef STRIATE_X86_KERNELS
    if (pool_isa(g) == Isa::avx512) return max_plane_backward_block2_avx512;
    if (pool_isa(g) == Isa::avx2) return max_plane_backward_block2_avx2;
#endif
    return max_plane_backward_block2_portable;
}

// ---------------------------------------------------------------------------
// Average-style windows (no dilation).

// Calls f(o, h0, h1, w0, w1, div) for every output o = oh*OW + ow of a plane,
// in order: the window clipped to the input is [h0, h1) x [w0, w1), and div is
// its count_include_pad divisor (the window clipped to the padded input) or
// the number of input elements in it. Windows wholly inside the input (the
// bulk of a plane) skip the clipping arithmetic. Outputs in rows [0, skip_rows)
// and columns [0, skip_cols) are left out (a vector kernel did them).
template <class F>
void for_each_avg_window(const PoolGeom& g, bool count_include_pad, F&& f, int64_t skip_rows = 0,
                         int64_t skip_cols = 0) {
    const Span rows = inside_span(g.OH, g.H, g.kh, g.sh, g.ph, 1);
    const Span cols = inside_span(g.OW, g.W, g.kw, g.sw, g.pw, 1);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t hs = oh * g.sh - g.ph;
        const bool row_inside = oh >= rows.lo && oh < rows.hi;
        for (int64_t ow = oh < skip_rows ? skip_cols : 0; ow < g.OW; ++ow) {
            const int64_t ws = ow * g.sw - g.pw;
            const int64_t o = oh * g.OW + ow;
            if (row_inside && ow >= cols.lo && ow < cols.hi) {
                f(o, hs, hs + g.kh, ws, ws + g.kw, g.kh * g.kw);
                continue;
            }
            const int64_t hp = std::min(hs + g.kh, g.H + g.ph), wp = std::min(ws + g.kw, g.W + g.pw);
            const int64_t h0 = std::max<int64_t>(hs, 0), w0 = std::max<int64_t>(ws, 0);
            const int64_t h1 = std::max(h0, std::min(hp, g.H)), w1 = std::max(w0, std::min(wp, g.W));
            const int64_t count = (h1 - h0) * (w1 - w0);
            // An empty window (impossible under PyTorch's padding rule) gives 0.
            const int64_t div = count == 0 ? 1 : count_include_pad ? (hp - hs) * (wp - ws) : count;
            f(o, h0, h1, w0, w1, div);
        }
    }
}

// x is (H, W), y is (OH, OW); outputs in rows [0, skip_rows) and columns
// [0, skip_cols) are left out.
void avg_plane_forward_rest(const float* x, float* y, const PoolGeom& g, bool count_include_pad,
                            int64_t skip_rows, int64_t skip_cols) {
    for_each_avg_window(
        g, count_include_pad,
        [&](int64_t o, int64_t h0, int64_t h1, int64_t w0, int64_t w1, int64_t div) {
            float sum = 0.f;
            for (int64_t ih = h0; ih < h1; ++ih)
                for (int64_t iw = w0; iw < w1; ++iw) sum += x[ih * g.W + iw];
            y[o] = sum / static_cast<float>(div);
        },
        skip_rows, skip_cols);
}

void avg_plane_forward(const float* x, float* y, const PoolGeom& g, bool count_include_pad) {
    avg_plane_forward_rest(x, y, g, count_include_pad, 0, 0);
}

#ifdef STRIATE_X86_KERNELS
// Average of K x K windows (K = 2 or 3), stride 2, no padding: the full
// windows 16 at a time, summed in the generic kernel's order (0 + row-major
// terms) and divided by K*K; the ceil_mode edges by the generic code.
template <int K>
__attribute__((target("avx512f"))) void avg_plane_forward_s2_avx512(const float* x, float* y, const PoolGeom& g,
                                                                     bool count_include_pad) {
    const int64_t W = g.W;
    const int64_t ohf = std::min(g.OH, (g.H - K) / 2 + 1);
    const int64_t owf = std::min(g.OW, (g.W - K) / 2 + 1);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512 area = _mm512_set1_ps(static_cast<float>(K * K));
    for (int64_t oh = 0; oh < ohf; ++oh) {
        for (int64_t ow = 0; ow < owf; ow += 16) {
            const int64_t r = std::min<int64_t>(16, owf - ow);
            const __mmask16 ma_lo = lanes16(2 * r), ma_hi = lanes16(2 * r - 16);
            const __mmask16 mb_lo = lanes16(2 * r - 1), mb_hi = lanes16(2 * r - 17);
            __m512 sum = _mm512_setzero_ps();
            for (int rr = 0; rr < K; ++rr) {
                const float* p = x + (2 * oh + rr) * W + 2 * ow;
                const __m512 a0 = _mm512_maskz_loadu_ps(ma_lo, p);
                const __m512 a1 = _mm512_maskz_loadu_ps(ma_hi, p + 16);
                sum = _mm512_add_ps(sum, _mm512_permutex2var_ps(a0, even, a1));
                sum = _mm512_add_ps(sum, _mm512_permutex2var_ps(a0, odd, a1));
                if (K == 3) {
                    const __m512 b0 = _mm512_maskz_loadu_ps(mb_lo, p + 2);
                    const __m512 b1 = _mm512_maskz_loadu_ps(mb_hi, p + 18);
                    sum = _mm512_add_ps(sum, _mm512_permutex2var_ps(b0, even, b1));
                }
            }
            _mm512_mask_storeu_ps(y + oh * g.OW + ow, lanes16(r), _mm512_div_ps(sum, area));
        }
    }
    avg_plane_forward_rest(x, y, g, count_include_pad, ohf, owf);
}

// avg_plane_forward_s2_avx512 on AVX2: 8 windows per chunk (whole or masked as
// in max_plane_forward_s2_avx2), in the same order and with the same division,
// so the bits are the same on both paths. The generic loop it replaces ran 5-9x
// slower than the AVX-512 kernel.
template <int K, bool MASKED>
__attribute__((target("avx2"))) inline void avg_chunk_s2_avx2(const float* x, int64_t W, int64_t i0, int64_t r,
                                                              float* y) {
    __m256 sum = _mm256_setzero_ps();
    for (int rr = 0; rr < K; ++rr) {
        __m256 e, o, e2;
        s2_row_avx2<K, MASKED>(x + i0 + rr * W, r, e, o, e2);
        sum = _mm256_add_ps(_mm256_add_ps(sum, e), o);
        if (K == 3) sum = _mm256_add_ps(sum, e2);
    }
    const __m256 v = _mm256_div_ps(sum, _mm256_set1_ps(static_cast<float>(K * K)));
    if (MASKED) {
        _mm256_maskstore_ps(y, lanes8(r), v);
    } else {
        _mm256_storeu_ps(y, v);
    }
}

template <int K>
__attribute__((target("avx2"))) void avg_plane_forward_s2_avx2(const float* x, float* y, const PoolGeom& g,
                                                                bool count_include_pad) {
    const int64_t ohf = std::min(g.OH, (g.H - K) / 2 + 1);
    const int64_t owf = std::min(g.OW, (g.W - K) / 2 + 1);
    for (int64_t oh = 0; oh < ohf; ++oh) {
        for (int64_t ow = 0; ow < owf; ow += 8) {
            const int64_t r = std::min<int64_t>(8, owf - ow);  // outputs in this chunk
            const int64_t i0 = 2 * oh * g.W + 2 * ow, o = oh * g.OW + ow;
            if (s2_whole<K>(i0, g.H, g.W, o, g.OH * g.OW)) {
                avg_chunk_s2_avx2<K, false>(x, g.W, i0, r, y + o);
            } else {
                avg_chunk_s2_avx2<K, true>(x, g.W, i0, r, y + o);
            }
        }
    }
    avg_plane_forward_rest(x, y, g, count_include_pad, ohf, owf);
}
#endif

void avg_plane_backward(const float* dy, float* dx, const PoolGeom& g, bool count_include_pad) {
    std::memset(dx, 0, static_cast<size_t>(g.H * g.W) * sizeof(float));
    for_each_avg_window(g, count_include_pad,
                        [&](int64_t o, int64_t h0, int64_t h1, int64_t w0, int64_t w1, int64_t div) {
                            const float d = dy[o] / static_cast<float>(div);
                            for (int64_t ih = h0; ih < h1; ++ih)
                                for (int64_t iw = w0; iw < w1; ++iw) dx[ih * g.W + iw] += d;
                        });
}

#ifdef STRIATE_X86_KERNELS
// Gradient of 2x2 stride-2 average pooling without padding when the blocks
// tile the plane (OH = H/2, OW = W/2): every covered dx element gets
// 0 + dy/4 from its one block, exactly what zero-fill and accumulate give;
// the uncovered last row/column is zeroed.
__attribute__((target("avx512f"))) void avg_plane_backward_block2_avx512(const float* dy, float* dx,
                                                                        const PoolGeom& g, bool) {
    const int64_t W = g.W;
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    const __m512 four = _mm512_set1_ps(4.f);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        float* r0 = dx + 2 * oh * W;
        for (int64_t ow = 0; ow < g.OW; ow += 16) {
            const int64_t r = std::min<int64_t>(16, g.OW - ow);
            const __m512 d = _mm512_maskz_loadu_ps(lanes16(r), dy + oh * g.OW + ow);
            const __m512 v = _mm512_add_ps(_mm512_setzero_ps(), _mm512_div_ps(d, four));
            const __m512 vlo = _mm512_permutex2var_ps(v, lo, v), vhi = _mm512_permutex2var_ps(v, hi, v);
            const __mmask16 ms_lo = lanes16(2 * r), ms_hi = lanes16(2 * r - 16);
            _mm512_mask_storeu_ps(r0 + 2 * ow, ms_lo, vlo);
            _mm512_mask_storeu_ps(r0 + 2 * ow + 16, ms_hi, vhi);
            _mm512_mask_storeu_ps(r0 + W + 2 * ow, ms_lo, vlo);
            _mm512_mask_storeu_ps(r0 + W + 2 * ow + 16, ms_hi, vhi);
        }
    }
    block2_zero_rest(dx, g);
}
#endif

#ifdef STRIATE_X86_KERNELS
// avg_plane_backward_block2_avx512 on AVX2, 8 outputs (16 dx values of each of
// the two rows) per step, with dy / 4 as dy * 0.25 (the same bits: a power of
// two; the divisions held the kernel to 1.4-1.6x the AVX-512 time). A
// row's chunks run last one first, so that the lanes a whole store writes
// past the row land on values written later (the chunk before's, the next
// row's, or block2_zero_rest's); masked stores, slow on AMD cores, only where
// the lanes would leave the plane.
__attribute__((target("avx2"))) void avg_plane_backward_block2_avx2(const float* dy, float* dx, const PoolGeom& g,
                                                                     bool) {
    const int64_t W = g.W, n_out = g.OH * g.OW;
    const float* end = dx + g.H * W;
    const __m256 quarter = _mm256_set1_ps(0.25f);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        float* r0 = dx + 2 * oh * W;
        for (int64_t ow = (g.OW - 1) / 8 * 8; ow >= 0; ow -= 8) {
            const int64_t r = std::min<int64_t>(8, g.OW - ow), o = oh * g.OW + ow;
            const __m256 d = o + 8 <= n_out ? _mm256_loadu_ps(dy + o) : _mm256_maskload_ps(dy + o, lanes8(r));
            const __m256 v = _mm256_add_ps(_mm256_setzero_ps(), _mm256_mul_ps(d, quarter));
            store_interleaved(r0 + 2 * ow, end, r, v, v);
            store_interleaved(r0 + W + 2 * ow, end, r, v, v);
        }
    }
    block2_zero_rest(dx, g);
}
#endif

using AvgBackwardPlane = void (*)(const float*, float*, const PoolGeom&, bool);

AvgBackwardPlane pick_avg_backward(const PoolGeom& g) {
#ifdef STRIATE_X86_KERNELS
    const bool block2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&
                        g.OH == g.H / 2 && g.OW == g.W / 2;
    // Not pool_isa: the AVX-512 kernel is the faster one here on any width
    // (64x64x14x14: 0.077 against 0.10 ms).
    if (block2 && active_isa() == Isa::avx512) return avg_plane_backward_block2_avx512;
    if (block2 && active_isa() == Isa::avx2) return avg_plane_backward_block2_avx2;
#endif
    return avg_plane_backward;
}

using AvgForwardPlane = void (*)(const float*, float*, const PoolGeom&, bool);

AvgForwardPlane pick_avg_forward(const PoolGeom& g) {
#ifdef STRIATE_X86_KERNELS
    const bool s2 = g.kh == g.kw && (g.kh == 2 || g.kh == 3) && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0;
    if (s2 && pool_isa(g) == Isa::avx512)
        return g.kh == 2 ? avg_plane_forward_s2_avx512<2> : avg_plane_forward_s2_avx512<3>;
    if (s2 && pool_isa(g) == Isa::avx2)
        return g.kh == 2 ? avg_plane_forward_s2_avx2<2> : avg_plane_forward_s2_avx2<3>;
#endif
    return avg_plane_forward;
}


// ---------------------------------------------------------------------------
// Power-average pooling: padding 0, so the count_include_pad divisor is the
// window clipped to the input, exactly as torch's avg_pool2d of x**p gives.

void lp_plane_forward(const float* x, float* y, double p, const PoolGeom& g) {
    const float area = static_cast<float>(g.kh * g.kw);
    const double inv_p = 1.0 / p;
    for_each_avg_window(g, true, [&](int64_t o, int64_t h0, int64_t h1, int64_t w0, int64_t w1, int64_t div) {
        float sum = 0.f;
        for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) sum += pow_exact(x[ih * g.W + iw], p);
        const float mean = sum / static_cast<float>(div);
        y[o] = pow_exact(mean * area, inv_p);
    });
}

void lp_plane_backward(const float* dy, const float* x, const float* y, float* dx, double p,
                       const PoolGeom& g) {
    std::memset(dx, 0, static_cast<size_t>(g.H * g.W) * sizeof(float));
    const double area = static_cast<double>(g.kh * g.kw);
    for_each_avg_window(g, true, [&](int64_t o, int64_t h0, int64_t h1, int64_t w0, int64_t w1, int64_t div) {
        if (y[o] == 0.f) return;
        const double scale = area / static_cast<double>(div);
        const float d = static_cast<float>(static_cast<double>(dy[o]) *
                                           static_cast<double>(pow_exact(y[o], 1.0 - p)) * scale);
        for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) dx[ih * g.W + iw] += d * pow_exact(x[ih * g.W + iw], p - 1.0);
    });
}

// ---------------------------------------------------------------------------
// Adaptive average pooling.

inline int64_t adaptive_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
inline int64_t adaptive_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

void adaptive_plane_forward(const float* x, float* y, const PoolGeom& g) {
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
            float sum = 0.f;
            for (int64_t ih = h0; ih < h1; ++ih)
                for (int64_t iw = w0; iw < w1; ++iw) sum += x[ih * g.W + iw];
            y[oh * g.OW + ow] = sum / static_cast<float>(h1 - h0) / static_cast<float>(w1 - w0);
        }
    }
}

void adaptive_plane_backward(const float* dy, float* dx, const PoolGeom& g) {
    std::memset(dx, 0, static_cast<size_t>(g.H * g.W) * sizeof(float));
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
            const float d = dy[oh * g.OW + ow] / static_cast<float>(h1 - h0) / static_cast<float>(w1 - w0);
            for (int64_t ih = h0; ih < h1; ++ih)
                for (int64_t iw = w0; iw < w1; ++iw) dx[ih * g.W + iw] += d;
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points: one plane per work item.

namespace {
// f(p) for every plane p, on about one thread per 16K elements touched, so
// small calls (one image, a few channels) skip the parallel region. The split
// never changes results: planes are independent.
template <class F>
void for_each_plane(const PoolGeom& g, F&& f) {
    const int64_t work = g.planes * (g.H * g.W + g.OH * g.OW);
    const int64_t threads = std::min<int64_t>(std::max<int64_t>(1, work / 16384), get_num_threads());
    parallel_for(g.planes, std::forward<F>(f), static_cast<int>(threads));
}
}  // namespace

void max_pool2d_forward(const float* x, float* y, int64_t* indices, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    const MaxForwardPlane plane = pick_max_forward(g);
    for_each_plane(g, [&](int64_t p) { plane(x + p * in_sz, y + p * out_sz, indices + p * out_sz, g); });
}

void max_pool2d_backward(const float* dy, const int64_t* indices, float* dx, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    const MaxBackwardBlock block2 = pick_max_backward_block2(g);
    for_each_plane(g, [&](int64_t p) {
        const float* pdy = dy + p * out_sz;
        const int64_t* pind = indices + p * out_sz;
        float* pdx = dx + p * in_sz;
        if (block2 && block2(pdy, pind, pdx, g)) {
            block2_zero_rest(pdx, g);
        } else {
            max_plane_backward_generic(pdy, pind, pdx, g, p);
        }
    });
}

void avg_pool2d_forward(const float* x, float* y, const PoolGeom& g, bool count_include_pad) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    const AvgForwardPlane plane = pick_avg_forward(g);
    for_each_plane(g, [&](int64_t p) { plane(x + p * in_sz, y + p * out_sz, g, count_include_pad); });
}

void avg_pool2d_backward(const float* dy, float* dx, const PoolGeom& g, bool count_include_pad) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    const AvgBackwardPlane plane = pick_avg_backward(g);
    for_each_plane(g, [&](int64_t p) { plane(dy + p * out_sz, dx + p * in_sz, g, count_include_pad); });
}

void lp_pool2d_forward(const float* x, float* y, double p, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    for_each_plane(g, [&](int64_t q) { lp_plane_forward(x + q * in_sz, y + q * out_sz, p, g); });
}

void lp_pool2d_backward(const float* dy, const float* x, const float* y, float* dx, double p,
                        const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    for_each_plane(g, [&](int64_t q) {
        lp_plane_backward(dy + q * out_sz, x + q * in_sz, y + q * out_sz, dx + q * in_sz, p, g);
    });
}

void adaptive_avg_pool2d_forward(const float* x, float* y, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    for_each_plane(g, [&](int64_t p) { adaptive_plane_forward(x + p * in_sz, y + p * out_sz, g); });
}

void adaptive_avg_pool2d_backward(const float* dy, float* dx, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    for_each_plane(g, [&](int64_t p) { adaptive_plane_backward(dy + p * out_sz, dx + p * in_sz, g); });
}

}  // namespace striate
