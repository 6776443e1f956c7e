// conv_dx_scatter.cpp: the stride-1 input gradient by bands of kernel rows
// on the kernels of the active ISA path, for small outputs where the direct dx would mostly multiply dy's
// zero padding, and for paddings wider than the kernel.
//
// Not here: the direct dx (conv_direct.cpp), strided dx (conv_gemm.cpp).
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

// ---- scatter dx, stride 1 -------------------------------------------------------
//
// The direct dx kernel reads dy zero-padded by the kernel extent; for small
// outputs (LeNet C3: 10x10 dy, 18x18 padded) most of its FMAs multiply those
// zeros. Here dy is flattened along the forward padded width (dyf[k][q],
// q = oh*Wp + ow, zero where ow >= OW, with zeros in front), and the rows
// (c, i) of the reduction are taken one band at a time: the padded dx at
// dxp[off(c, i) + p] receives sum_k sum_j w[k][c][i][j] * dyf[k][p - j*dw]
// for the band positions p. A register tile holds NR channels (their dx
// planes never overlap within a tile) times NV vectors of p (kit.sdx_nr x
// kit.sdx_nv at most, conv_tiles.hpp), sums k and j in
// order, then adds the band into dxp under the mask of positions any tap
// reaches. Each dx element receives its bands in a fixed order (kernel rows i,
// then channels); images are independent, so the result does not depend on
// the thread count. Like the direct kernel, it multiplies the weights by dy's
// zero padding.

}  // namespace

// Scatter dx instead of the direct dx kernel? Stride 1, AVX-512, and fewer
// estimated vector FMAs (scatter computes Cg*kh*kw*Kg per vector of a band),
// or a padding wider than the dilated kernel, which the direct dx cannot take.
bool scatter_dx_better(const Conv2dShape& s, const ConvKit* kit) {
    if (!kit || s.sh != 1 || s.sw != 1) return false;
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw;
    const int64_t Wp = s.W + s.pl + s.pr, qv = ceil_div_nonneg((s.OH - 1) * Wp + s.OW + s.dw * (s.kw - 1), 16);
    const double scatter = double(Cg * khw) * double(qv) * double(Kg);
    // Both costs are counted in 16-lane vectors on every ISA path (the AVX-512
    // kit's tile shapes; only its sizes are read), so every path makes the same
    // choice and, the kernels summing in the same order, gets the same bits.
    return !direct_dx_ok(s, kit) || scatter < direct_dx_cost(*kit_avx512(), s);
}

// dx through the kit's scatter_dx tiles. dy is (N, K, OH, OW), w is (K, Cg, kh, kw), dx is (N, C, H, W).
void backward_dx_scatter(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw, R = Cg * khw;
    const DirectGeom d = input_geom(s);
    const int64_t ext = s.dw * (s.kw - 1);
    const int64_t Q = (s.OH - 1) * d.Wp + s.OW, B = Q + ext;  // dy positions, band positions
    const int64_t W = kit.W, qv = ceil_div_nonneg(B, W), front = round_up(ext, W), ldq = front + qv * W;
    // masks[v] bit l: band position p = W*v + l is reached by some tap j (p - j*dw is a real dy position).
    std::vector<uint16_t> masks(static_cast<size_t>(qv), 0);
    for (int64_t h = 0; h < s.OH; ++h)
        for (int64_t q = h * d.Wp; q < h * d.Wp + s.OW; ++q)
            for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t p = q + j * s.dw;
                masks[static_cast<size_t>(p / W)] |= static_cast<uint16_t>(1u << (p % W));
            }
    const int64_t nvblocks = (qv + kit.sdx_nv - 1) / kit.sdx_nv, vblock = (qv + nvblocks - 1) / nvblocks;
    const int64_t pair = kit.sdx_nr;  // channels per tile, <= kMaxSdxNR
    // wT[g][r][k] = w[g*Kg + k][r].
    float* wT = tl_wpack.get(s.groups * R * Kg);
    parallel_for(
        s.groups * R,
        [&](int64_t gr) {
            const auto [g, r] = split_index(gr, R);
            for (int64_t k = 0; k < Kg; ++k) wT[gr * Kg + k] = w[(g * Kg + k) * R + r];
        },
        pack_threads(s.groups * R * Kg, threads));
    parallel_for(
        s.N,
        [&](int64_t n) {
            float* dxp = tl_pad.get(d.padded_size());
            float* dyf = tl_dyT.get(Kg * ldq + W);  // W floats of slack for the last band vector
            for (int64_t g = 0; g < s.groups; ++g) {
                // dyf[k][front + q]: flattened dy, zeros in front, between rows and behind.
                std::fill(dyf, dyf + Kg * ldq + W, 0.f);
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
                    (Cg + pair - 1) / pair,
                    [&](int64_t cp) {
                    const int64_t c0 = cp * pair;
                    for (int64_t i = 0; i < s.kh; ++i) {
                        const int64_t nr = std::min<int64_t>(pair, Cg - c0);
                        const float* wrow[kMaxSdxNR];
                        float* rowdst[kMaxSdxNR];
                        for (int64_t a = 0; a < nr; ++a) {
                            wrow[a] = wg + ((c0 + a) * s.kh + i) * s.kw * Kg;
                            rowdst[a] = dxp + (c0 + a) * d.Hp * d.Wp + i * s.dh * d.Wp;
                        }
                        for (int64_t v0 = 0; v0 < qv; v0 += vblock) {
                            const int64_t nv = std::min<int64_t>(vblock, qv - v0);
                            float* dst[kMaxSdxNR];
                            for (int64_t a = 0; a < nr; ++a) dst[a] = rowdst[a] + W * v0;
                            kit.sdx[nr][static_cast<size_t>(nv)](dyf + front + W * v0, ldq, Kg, s.kw, s.dw, wrow,
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
