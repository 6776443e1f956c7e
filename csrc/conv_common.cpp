// conv_common.cpp: the pieces every convolution algorithm shares: the
// per-thread arenas, padded-image geometry and padding, the fixed-order sum
// behind db, and the AVX-512 block transposes that build channels-last copies.
//
// Not here: any algorithm (conv_direct.cpp, conv_dw_*.cpp, conv_dx_scatter.cpp,
// conv_gemm.cpp) or the choice between them (conv2d.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "conv_internal.hpp"

namespace striate {
namespace conv {

thread_local Arena tl_cols;
thread_local Arena tl_dcols;
thread_local Arena tl_parts;
thread_local Arena tl_pad;
thread_local Arena tl_out;
thread_local Arena tl_wpack;
thread_local Arena tl_dyT;

DirectGeom make_direct_geom(int64_t Cin, int64_t Hin, int64_t Win, int64_t top, int64_t bottom, int64_t left,
                            int64_t right, int64_t kh, int64_t kw, int64_t dh, int64_t dw) {
    DirectGeom d{Cin, Hin, Win, top, bottom, left, right, kh, kw, dh, dw, 0, 0, 0, 0};
    d.Hp = Hin + top + bottom;
    d.Wp = Win + left + right;
    d.Hout = d.Hp - dh * (kh - 1);
    d.Wout = d.Wp - dw * (kw - 1);
    return d;
}

DirectGeom input_geom(const Conv2dShape& s) {
    return make_direct_geom(s.C / s.groups, s.H, s.W, s.pt, s.pb, s.pl, s.pr, s.kh, s.kw, s.dh, s.dw);
}

DirectGeom dx_geom(const Conv2dShape& s) {
    const int64_t eh = s.dh * (s.kh - 1), ew = s.dw * (s.kw - 1);
    return make_direct_geom(s.K / s.groups, s.OH, s.OW, eh - s.pt, eh - s.pb, ew - s.pl, ew - s.pr, s.kh, s.kw, s.dh,
                            s.dw);
}

void direct_offsets(const DirectGeom& d, int64_t* off) {
    for (int64_t c = 0; c < d.Cin; ++c)
        for (int64_t i = 0; i < d.kh; ++i)
            for (int64_t j = 0; j < d.kw; ++j) off[(c * d.kh + i) * d.kw + j] = c * d.Hp * d.Wp + i * d.dh * d.Wp + j * d.dw;
}

void pad_image(const DirectGeom& d, const float* src, float* xp) {
    const int64_t size = d.padded_size();
    float* p = xp;
    for (int64_t c = 0; c < d.Cin; ++c) {
        const float* sc = src + c * d.Hin * d.Win;
        std::fill(p, p + d.top * d.Wp, 0.f);
        p += d.top * d.Wp;
        for (int64_t h = 0; h < d.Hin; ++h) {
            std::fill(p, p + d.left, 0.f);
            std::memcpy(p + d.left, sc + h * d.Win, static_cast<size_t>(d.Win) * sizeof(float));
            std::fill(p + d.left + d.Win, p + d.Wp, 0.f);
            p += d.Wp;
        }
        std::fill(p, p + d.bottom * d.Wp, 0.f);
        p += d.bottom * d.Wp;
    }
    std::fill(p, xp + size, 0.f);
}

float sum_fixed(const float* p, int64_t n) {
    float acc[16] = {0.f};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int l = 0; l < 16; ++l) acc[l] += p[i + l];
    }
    for (int l = 0; i < n; ++i, ++l) acc[l] += p[i];
    float t = 0.f;
    for (int l = 0; l < 16; ++l) t += acc[l];
    return t;
}

__attribute__((target("avx512f"))) void transpose_block16(const float* src, int64_t lds, int64_t nrows, int64_t ncols,
                                                          float* dst, int64_t ldd, bool store_valid_only) {
    const __mmask16 cm = ncols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << ncols) - 1u);
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < nrows ? _mm512_maskz_loadu_ps(cm, src + i * lds) : _mm512_setzero_ps();
    // Stage 1: interleave pairs of rows.
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    // Stage 2: pairs of 64-bit elements.
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    // Stage 3 and 4: 128-bit lanes.
    for (int i = 0; i < 4; ++i) {
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
    // r[j] now holds column j of the block.
    const __mmask16 rm = store_valid_only && nrows < 16 ? __mmask16((1u << nrows) - 1u) : __mmask16(0xFFFF);
    for (int j = 0; j < ncols; ++j) _mm512_mask_storeu_ps(dst + j * ldd, rm, r[j]);
}

// xT (Hp*Wp, ldc) = zero-padded channels-last copy of x (Cg, H, W); ldc is a multiple of 16.
void pad_transpose(const Conv2dShape& s, int64_t Cg, int64_t Wp, int64_t Hp, int64_t ldc, const float* x, float* xT) {
    const int64_t HW = s.H * s.W, cfull = (Cg + 15) / 16 * 16;
    for (int64_t hp = 0; hp < Hp; ++hp) {
        float* drow = xT + hp * Wp * ldc;
        const int64_t h = hp - s.pt;
        if (h < 0 || h >= s.H) {
            std::fill(drow, drow + Wp * ldc, 0.f);
            continue;
        }
        std::fill(drow, drow + s.pl * ldc, 0.f);
        std::fill(drow + (s.pl + s.W) * ldc, drow + Wp * ldc, 0.f);
        for (int64_t w0 = 0; w0 < s.W; w0 += 16) {
            const int64_t nw = std::min<int64_t>(16, s.W - w0);
            for (int64_t c0 = 0; c0 < Cg; c0 += 16)
                transpose_block16(x + c0 * HW + h * s.W + w0, HW, std::min<int64_t>(16, Cg - c0), nw,
                                  drow + (s.pl + w0) * ldc + c0, ldc);
            if (cfull < ldc)
                for (int64_t w = w0; w < w0 + nw; ++w) std::fill(drow + (s.pl + w) * ldc + cfull, drow + (s.pl + w + 1) * ldc, 0.f);
        }
    }
}

// dyT (P, ldk) = transpose of dy (Kg, P); ldk is a multiple of 16, columns past Kg zero.
void transpose_dy(int64_t Kg, int64_t P, int64_t ldk, const float* dy, float* dyT) {
    const int64_t kfull = (Kg + 15) / 16 * 16;
    for (int64_t p0 = 0; p0 < P; p0 += 16) {
        const int64_t np = std::min<int64_t>(16, P - p0);
        for (int64_t k0 = 0; k0 < Kg; k0 += 16)
            transpose_block16(dy + k0 * P + p0, P, std::min<int64_t>(16, Kg - k0), np, dyT + p0 * ldk + k0, ldk);
        if (kfull < ldk)
            for (int64_t p = p0; p < p0 + np; ++p) std::fill(dyT + p * ldk + kfull, dyT + (p + 1) * ldk, 0.f);
    }
}

}  // namespace conv
}  // namespace striate
