// conv_dw_kvec.cpp: the stride-1 weight gradient for few input and 12 to 16
// output channels per group (on AVX2 up to 32 for at most 3 inputs and width 5), kernel
// width 3 or 5 (LeNet C3, the first layer of the TF-tutorial CNN), with vectors
// over the output channels and x broadcast, on the kernels of the active ISA
// path.
//
// Not here: other dw algorithms (conv_dw_direct.cpp, conv_dw_flat.cpp,
// conv_gemm.cpp), the batch-chunk loop that calls it (conv2d.cpp).
#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "conv_internal.hpp"
#include "cpu.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {

namespace {

// ---- channel-vector dw, stride 1, kernel width 3 or 5 -------------------------
//
// For 12 or more output channels per group the vector can run over W output
// channels (one or two vectors) instead of positions (no idle lanes for small outputs such as LeNet
// C3's 10x10): with dyT (P, ldk) the transposed dy of one image,
// part[r][k] += sum_p dyT[p][k] * xp[off[r] + oh*Wp + ow] for a tile of NI
// kernel rows (c, i) times all KW taps j (dilation 1 along the width, so the
// taps of one row are consecutive floats), accumulated over the positions of
// every image of a batch chunk in order. dw partials are (groups, R, ldk).

// Channel-vector dw for this geometry? Stride 1, kernel width 3 or 5 without
// width dilation, fewer than 16 input channels per group, and 12 to 16 output
// channels per group (one vector, at least 12 lanes busy; with two or more
// vectors the broadcasts repeat and the GEMM wins: 3->32 k3 on 32x32 measured
// 0.78x). On AVX2, whose GEMM does worse on these thin products, also up to
// 32 output channels for at most 3 input channels with 5 taps per row (Zen 4
// forced to AVX2, 2 threads, batch 64, GEMM time / kvec time: 1->32 k5 on
// 28x28 1.16-1.41x, 2->32 k5 1.53x, 3->32 k5 on 32x32 1.21x, 3->24 k5 1.45x;
// not with 3 taps: 3->32 k3 0.83-1.14x, 1->32 k3 0.63x; nor past 32: 3->64
// k3 0.74x, 1->64 k5 0.93x; AVX-512 1->32 k5 0.89x).
bool kvec_dw_ok(const Conv2dShape& s, const ConvKit* kit) {
    const int64_t Kg = s.K / s.groups;
    return kit && s.sh == 1 && s.sw == 1 && s.dw == 1 && (s.kw == 3 || s.kw == 5) && s.C / s.groups < 16 && Kg >= 12 &&
           (Kg <= 16 || (kit->isa == Isa::avx2 && s.kw == 5 && s.C / s.groups <= 3 && Kg <= 32));
}

// dw partial of one batch chunk [n0, n1): part (groups, R, ldk), through the kit's kvec dw tiles.
void kvec_dw_chunk(const ConvKit& kit, const Conv2dShape& s, const DirectGeom& d, const float* dy, const float* x, int64_t n0, int64_t n1,
                   int64_t ldk, float* part) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, R = d.R(), P = s.OH * s.OW;
    const int64_t nimg = n1 - n0, xstride = d.padded_size(), dystride = P * ldk;
    float* xp = tl_pad.get(nimg * xstride);
    float* dyT = tl_dyT.get(nimg * dystride);
    const int64_t npairs = Cg * s.kh, nib = kit.kdw_ni[s.kw == 5];
    const auto& table = kit.kdw[s.kw == 5];
    std::vector<int64_t> pair_off(static_cast<size_t>(npairs));
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t i = 0; i < s.kh; ++i) pair_off[static_cast<size_t>(c * s.kh + i)] = c * d.Hp * d.Wp + i * s.dh * d.Wp;
    for (int64_t g = 0; g < s.groups; ++g) {
        for (int64_t n = n0; n < n1; ++n) {
            pad_image(d, x + (n * s.C + g * Cg) * s.H * s.W, xp + (n - n0) * xstride);
            transpose_dy(kit, Kg, P, ldk, dy + (n * s.K + g * Kg) * P, dyT + (n - n0) * dystride);
        }
        float* pg = part + g * R * ldk;  // (R, ldk)
        for (int64_t k0 = 0; k0 < ldk; k0 += kit.W)
            for (int64_t a0 = 0; a0 < npairs; a0 += nib) {
                const int64_t na = std::min(nib, npairs - a0);
                table[static_cast<size_t>(na)](xp, xstride, dyT + k0, ldk, dystride, nimg, pair_off.data() + a0, s.OH,
                                               s.OW, d.Wp, pg + a0 * s.kw * ldk + k0);
            }
    }
}

// Partials per chunk are (groups, R, ldk): part[g][r][k].
class DwKvec final : public DwPlan {
   public:
    const char* name() const override { return "kvec"; }
    DwKvec(const ConvKit& kit, const Conv2dShape& s)
        : kit_(kit), s_(s), d_(input_geom(s)), ldk_(round_up(s.K / s.groups, kit.W)) {
        part_size = s.groups * d_.R() * ldk_;
    }
    void chunk(const float* dy, const float* x, int64_t n0, int64_t n1, float* part, int) const override {
        kvec_dw_chunk(kit_, s_, d_, dy, x, n0, n1, ldk_, part);
    }
    // dw[g*Kg + k][r] = sum over chunks, in order, of part[chunk][g][r][k].
    void reduce(const float* parts, int64_t nchunks, float* dw, int threads) const override {
        const int64_t CKK = d_.R(), Kg = s_.K / s_.groups;
        parallel_for(
            s_.K,
            [&](int64_t kk) {
                const auto [g, k] = split_index(kk, Kg);
                float* dst = dw + kk * CKK;
                for (int64_t r = 0; r < CKK; ++r) {
                    const float* src = parts + (g * CKK + r) * ldk_ + k;
                    float t = nchunks > 0 ? src[0] : 0.f;
                    for (int64_t c = 1; c < nchunks; ++c) t += src[c * part_size];
                    dst[r] = t;
                }
            },
            threads);
    }

   private:
    const ConvKit& kit_;
    Conv2dShape s_;
    DirectGeom d_;
    int64_t ldk_;
};

}  // namespace

std::unique_ptr<DwPlan> make_dw_kvec(const Conv2dShape& s, const ConvKit* kit) {
    if (is_pointwise(s) || !kvec_dw_ok(s, kit)) return nullptr;
    return std::make_unique<DwKvec>(*kit, s);
}

}  // namespace conv
}  // namespace striate
