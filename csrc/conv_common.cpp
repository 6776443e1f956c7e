// conv_common.cpp: the pieces every convolution algorithm shares: the
// per-thread arenas, the kit of the active ISA path, padded-image geometry and
// padding, the fixed-order sum behind db, the channels-last copies built
// from the kit's block transposes, and the choice of dw outer-product tile.
//
// Not here: any algorithm (conv_direct.cpp, conv_dw_*.cpp, conv_dx_scatter.cpp,
// conv_gemm.cpp) or the choice between them (conv2d.cpp).
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
thread_local Arena tl_wino;

const ConvKit* conv_kit() {
    switch (active_isa()) {
        case Isa::avx512:
            return kit_avx512();
        case Isa::avx2:
            return kit_avx2();
        default:
            return nullptr;
    }
}

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
    const int64_t size = d.padded_size(), plane = d.Hp * d.Wp;
    // Without left or right padding a channel's rows are one block. Otherwise
    // zeros over the whole plane, then its rows copied in: one fill a plane
    // instead of two a row (the left and right padding of a small plane are a
    // float or two, and each fill was a call).
    float* p = xp;
    for (int64_t c = 0; c < d.Cin; ++c, p += plane) {
        const float* sc = src + c * d.Hin * d.Win;
        if (d.left == 0 && d.right == 0) {
            std::fill(p, p + d.top * d.Wp, 0.f);
            std::memcpy(p + d.top * d.Wp, sc, static_cast<size_t>(d.Hin * d.Win) * sizeof(float));
            std::fill(p + (d.top + d.Hin) * d.Wp, p + plane, 0.f);
            continue;
        }
        std::fill(p, p + plane, 0.f);
        float* row = p + d.top * d.Wp + d.left;
        for (int64_t h = 0; h < d.Hin; ++h, row += d.Wp)
            std::memcpy(row, sc + h * d.Win, static_cast<size_t>(d.Win) * sizeof(float));
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

// Rows [hp0, hp1) of the zero-padded channels-last copy of x (Cg, H, W): xT
// ((hp1 - hp0)*Wp, ldc); ldc is a multiple of W.
void pad_transpose_rows(const ConvKit& kit, const Conv2dShape& s, int64_t Cg, int64_t Wp, int64_t hp0, int64_t hp1,
                        int64_t ldc, const float* x, float* xT) {
    const int64_t W = kit.W, HW = s.H * s.W, cfull = round_up(Cg, W);
    for (int64_t hp = hp0; hp < hp1; ++hp) {
        float* drow = xT + (hp - hp0) * Wp * ldc;
        const int64_t h = hp - s.pt;
        if (h < 0 || h >= s.H) {
            std::fill(drow, drow + Wp * ldc, 0.f);
            continue;
        }
        std::fill(drow, drow + s.pl * ldc, 0.f);
        std::fill(drow + (s.pl + s.W) * ldc, drow + Wp * ldc, 0.f);
        for (int64_t w0 = 0; w0 < s.W; w0 += W) {
            const int64_t nw = std::min<int64_t>(W, s.W - w0);
            for (int64_t c0 = 0; c0 < Cg; c0 += W)
                kit.transpose(x + c0 * HW + h * s.W + w0, HW, std::min<int64_t>(W, Cg - c0), nw,
                              drow + (s.pl + w0) * ldc + c0, ldc, false);
            if (cfull < ldc)
                for (int64_t w = w0; w < w0 + nw; ++w) std::fill(drow + (s.pl + w) * ldc + cfull, drow + (s.pl + w + 1) * ldc, 0.f);
        }
    }
}

void pad_transpose(const ConvKit& kit, const Conv2dShape& s, int64_t Cg, int64_t Wp, int64_t Hp, int64_t ldc, const float* x, float* xT) {
    pad_transpose_rows(kit, s, Cg, Wp, 0, Hp, ldc, x, xT);
}

// dyT (P, ldk) = transpose of dy (Kg, P); ldk is a multiple of W, columns past Kg zero.
void transpose_dy(const ConvKit& kit, int64_t Kg, int64_t P, int64_t ldk, const float* dy, float* dyT) {
    const int64_t W = kit.W, kfull = round_up(Kg, W);
    for (int64_t p0 = 0; p0 < P; p0 += W) {
        const int64_t np = std::min<int64_t>(W, P - p0);
        for (int64_t k0 = 0; k0 < Kg; k0 += W)
            kit.transpose(dy + k0 * P + p0, P, std::min<int64_t>(W, Kg - k0), np, dyT + p0 * ldk + k0, ldk, false);
        if (kfull < ldk)
            for (int64_t p = p0; p < p0 + np; ++p) std::fill(dyT + p * ldk + kfull, dyT + (p + 1) * ldk, 0.f);
    }
}

const ConvKit::DwVariant& choose_dw_variant(const ConvKit& kit, int64_t Cg, int64_t Kg) {
    const ConvKit::DwVariant* best = &kit.dw[0];
    double best_work = -1;
    for (const ConvKit::DwVariant& v : kit.dw) {
        if (v.mv == 0) break;
        // Padded FMAs, weighted lightly by the loads each tile step issues per FMA
        // (the tiles are FMA-bound: 64->64 on 7x7 and 16x16 ran 4-6% faster with
        // the unpadded 2 x 8 tile than with 4 x 6 and its 66 padded channels).
        // Fewer than 10 accumulators cannot hide the FMA latency (4 cycles on 2
        // pipes): on AVX2, 32->32 ran at half the speed with the 4 x 2 tile than
        // with 2 x 6 and its padded channels.
        const int acc = v.mv * v.nr;
        const double work = double(round_up(Cg, kit.W * v.mv) * round_up(Kg, v.nr)) *
                            (1.0 + 0.1 * double(v.mv + v.nr) / double(acc)) * (acc < 10 ? 1.5 : 1.0);
        if (best_work < 0 || work < best_work) {
            best = &v;
            best_work = work;
        }
    }
    return *best;
}

}  // namespace conv
}  // namespace striate
