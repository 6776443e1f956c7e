// conv_dx_scatter.cpp: the stride-1 input gradient by bands of kernel rows
// (AVX-512), for small outputs where the direct dx would mostly multiply dy's
// zero padding, and for paddings wider than the kernel.
//
// Not here: the direct dx (conv_direct.cpp), strided dx (conv_gemm.cpp).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "conv_internal.hpp"
#include "cpu.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {

namespace {

// ---- scatter dx (AVX-512), stride 1 -------------------------------------------
//
// The direct dx kernel reads dy zero-padded by the kernel extent; for small
// outputs (LeNet C3: 10x10 dy, 18x18 padded) most of its FMAs multiply those
// zeros. Here dy is flattened along the forward padded width (dyf[k][q],
// q = oh*Wp + ow, zero where ow >= OW, with zeros in front), and the rows
// (c, i) of the reduction are taken one band at a time: the padded dx at
// dxp[off(c, i) + p] receives sum_k sum_j w[k][c][i][j] * dyf[k][p - j*dw]
// for the band positions p. A register tile holds NR channels (their dx
// planes never overlap within a tile) times NV vectors of p, sums k and j in
// order, then adds the band into dxp under the mask of positions any tap
// reaches. Each dx element receives its bands in a fixed order (kernel rows i,
// then channels); images are independent, so the result does not depend on
// the thread count. Like the direct kernel, it multiplies the weights by dy's
// zero padding.

template <int NR, int NV>
__attribute__((target("avx512f,fma"))) void scatter_dx_tile_avx512(const float* dyf, int64_t ldq, int64_t Kg,
                                                                    int64_t kw, int64_t dil, const float* const* wrow,
                                                                    float* const* dst, const uint16_t* masks) {
    __m512 acc[NR][NV];
    for (int a = 0; a < NR; ++a)
        for (int v = 0; v < NV; ++v) acc[a][v] = _mm512_setzero_ps();
    const float* wr[NR];
    for (int a = 0; a < NR; ++a) wr[a] = wrow[a];
    for (int64_t k = 0; k < Kg; ++k) {
        for (int64_t j = 0; j < kw; ++j) {
            const float* src = dyf + k * ldq - j * dil;
            __m512 dv[NV];
            for (int v = 0; v < NV; ++v) {
                dv[v] = _mm512_loadu_ps(src + 16 * v);
                // Keep the vector in a register: folded into each of the NR FMAs it would be
                // loaded NR times, and full-width loads, not FMAs, would set the pace.
                __asm__("" : "+v"(dv[v]));
            }
            for (int a = 0; a < NR; ++a) {
                const __m512 wv = _mm512_set1_ps(wr[a][j * Kg + k]);
                for (int v = 0; v < NV; ++v) acc[a][v] = _mm512_fmadd_ps(wv, dv[v], acc[a][v]);
            }
        }
    }
    for (int a = 0; a < NR; ++a)
        for (int v = 0; v < NV; ++v) {
            float* p = dst[a] + 16 * v;
            const __m512 old = _mm512_loadu_ps(p);
            _mm512_storeu_ps(p, _mm512_mask_add_ps(old, static_cast<__mmask16>(masks[v]), old, acc[a][v]));
        }
}

constexpr int kSdxNR = 2, kSdxNV = 9;  // 18 accumulators + 9 dy vectors + 1 weight in registers
using scatter_dx_fn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, const float* const*, float* const*,
                               const uint16_t*);
template <int NR, int... Vs>
constexpr std::array<scatter_dx_fn, kSdxNV + 1> scatter_dx_row(std::integer_sequence<int, Vs...>) {
    return {nullptr, scatter_dx_tile_avx512<NR, Vs + 1>...};
}
const std::array<scatter_dx_fn, kSdxNV + 1> kSdxTiles[kSdxNR + 1] = {
    {},
    scatter_dx_row<1>(std::make_integer_sequence<int, kSdxNV>{}),
    scatter_dx_row<2>(std::make_integer_sequence<int, kSdxNV>{}),
};

}  // namespace

// Scatter dx instead of the direct dx kernel? Stride 1, AVX-512, and fewer
// estimated vector FMAs (scatter computes Cg*kh*kw*Kg per vector of a band),
// or a padding wider than the dilated kernel, which the direct dx cannot take.
bool scatter_dx_better(const Conv2dShape& s) {
    if (s.sh != 1 || s.sw != 1 || active_isa() != Isa::avx512) return false;
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw;
    const int64_t Wp = s.W + s.pl + s.pr, qv = ((s.OH - 1) * Wp + s.OW + s.dw * (s.kw - 1) + 15) / 16;
    const double scatter = double(Cg * khw) * double(qv) * double(Kg);
    return !direct_dx_ok(s) || scatter < direct_dx_cost(s);
}

// dx through scatter_dx_tile_avx512. dy is (N, K, OH, OW), w is (K, Cg, kh, kw), dx is (N, C, H, W).
void backward_dx_scatter(const Conv2dShape& s, const float* dy, const float* w, float* dx, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw, R = Cg * khw;
    const DirectGeom d = input_geom(s);
    const int64_t ext = s.dw * (s.kw - 1);
    const int64_t Q = (s.OH - 1) * d.Wp + s.OW, B = Q + ext;  // dy positions, band positions
    const int64_t qv = (B + 15) / 16, front = (ext + 15) / 16 * 16, ldq = front + qv * 16;
    // masks[v] bit l: band position p = 16*v + l is reached by some tap j (p - j*dw is a real dy position).
    std::vector<uint16_t> masks(static_cast<size_t>(qv), 0);
    for (int64_t h = 0; h < s.OH; ++h)
        for (int64_t q = h * d.Wp; q < h * d.Wp + s.OW; ++q)
            for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t p = q + j * s.dw;
                masks[static_cast<size_t>(p >> 4)] |= static_cast<uint16_t>(1u << (p & 15));
            }
    const int64_t nvblocks = (qv + kSdxNV - 1) / kSdxNV, vblock = (qv + nvblocks - 1) / nvblocks;
    // wT[g][r][k] = w[g*Kg + k][r].
    float* wT = tl_wpack.get(s.groups * R * Kg);
    parallel_for(
        s.groups * R,
        [&](int64_t gr) {
            const auto [g, r] = split_index(gr, R);
            for (int64_t k = 0; k < Kg; ++k) wT[gr * Kg + k] = w[(g * Kg + k) * R + r];
        },
        threads);
    parallel_for(
        s.N,
        [&](int64_t n) {
            float* dxp = tl_pad.get(d.padded_size());
            float* dyf = tl_dyT.get(Kg * ldq + 16);  // 16 floats of slack for the last band vector
            for (int64_t g = 0; g < s.groups; ++g) {
                // dyf[k][front + q]: flattened dy, zeros in front, between rows and behind.
                std::fill(dyf, dyf + Kg * ldq + 16, 0.f);
                const float* dyg = dy + (n * s.K + g * Kg) * s.OH * s.OW;
                for (int64_t k = 0; k < Kg; ++k)
                    for (int64_t h = 0; h < s.OH; ++h)
                        std::memcpy(dyf + k * ldq + front + h * d.Wp, dyg + (k * s.OH + h) * s.OW,
                                    static_cast<size_t>(s.OW) * sizeof(float));
                std::fill(dxp, dxp + d.padded_size(), 0.f);
                const float* wg = wT + g * R * Kg;
                // Channel pairs own disjoint dx planes: spread over the threads when the
                // images alone cannot use them, each plane still receiving its bands in order i.
                parallel_for(
                    (Cg + kSdxNR - 1) / kSdxNR,
                    [&](int64_t cp) {
                    const int64_t c0 = cp * kSdxNR;
                    for (int64_t i = 0; i < s.kh; ++i) {
                        const int64_t nr = std::min<int64_t>(kSdxNR, Cg - c0);
                        const float* wrow[kSdxNR];
                        float* rowdst[kSdxNR];
                        for (int64_t a = 0; a < nr; ++a) {
                            wrow[a] = wg + ((c0 + a) * s.kh + i) * s.kw * Kg;
                            rowdst[a] = dxp + (c0 + a) * d.Hp * d.Wp + i * s.dh * d.Wp;
                        }
                        for (int64_t v0 = 0; v0 < qv; v0 += vblock) {
                            const int64_t nv = std::min<int64_t>(vblock, qv - v0);
                            float* dst[kSdxNR];
                            for (int64_t a = 0; a < nr; ++a) dst[a] = rowdst[a] + 16 * v0;
                            kSdxTiles[nr][static_cast<size_t>(nv)](dyf + front + 16 * v0, ldq, Kg, s.kw, s.dw, wrow,
                                                                   dst, masks.data() + v0);
                        }
                    }
                    },
                    threads);
                float* dxg = dx + (n * s.C + g * Cg) * s.H * s.W;
                for (int64_t c = 0; c < Cg; ++c)
                    for (int64_t h = 0; h < s.H; ++h)
                        std::memcpy(dxg + (c * s.H + h) * s.W, dxp + c * d.Hp * d.Wp + (h + s.pt) * d.Wp + s.pl,
                                    static_cast<size_t>(s.W) * sizeof(float));
            }
        },
        threads);
}

}  // namespace conv
}  // namespace striate
