// conv_dw_direct.cpp: the weight gradient for 16 or more input channels per
// group, any stride, as outer products on channels-last copies of x and dy
// on the kernels of the active ISA path.
//
// Not here: dw for few input channels (conv_dw_kvec.cpp, conv_dw_flat.cpp,
// conv_gemm.cpp), the batch-chunk loop that calls it (conv2d.cpp).
#include <algorithm>
#include <vector>

#include "conv_internal.hpp"
#include "cpu.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {

namespace {

// ---- direct dw, for Cg >= 16 and any stride -----------------------------------
//
// dw[k][c][i][j] = sum_n sum_p dy[n][k][p] * xpad[n][c][src(p) + i*dh*Wp + j*dw]
// with src(p) = oh*sh*Wp + ow*sw. Per image, x is copied into a zero-padded
// channels-last buffer xT (Hp*Wp pixels x ldc channels) and dy into dyP,
// packed per tile of nr output channels (dyP[k / nr][p][k % nr], zero past
// Kg: each tile reads nr consecutive floats per position), so that for each
// kernel tap (i, j) the partial
// part[i][j][k][c] += sum_p dyP[k / nr][p][k % nr] * xT[src(p) + off_ij][c]
// is an outer-product update vectorised over c (loads) with k broadcast, and
// no im2col matrix exists. Positions whose pixel for the tap is padding are
// left out (their terms are zero). The sum over p runs in order, images in chunk order,
// so the result does not depend on the tiling, the thread count or the vector
// width.

using DwVariant = ConvKit::DwVariant;

// Partials per chunk are (groups, kh*kw, kpad, ldc): part[g][i*kw + j][k][c].
class DwDirect final : public DwPlan {
   public:
    const char* name() const override { return "direct"; }
    DwDirect(const ConvKit& kit, const Conv2dShape& s)
        : kit_(kit), s_(s), v_(choose_dw_variant(kit, s.C / s.groups, s.K / s.groups)) {
        Cg_ = s.C / s.groups;
        Kg_ = s.K / s.groups;
        khw_ = s.kh * s.kw;
        ldc_ = round_up(Cg_, kit.W * v_.mv);
        kpad_ = round_up(Kg_, v_.nr);
        Hp_ = s.H + s.pt + s.pb;
        Wp_ = s.W + s.pl + s.pr;
        part_size = s.groups * khw_ * kpad_ * ldc_;
        const int64_t P = s.OH * s.OW;
        // Images per tile call: as many as keep one input-channel block of their
        // xT (Hp*Wp pixels of W*mv floats) within about 24 KB of L1, so small
        // planes (8x8) do not pay the tile's set-up once per few positions.
        const int64_t slice = Hp_ * Wp_ * kit.W * v_.mv * int64_t(sizeof(float));
        ipc_ = std::max<int64_t>(1, std::min<int64_t>(kBatchChunk, 24576 / slice));
        // src_[i*P + p]: the pixel of image i of a call under output position p for tap (0, 0).
        src_.resize(static_cast<size_t>(ipc_ * P));
        for (int64_t i = 0; i < ipc_; ++i)
            for (int64_t oh = 0; oh < s.OH; ++oh)
                for (int64_t ow = 0; ow < s.OW; ++ow)
                    src_[static_cast<size_t>(i * P + oh * s.OW + ow)] = i * Hp_ * Wp_ + oh * s.sh * Wp_ + ow * s.sw;
        // ranges_[ij]: for tap (i, j), the positions whose pixel lies inside the
        // image (not in the zero padding, whose terms are zero), as ranges of p
        // image by image for ipc_ images, ranges_per_image_[ij] per image: one
        // per output row, joined where whole rows are valid. A 5x5 tap with
        // padding 2 on 14x14 planes skips 16% of the positions on average.
        ranges_.resize(static_cast<size_t>(khw_));
        ranges_per_image_.resize(static_cast<size_t>(khw_));
        for (int64_t ij = 0; ij < khw_; ++ij) {
            const int64_t ti = ij / s.kw, tj = ij % s.kw;
            auto inside = [](int64_t v, int64_t lim) { return v >= 0 && v < lim; };
            int64_t ow_lo = s.OW, ow_hi = 0;  // the valid columns: one interval
            for (int64_t ow = 0; ow < s.OW; ++ow)
                if (inside(ow * s.sw + tj * s.dw - s.pl, s.W)) ow_lo = std::min(ow_lo, ow), ow_hi = ow + 1;
            std::vector<int64_t>& r = ranges_[static_cast<size_t>(ij)];
            for (int64_t i = 0; i < ipc_; ++i) {
                const size_t image_start = r.size();
                for (int64_t oh = 0; oh < s.OH && ow_lo < ow_hi; ++oh) {
                    if (!inside(oh * s.sh + ti * s.dh - s.pt, s.H)) continue;
                    const int64_t p0 = i * P + oh * s.OW + ow_lo, p1 = i * P + oh * s.OW + ow_hi;
                    if (r.size() > image_start && r.back() == p0) {
                        r.back() = p1;  // continues the range before it
                    } else {
                        r.push_back(p0);
                        r.push_back(p1);
                    }
                }
                if (i == 0) ranges_per_image_[static_cast<size_t>(ij)] = static_cast<int64_t>(r.size() / 2);
            }
        }
    }

    void chunk(const float* dy, const float* x, int64_t n0, int64_t n1, float* part, int threads) const override {
        const Conv2dShape& s = s_;
        const int64_t P = s.OH * s.OW, cstep = kit_.W * v_.mv, xsize = Hp_ * Wp_ * ldc_;
        float* xT = tl_pad.get(ipc_ * xsize);
        float* dyP = tl_dyT.get(kpad_ * ipc_ * P + kit_.W);
        for (int64_t g = 0; g < s.groups; ++g) {
            float* pg = part + g * khw_ * kpad_ * ldc_;  // (kh*kw, kpad, ldc)
            // Images nb .. nb+m-1 in one pass: each tile runs over their m*P positions
            // in image order, as image-by-image calls would.
            for (int64_t nb = n0; nb < n1; nb += ipc_) {
                const int64_t m = std::min(ipc_, n1 - nb), mP = m * P;
                for (int64_t i = 0; i < m; ++i)
                    pad_transpose(kit_, s, Cg_, Wp_, Hp_, ldc_, x + ((nb + i) * s.C + g * Cg_) * s.H * s.W,
                                  xT + i * xsize);
                pack_dy(dy + (nb * s.K + g * Kg_) * P, s.K * P, m, P, dyP);
                // Taps are independent tiles: spread over the threads when the chunks
                // alone cannot use them (a single chunk), serial inside a chunk task.
                parallel_for(
                    khw_,
                    [&](int64_t ij) {
                        const auto [i, j] = split_index(ij, s.kw);
                        const int64_t off_ij = i * s.dh * Wp_ + j * s.dw;
                        const int64_t* ranges = ranges_[static_cast<size_t>(ij)].data();
                        const int64_t nranges = m * ranges_per_image_[static_cast<size_t>(ij)];  // the first m images
                        // Input-channel blocks outside: one block of xT (one cache line per
                        // pixel) stays in L1 while the packed dy tiles stream past it.
                        for (int64_t c0 = 0; c0 < ldc_; c0 += cstep)
                            for (int64_t k0 = 0; k0 < kpad_; k0 += v_.nr)
                                v_.fn(xT + off_ij * ldc_ + c0, ldc_, src_.data(), ranges, nranges, dyP + k0 * mP,
                                      v_.nr, pg + (ij * kpad_ + k0) * ldc_ + c0, nb == n0);
                    },
                    threads);
            }
        }
    }

    // dw[g*Kg + k][c][i][j] = sum over chunks, in order, of part[chunk][g][i*kw + j][k][c].
    // One task per (group, tap): its (Kg, Cg) block of every chunk is contiguous
    // rows, summed row by row with vector adds, then stored with the tap's stride.
    void reduce(const float* parts, int64_t nchunks, float* dw, int threads) const override {
        const int64_t CKK = Cg_ * khw_;
        parallel_for(
            s_.groups * khw_,
            [&](int64_t gij) {
                const auto [g, ij] = split_index(gij, khw_);
                std::vector<float> t(static_cast<size_t>(Cg_));
                const float* base = parts + gij * kpad_ * ldc_;
                for (int64_t k = 0; k < Kg_; ++k) {
                    float* tr = t.data();
                    const float* src = base + k * ldc_;
                    std::copy(src, src + Cg_, tr);
                    for (int64_t c = 1; c < nchunks; ++c) {
                        const float* sc = src + c * part_size;
                        for (int64_t ch = 0; ch < Cg_; ++ch) tr[ch] += sc[ch];
                    }
                    float* dst = dw + (g * Kg_ + k) * CKK + ij;  // dw[g*Kg + k][ch][ij]
                    for (int64_t ch = 0; ch < Cg_; ++ch) dst[ch * khw_] = tr[ch];
                }
            },
            threads);
    }

   private:
    // dyP[k / nr][i*P + p][k % nr] = dy[i][k][p] for m images of dy (image
    // stride ldi, each (Kg, P)), zero for Kg <= k < kpad; dyP has kit.W floats
    // of slack. Each block of up to W channels x W positions is one W x W
    // transpose into rows nr floats apart, W lanes stored per row: the lanes
    // past the tile's nr run into the next row's first lanes. So the channel
    // sub-blocks of a tile (nr may exceed W) are written last one first, and
    // tiles, images and positions in increasing order: every lane that runs
    // over is overwritten afterwards by the data that belongs there.
    void pack_dy(const float* dy, int64_t ldi, int64_t m, int64_t P, float* dyP) const {
        const int64_t nr = v_.nr, W = kit_.W;
        for (int64_t k0 = 0; k0 < kpad_; k0 += nr)
            for (int64_t i = 0; i < m; ++i)
                for (int64_t p0 = 0; p0 < P; p0 += W)
                    for (int64_t sub = (nr - 1) / W * W; sub >= 0; sub -= W) {
                        const int64_t kb = k0 + sub;
                        const int64_t nrows = std::max<int64_t>(0, std::min({W, nr - sub, Kg_ - kb}));
                        kit_.transpose(dy + i * ldi + std::min(kb, Kg_ - 1) * P + p0, P, nrows,
                                       std::min(W, P - p0), dyP + (k0 * m * P + (i * P + p0) * nr + sub), nr, false);
                    }
    }

    const ConvKit& kit_;
    Conv2dShape s_;
    const DwVariant& v_;
    int64_t Cg_, Kg_, khw_, ldc_, kpad_, Hp_, Wp_, ipc_;
    std::vector<int64_t> src_;
    std::vector<std::vector<int64_t>> ranges_;
    std::vector<int64_t> ranges_per_image_;
};

}  // namespace

std::unique_ptr<DwPlan> make_dw_direct(const Conv2dShape& s, const ConvKit* kit) {
    if (!kit || is_pointwise(s) || s.C / s.groups < 16) return nullptr;
    return std::make_unique<DwDirect>(*kit, s);
}

}  // namespace conv
}  // namespace striate
