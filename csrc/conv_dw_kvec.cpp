// conv_dw_kvec.cpp: the stride-1 weight gradient for few input and 12 to 16
// output channels per group, kernel width 3 or 5 (LeNet C3), with vectors
// over the output channels and x broadcast (AVX-512).
//
// Not here: other dw algorithms (conv_dw_direct.cpp, conv_dw_flat.cpp,
// conv_gemm.cpp), the batch-chunk loop that calls it (conv2d.cpp).
#include <immintrin.h>

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

// ---- channel-vector dw (AVX-512), stride 1, kernel width 3 or 5 ---------------
//
// For 12 or more output channels per group the vector can run over 16 output
// channels instead of positions (no idle lanes for small outputs such as LeNet
// C3's 10x10): with dyT (P, ldk) the transposed dy of one image,
// part[r][k] += sum_p dyT[p][k] * xp[off[r] + oh*Wp + ow] for a tile of NI
// kernel rows (c, i) times all KW taps j (dilation 1 along the width, so the
// taps of one row are consecutive floats), accumulated over the positions of
// every image of a batch chunk in order. dw partials are (groups, R, ldk).

template <int NI, int KW>
__attribute__((target("avx512f,fma"))) void kvec_dw_tile_avx512(const float* xp, int64_t xstride, const float* dyT,
                                                                 int64_t ldk, int64_t dystride, int64_t nimg,
                                                                 const int64_t* pair_off, int64_t OH, int64_t OW,
                                                                 int64_t Wp, float* dst) {
    __m512 acc[NI][KW];
    for (int a = 0; a < NI; ++a)
        for (int j = 0; j < KW; ++j) acc[a][j] = _mm512_setzero_ps();
    int64_t po[NI];
    for (int a = 0; a < NI; ++a) po[a] = pair_off[a];
    for (int64_t n = 0; n < nimg; ++n) {
        const float* xn = xp + n * xstride;
        const float* dn = dyT + n * dystride;
        for (int64_t oh = 0; oh < OH; ++oh) {
            const float* xrow = xn + oh * Wp;
            const float* drow = dn + oh * OW * ldk;
            for (int64_t ow = 0; ow < OW; ++ow) {
                const __m512 dv = _mm512_loadu_ps(drow + ow * ldk);
                for (int a = 0; a < NI; ++a) {
                    const float* b = xrow + po[a] + ow;
                    for (int j = 0; j < KW; ++j) acc[a][j] = _mm512_fmadd_ps(dv, _mm512_set1_ps(b[j]), acc[a][j]);
                }
            }
        }
    }
    for (int a = 0; a < NI; ++a)
        for (int j = 0; j < KW; ++j) _mm512_storeu_ps(dst + (a * KW + j) * ldk, acc[a][j]);
}

using kvec_dw_fn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, const int64_t*, int64_t,
                            int64_t, int64_t, float*);
constexpr int kKdwNI3 = 8, kKdwNI5 = 5;  // kernel rows per tile: 24 or 25 accumulators
template <int KW, int... As>
constexpr std::array<kvec_dw_fn, kKdwNI3 + 1> kvec_dw_row(std::integer_sequence<int, As...>) {
    return {nullptr, kvec_dw_tile_avx512<As + 1, KW>...};
}
const std::array<kvec_dw_fn, kKdwNI3 + 1> kKdwTiles3 = kvec_dw_row<3>(std::make_integer_sequence<int, kKdwNI3>{});
const std::array<kvec_dw_fn, kKdwNI3 + 1> kKdwTiles5 = [] {
    std::array<kvec_dw_fn, kKdwNI3 + 1> t{};
    const auto row = kvec_dw_row<5>(std::make_integer_sequence<int, kKdwNI5>{});
    for (int a = 0; a <= kKdwNI5; ++a) t[static_cast<size_t>(a)] = row[static_cast<size_t>(a)];
    return t;
}();

// Channel-vector dw for this geometry? Stride 1, kernel width 3 or 5 without
// width dilation, fewer than 16 input channels per group, and 12 to 16 output
// channels per group (one vector, at least 12 lanes busy; with two or more
// vectors the broadcasts repeat and the GEMM wins: 3->32 k3 on 32x32 measured
// 0.78x).
bool kvec_dw_ok(const Conv2dShape& s) {
    const int64_t Kg = s.K / s.groups;
    return s.sh == 1 && s.sw == 1 && s.dw == 1 && (s.kw == 3 || s.kw == 5) && s.C / s.groups < 16 && Kg >= 12 &&
           Kg <= 16 && active_isa() == Isa::avx512;
}

// dw partial of one batch chunk [n0, n1): part (groups, R, ldk), see kvec_dw_tile_avx512.
void kvec_dw_chunk(const Conv2dShape& s, const DirectGeom& d, const float* dy, const float* x, int64_t n0, int64_t n1,
                   int64_t ldk, float* part) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, R = d.R(), P = s.OH * s.OW;
    const int64_t nimg = n1 - n0, xstride = d.padded_size(), dystride = P * ldk;
    float* xp = tl_pad.get(nimg * xstride);
    float* dyT = tl_dyT.get(nimg * dystride);
    const int64_t npairs = Cg * s.kh, nib = s.kw == 3 ? kKdwNI3 : kKdwNI5;
    const auto& table = s.kw == 3 ? kKdwTiles3 : kKdwTiles5;
    std::vector<int64_t> pair_off(static_cast<size_t>(npairs));
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t i = 0; i < s.kh; ++i) pair_off[static_cast<size_t>(c * s.kh + i)] = c * d.Hp * d.Wp + i * s.dh * d.Wp;
    for (int64_t g = 0; g < s.groups; ++g) {
        for (int64_t n = n0; n < n1; ++n) {
            pad_image(d, x + (n * s.C + g * Cg) * s.H * s.W, xp + (n - n0) * xstride);
            transpose_dy(Kg, P, ldk, dy + (n * s.K + g * Kg) * P, dyT + (n - n0) * dystride);
        }
        float* pg = part + g * R * ldk;  // (R, ldk)
        for (int64_t k0 = 0; k0 < ldk; k0 += 16)
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
    explicit DwKvec(const Conv2dShape& s) : s_(s), d_(input_geom(s)), ldk_(round_up(s.K / s.groups, 16)) {
        part_size = s.groups * d_.R() * ldk_;
    }
    void chunk(const float* dy, const float* x, int64_t n0, int64_t n1, float* part, int) const override {
        kvec_dw_chunk(s_, d_, dy, x, n0, n1, ldk_, part);
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
    Conv2dShape s_;
    DirectGeom d_;
    int64_t ldk_;
};

}  // namespace

std::unique_ptr<DwPlan> make_dw_kvec(const Conv2dShape& s) {
    if (is_pointwise(s) || !kvec_dw_ok(s)) return nullptr;
    return std::make_unique<DwKvec>(s);
}

}  // namespace conv
}  // namespace striate
