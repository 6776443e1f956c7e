// simd.hpp: the small vector abstraction the convolution micro-kernels are
// written over, with three instantiations: Avx512 (16 lanes, __mmask16),
// Avx2 (8 lanes, AVX2 + FMA, masks as all-ones/all-zeros lanes used through
// maskload/maskstore and blends) and Generic (8 lanes of portable C++).
//
// Every operation is a static always-inline function carrying its own target
// attribute (STRIATE_TARGET_AVX512 / STRIATE_TARGET_AVX2), so a kernel compiled
// with the same attribute inlines them and nothing depends on global -m flags:
// one build runs on any x86-64 CPU, and which instantiation runs is chosen at
// run time from active_isa() (cpu.hpp). Generic compiles everywhere.
//
// The operations, for V in {Avx512, Avx2, Generic}:
//   V::W                      lanes per vector; V::reg, V::mask
//   zero(), set1(f)           all lanes 0 / f
//   load(p), store(p, v)      W floats, unaligned
//   bits(b)                   mask whose lane l is set when bit l of b is
//   prefix(n)                 mask of the lanes l < n (n may exceed W)
//   maskz_load(m, p)          lanes in m from p (others 0; masked lanes never fault)
//   mask_store(p, m, v)       store the lanes in m only
//   fma(a, b, c)              a*b + c, rounded once
//   fma_where(a, b, c, m)     lanes in m: a*b + c; others: c + a*0 (Avx2 and
//                             Generic zero b first, so a non-finite b outside
//                             m never reaches c; c = -0 may become +0 there)
//   add(a, b), mask_add(c, m, a)   a + b; lanes in m: c + a, others c
//   sub(a, b), mul(a, b)      a - b, a * b
//   interleave(a, b, lo, hi)  lo = a0 b0 a1 b1 ... (the first W of the
//                             2W lanes a and b zipped), hi = the last W
//   deinterleave(a, b, ev, od)  the inverse: of the 2W lanes a0..a(W-1)
//                             b0..b(W-1), ev = the even ones, od = the odd
//   shift_in(a, f)            a1 a2 ... a(W-1) f: the lanes moved down by one,
//                             f entering at the top
//   hsum(v)                   sum of the lanes by a fixed tree: for 16 lanes the
//                             halves (l + l+8) first, then the 8-lane tree
//                             ((l + l+4), then (0+2) + (1+3))
//   transpose(r)              r[W] rows -> r[j] holds column j
//   keep(v)                   keeps v in a register (an empty asm barrier), so
//                             the compiler does not fold one load into many FMAs
//
// Not here: the kernels (conv_tiles.hpp), CPU detection (cpu.hpp).
#pragma once

#include <cstdint>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define STRIATE_SIMD_X86 1
#include <immintrin.h>
#else
#define STRIATE_SIMD_X86 0
#endif

#define STRIATE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define STRIATE_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define STRIATE_SIMD_INLINE inline __attribute__((always_inline))

namespace striate {
namespace simd {

// ---- portable fallback: 8 lanes in an array ---------------------------------
struct Generic {
    static constexpr int W = 8;
    struct reg {
        float v[W];
    };
    using mask = uint32_t;
    static STRIATE_SIMD_INLINE reg zero() { return set1(0.f); }
    static STRIATE_SIMD_INLINE reg set1(float f) {
        reg r;
        for (int l = 0; l < W; ++l) r.v[l] = f;
        return r;
    }
    static STRIATE_SIMD_INLINE reg load(const float* p) {
        reg r;
        for (int l = 0; l < W; ++l) r.v[l] = p[l];
        return r;
    }
    static STRIATE_SIMD_INLINE void store(float* p, reg a) {
        for (int l = 0; l < W; ++l) p[l] = a.v[l];
    }
    static STRIATE_SIMD_INLINE mask bits(uint32_t b) { return b & 0xFFu; }
    static STRIATE_SIMD_INLINE mask prefix(int64_t n) { return n >= W ? 0xFFu : n <= 0 ? 0u : (1u << n) - 1u; }
    static STRIATE_SIMD_INLINE reg maskz_load(mask m, const float* p) {
        reg r;
        for (int l = 0; l < W; ++l) r.v[l] = (m >> l) & 1u ? p[l] : 0.f;
        return r;
    }
    static STRIATE_SIMD_INLINE void mask_store(float* p, mask m, reg a) {
        for (int l = 0; l < W; ++l)
            if ((m >> l) & 1u) p[l] = a.v[l];
    }
    static STRIATE_SIMD_INLINE reg fma(reg a, reg b, reg c) {
        for (int l = 0; l < W; ++l) c.v[l] = __builtin_fmaf(a.v[l], b.v[l], c.v[l]);
        return c;
    }
    static STRIATE_SIMD_INLINE reg fma_where(reg a, reg b, reg c, mask m) {
        for (int l = 0; l < W; ++l) c.v[l] = __builtin_fmaf(a.v[l], (m >> l) & 1u ? b.v[l] : 0.f, c.v[l]);
        return c;
    }
    static STRIATE_SIMD_INLINE reg add(reg a, reg b) {
        for (int l = 0; l < W; ++l) a.v[l] += b.v[l];
        return a;
    }
    static STRIATE_SIMD_INLINE reg mask_add(reg c, mask m, reg a) {
        for (int l = 0; l < W; ++l)
            if ((m >> l) & 1u) c.v[l] += a.v[l];
        return c;
    }
    static STRIATE_SIMD_INLINE reg sub(reg a, reg b) {
        for (int l = 0; l < W; ++l) a.v[l] -= b.v[l];
        return a;
    }
    static STRIATE_SIMD_INLINE reg mul(reg a, reg b) {
        for (int l = 0; l < W; ++l) a.v[l] *= b.v[l];
        return a;
    }
    static STRIATE_SIMD_INLINE reg shift_in(reg a, float f) {
        for (int l = 0; l + 1 < W; ++l) a.v[l] = a.v[l + 1];
        a.v[W - 1] = f;
        return a;
    }
    static STRIATE_SIMD_INLINE void deinterleave(reg a, reg b, reg& ev, reg& od) {
        for (int l = 0; l < W / 2; ++l) {
            ev.v[l] = a.v[2 * l];
            od.v[l] = a.v[2 * l + 1];
            ev.v[W / 2 + l] = b.v[2 * l];
            od.v[W / 2 + l] = b.v[2 * l + 1];
        }
    }
    static STRIATE_SIMD_INLINE void interleave(reg a, reg b, reg& lo, reg& hi) {
        for (int l = 0; l < W / 2; ++l) {
            lo.v[2 * l] = a.v[l];
            lo.v[2 * l + 1] = b.v[l];
            hi.v[2 * l] = a.v[W / 2 + l];
            hi.v[2 * l + 1] = b.v[W / 2 + l];
        }
    }
    static STRIATE_SIMD_INLINE float hsum(reg a) {
        // The same tree as Avx2::hsum: halves, then quarters, then pairs.
        float h[4], q[2];
        for (int l = 0; l < 4; ++l) h[l] = a.v[l] + a.v[l + 4];
        for (int l = 0; l < 2; ++l) q[l] = h[l] + h[l + 2];
        return q[0] + q[1];
    }
    static STRIATE_SIMD_INLINE void transpose(reg (&r)[W]) {
        for (int i = 0; i < W; ++i)
            for (int j = i + 1; j < W; ++j) {
                const float t = r[i].v[j];
                r[i].v[j] = r[j].v[i];
                r[j].v[i] = t;
            }
    }
    static STRIATE_SIMD_INLINE void keep(reg&) {}
};

#if STRIATE_SIMD_X86

// ---- AVX2 + FMA: 8 lanes, 16 registers ---------------------------------------
struct Avx2 {
    static constexpr int W = 8;
    using reg = __m256;
    using mask = __m256i;
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg zero() { return _mm256_setzero_ps(); }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg set1(float f) { return _mm256_set1_ps(f); }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg load(const float* p) { return _mm256_loadu_ps(p); }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE mask bits(uint32_t b) {
        const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(b)), lane), lane);
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE mask prefix(int64_t n) {
        const int k = n >= W ? W : n <= 0 ? 0 : static_cast<int>(n);
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg maskz_load(mask m, const float* p) {
        return _mm256_maskload_ps(p, m);
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void mask_store(float* p, mask m, reg a) {
        _mm256_maskstore_ps(p, m, a);
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg fma_where(reg a, reg b, reg c, mask m) {
        return _mm256_fmadd_ps(a, _mm256_and_ps(b, _mm256_castsi256_ps(m)), c);
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg mask_add(reg c, mask m, reg a) {
        return _mm256_blendv_ps(c, _mm256_add_ps(c, a), _mm256_castsi256_ps(m));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE reg shift_in(reg a, float f) {
        const __m256 down = _mm256_permutevar8x32_ps(a, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 0));
        return _mm256_blend_ps(down, _mm256_set1_ps(f), 0x80);
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void deinterleave(reg a, reg b, reg& ev, reg& od) {
        // Per 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; then the 64-bit pairs in order 0 2 1 3.
        const __m256 e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xDD);
        ev = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
        od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void interleave(reg a, reg b, reg& lo, reg& hi) {
        const __m256 l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);  // per 128-bit half
        lo = _mm256_permute2f128_ps(l, h, 0x20);
        hi = _mm256_permute2f128_ps(l, h, 0x31);
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE float hsum(reg a) {
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));  // lanes l + l+4
        __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));                                   // (0+2), (1+3)
        return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void transpose(reg (&r)[W]) {
        __m256 t[8];
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        __m256 u[8];
        for (int i = 0; i < 8; i += 4) {
            u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
            u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
            u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        for (int i = 0; i < 4; ++i) {
            r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
            r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
        }
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void keep(reg& a) { __asm__("" : "+x"(a)); }
};

// ---- AVX-512: 16 lanes, 32 registers, mask registers ----------------------------
struct Avx512 {
    static constexpr int W = 16;
    using reg = __m512;
    using mask = __mmask16;
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg zero() { return _mm512_setzero_ps(); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg set1(float f) { return _mm512_set1_ps(f); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg load(const float* p) { return _mm512_loadu_ps(p); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE mask bits(uint32_t b) { return static_cast<__mmask16>(b); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE mask prefix(int64_t n) {
        return n >= W ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg maskz_load(mask m, const float* p) {
        return _mm512_maskz_loadu_ps(m, p);
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void mask_store(float* p, mask m, reg a) {
        _mm512_mask_storeu_ps(p, m, a);
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg fma_where(reg a, reg b, reg c, mask m) {
        return _mm512_mask3_fmadd_ps(a, b, c, m);
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg mask_add(reg c, mask m, reg a) {
        return _mm512_mask_add_ps(c, m, c, a);
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE reg shift_in(reg a, float f) {
        // (set1(f) : a) shifted down by one 32-bit lane
        return _mm512_castsi512_ps(
            _mm512_alignr_epi32(_mm512_castps_si512(_mm512_set1_ps(f)), _mm512_castps_si512(a), 1));
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void deinterleave(reg a, reg b, reg& ev, reg& od) {
        const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        ev = _mm512_permutex2var_ps(a, ie, b);
        od = _mm512_permutex2var_ps(a, io, b);
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void interleave(reg a, reg b, reg& lo, reg& hi) {
        const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        lo = _mm512_permutex2var_ps(a, il, b);
        hi = _mm512_permutex2var_ps(a, ih, b);
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE float hsum(reg a) {
        // Halves (l + l+8), then Avx2::hsum's tree: the sum of two 8-lane halves
        // added first gives the same bits on both paths.
        const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a),
                                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
        const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        const __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
        return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void transpose(reg (&r)[W]) {
        __m512 t[16];
        for (int i = 0; i < 16; i += 2) {  // interleave pairs of rows
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 16; i += 4) {  // pairs of 64-bit elements
            r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
            r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
            r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
            r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        }
        for (int i = 0; i < 4; ++i) {  // 128-bit lanes, twice
            t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
            t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
            t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
            t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
        }
        for (int i = 0; i < 4; ++i) {
            r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
            r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
            r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
            r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
        }
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void keep(reg& a) { __asm__("" : "+v"(a)); }
};

#endif  // STRIATE_SIMD_X86

}  // namespace simd
}  // namespace striate
