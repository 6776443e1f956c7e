// conv_gemm.cpp: convolution as im2col + SGEMM, the path every shape and
// every CPU can take (and the only one without a specialised kernel: strided
// or pointwise shapes, few input and many output channels, the generic ISA).
// Per image n and group g (Kg = K/groups, Cg = C/groups, CKK = Cg*kh*kw,
// P = OH*OW):
//     forward   y[n,g] (Kg x P)   = w[g] (Kg x CKK) . cols (CKK x P)
//     backward  dcols (CKK x P)   = w[g]^T . dy[n,g];  dx[n,g] = col2im(dcols)
//               dw[g] (Kg x CKK)  = sum_n dy[n,g] . cols^T
// A 1x1 kernel with stride 1 and no padding uses x (and dx) as cols directly.
//
// Not here: the GEMM itself (gemm.cpp), the choice of path (conv2d.cpp).
#include <algorithm>
#include <memory>
#include <vector>

#include "conv_internal.hpp"
#include "gemm.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {

namespace {

// Output columns ow whose input column iw = ow*sw - pl + j*dw lies inside [0, W):
// exactly those in [lo, hi).
inline void valid_cols(const Conv2dShape& s, int64_t j, int64_t* lo, int64_t* hi) {
    const int64_t off = j * s.dw - s.pl;  // iw = ow*sw + off
    int64_t l = ceil_div_nonneg(-off, s.sw);
    int64_t h = (s.W - 1 - off) < 0 ? 0 : (s.W - 1 - off) / s.sw + 1;
    l = std::min(l, s.OW);
    h = std::min(std::max(h, l), s.OW);
    *lo = l;
    *hi = h;
}

// dx += col2im(dcols), the adjoint of im2col, summed in a fixed order.
// dcols is (Cg*kh*kw, OH*OW), dx is (Cg, H, W) and already initialised.
void col2im_add(const Conv2dShape& s, int64_t Cg, const float* dcols, float* dx) {
    const int64_t P = s.OH * s.OW;
    for (int64_t c = 0; c < Cg; ++c) {
        float* dxc = dx + c * s.H * s.W;
        for (int64_t i = 0; i < s.kh; ++i) {
            for (int64_t j = 0; j < s.kw; ++j) {
                const float* row = dcols + ((c * s.kh + i) * s.kw + j) * P;
                int64_t lo, hi;
                valid_cols(s, j, &lo, &hi);
                const int64_t off = j * s.dw - s.pl;
                for (int64_t oh = 0; oh < s.OH; ++oh) {
                    const int64_t ih = oh * s.sh - s.pt + i * s.dh;
                    if (ih < 0 || ih >= s.H) continue;
                    const float* r = row + oh * s.OW;
                    float* xr = dxc + ih * s.W + off;
                    if (s.sw == 1) {
                        for (int64_t ow = lo; ow < hi; ++ow) xr[ow] += r[ow];
                    } else {
                        for (int64_t ow = lo; ow < hi; ++ow) xr[ow * s.sw] += r[ow];
                    }
                }
            }
        }
    }
}

// cols (Cg*kh*kw, OH*OW) from the zero-padded image xp (pad_image with d):
// row r = (c, i, j) holds xp[off[r] + oh*sh*Wp + ow*sw] for every (oh, ow).
void im2col_padded(const Conv2dShape& s, const DirectGeom& d, const int64_t* off, const float* xp, float* cols) {
    const int64_t P = s.OH * s.OW, R = d.R();
    for (int64_t r = 0; r < R; ++r) {
        const float* src = xp + off[r];
        float* dst = cols + r * P;
        for (int64_t oh = 0; oh < s.OH; ++oh, dst += s.OW) {
            const float* srow = src + oh * s.sh * d.Wp;
            if (s.sw == 1) {
                for (int64_t ow = 0; ow < s.OW; ++ow) dst[ow] = srow[ow];
            } else {
                for (int64_t ow = 0; ow < s.OW; ++ow) dst[ow] = srow[ow * s.sw];
            }
        }
    }
}

// colsT (P, R) = the transpose of im2col: row p holds, for every reduction row
// r = (c, i, j), the pixel of the zero-padded image xp under output position p,
// xp[off[r] + poff[p]]. A position reads runs of kw consecutive floats when the
// kernel is not dilated along the width: on a vector path those are copied as
// whole vectors (kit.gather_runs; colsT has kDirectSlack floats of slack),
// else float by float. Rows are ld() = R rounded up to 16 floats apart, so the
// GEMM's loads of B start on whole cache lines (3 -> 64 7x7 stride 2: 1.16x
// faster on AVX2 than rows R apart); the floats past R are never read.
class ColsT {
   public:
    ColsT(const Conv2dShape& s, const DirectGeom& d, const int64_t* off, const ConvKit* kit)
        : kit_(kit), R_(d.R()), ld_(round_up(d.R(), 16)), len_(s.dw == 1 ? s.kw : 1) {
        const int64_t nq = R_ / len_;
        roff_.resize(static_cast<size_t>(nq));
        for (int64_t q = 0; q < nq; ++q) roff_[static_cast<size_t>(q)] = off[q * len_];
        poff_.resize(static_cast<size_t>(s.OH * s.OW));
        for (int64_t oh = 0; oh < s.OH; ++oh)
            for (int64_t ow = 0; ow < s.OW; ++ow)
                poff_[static_cast<size_t>(oh * s.OW + ow)] = oh * s.sh * d.Wp + ow * s.sw;
        if (len_ < 4) kit_ = nullptr;  // runs too short for whole-vector copies to pay
    }
    int64_t size() const { return static_cast<int64_t>(poff_.size()) * ld_ + kDirectSlack; }
    int64_t ld() const { return ld_; }
    void build(const float* xp, float* colsT) const {
        const int64_t nq = static_cast<int64_t>(roff_.size()), P = static_cast<int64_t>(poff_.size());
        if (kit_) {
            kit_->gather_runs(xp, roff_.data(), nq, len_, poff_.data(), P, colsT, ld_);
            return;
        }
        for (int64_t p = 0; p < P; ++p) {
            const float* sp = xp + poff_[static_cast<size_t>(p)];
            float* d = colsT + p * ld_;
            for (int64_t q = 0; q < nq; ++q, d += len_) {
                const float* sq = sp + roff_[static_cast<size_t>(q)];
                for (int64_t l = 0; l < len_; ++l) d[l] = sq[l];
            }
        }
    }

   private:
    const ConvKit* kit_;
    int64_t R_, ld_, len_;
    std::vector<int64_t> roff_, poff_;
};

// Partials per chunk are (K, Cg*kh*kw): dw of the chunk's images, accumulated
// by the GEMM (beta = 1 after the first image). A strided kernel takes
// dw[g] += dy[n,g] . colsT, whose B the GEMM reads as it lies: the strided
// im2col is a float-by-float gather and its B^T a transposing pack, which
// together cost about as much as the product (Zen 4, 2 threads, 3 -> 64 7x7
// stride 2 on 64x64, 16 images: 1.37x faster on AVX2, 1.40x on AVX-512). With
// stride 1 the im2col rows are plain copies and dw[g] += dy[n,g] . cols^T
// stays faster (3 -> 64 3x3 on 32x32: colsT 0.78x on AVX2, 0.62x on AVX-512),
// as it does, by a few per cent, for 32 or fewer reduction rows (3 -> 32 3x3
// stride 2 on 32x32: 0.96-0.99x). A pointwise kernel reads x itself as cols.
constexpr int64_t kColsTMinRows = 32;

class DwGemm final : public DwPlan {
   public:
    const char* name() const override { return "gemm"; }
    DwGemm(const Conv2dShape& s, const ConvKit* kit)
        : s_(s), d_(input_geom(s)), pointwise_(is_pointwise(s)), off_(static_cast<size_t>(d_.R())) {
        direct_offsets(d_, off_.data());
        if (!pointwise_ && (s.sh > 1 || s.sw > 1) && d_.R() > kColsTMinRows)
            cols_ = std::make_unique<ColsT>(s, d_, off_.data(), kit);
        part_size = s.K * d_.R();
    }
    void chunk(const float* dy, const float* x, int64_t n0, int64_t n1, float* part, int threads) const override {
        const Conv2dShape& s = s_;
        const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, CKK = d_.R(), P = s.OH * s.OW;
        float* cols = pointwise_ ? nullptr : tl_cols.get(cols_ ? cols_->size() : CKK * P);
        float* xp = pointwise_ ? nullptr : tl_pad.get(d_.padded_size());
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t g = 0; g < s.groups; ++g) {
                const float* xg = x + (n * s.C + g * Cg) * s.H * s.W;  // (Cg, H, W)
                const float* dyg = dy + (n * s.K + g * Kg) * P;     // (Kg, P)
                const float beta = n == n0 ? 0.f : 1.f;
                float* pg = part + g * Kg * CKK;
                if (pointwise_) {
                    sgemm(false, true, Kg, CKK, P, 1.f, dyg, P, xg, P, beta, pg, CKK, threads);
                    continue;
                }
                pad_image(d_, xg, xp);
                if (cols_) {
                    cols_->build(xp, cols);
                    sgemm(false, false, Kg, CKK, P, 1.f, dyg, P, cols, cols_->ld(), beta, pg, CKK, threads);
                } else {
                    im2col_padded(s, d_, off_.data(), xp, cols);
                    sgemm(false, true, Kg, CKK, P, 1.f, dyg, P, cols, P, beta, pg, CKK, threads);
                }
            }
    }
    void reduce(const float* parts, int64_t nchunks, float* dw, int threads) const override {
        reduce_chunks(parts, nchunks, part_size, dw, threads);
    }

   private:
    Conv2dShape s_;
    DirectGeom d_;
    bool pointwise_;
    std::vector<int64_t> off_;
    std::unique_ptr<ColsT> cols_;  // strided kernels only
};

}  // namespace

void forward_gemm(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int64_t CKK = Cg * s.kh * s.kw, P = s.OH * s.OW;
    const bool pointwise = is_pointwise(s);
    const DirectGeom d = input_geom(s);
    std::vector<int64_t> off(static_cast<size_t>(CKK));
    direct_offsets(d, off.data());
    parallel_for(
        s.N,
        [&](int64_t n) {
            float* cols = pointwise ? nullptr : tl_cols.get(CKK * P);
            float* xp = pointwise ? nullptr : tl_pad.get(d.padded_size());
            for (int64_t g = 0; g < s.groups; ++g) {
                const float* xg = x + (n * s.C + g * Cg) * s.H * s.W;  // (Cg, H, W)
                const float* wg = w + g * Kg * CKK;                      // (Kg, CKK)
                float* yg = y + (n * s.K + g * Kg) * P;                  // (Kg, P)
                if (!pointwise) {
                    pad_image(d, xg, xp);
                    im2col_padded(s, d, off.data(), xp, cols);
                }
                float beta = 0.f;
                if (b != nullptr) {
                    for (int64_t k = 0; k < Kg; ++k) std::fill(yg + k * P, yg + (k + 1) * P, b[g * Kg + k]);
                    beta = 1.f;
                }
                sgemm(false, false, Kg, P, CKK, 1.f, wg, CKK, pointwise ? xg : cols, P, beta, yg, P, threads);
            }
        },
        threads);
}

void backward_dx_gemm(const Conv2dShape& s, const float* dy, const float* w, float* dx, int64_t n0, int64_t n1,
                      int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int64_t CKK = Cg * s.kh * s.kw, P = s.OH * s.OW;
    const bool pointwise = is_pointwise(s);
    float* dcols = pointwise ? nullptr : tl_dcols.get(CKK * P);
    for (int64_t n = n0; n < n1; ++n)
        for (int64_t g = 0; g < s.groups; ++g) {
            const float* wg = w + g * Kg * CKK;              // (Kg, CKK)
            const float* dyg = dy + (n * s.K + g * Kg) * P;  // (Kg, P)
            float* dxg = dx + (n * s.C + g * Cg) * s.H * s.W;  // (Cg, H, W)
            if (pointwise) {
                sgemm(true, false, CKK, P, Kg, 1.f, wg, CKK, dyg, P, 0.f, dxg, P, threads);
            } else {
                sgemm(true, false, CKK, P, Kg, 1.f, wg, CKK, dyg, P, 0.f, dcols, P, threads);
                std::fill(dxg, dxg + Cg * s.H * s.W, 0.f);
                col2im_add(s, Cg, dcols, dxg);
            }
        }
}

void reduce_chunks(const float* src, int64_t nchunks, int64_t len, float* dst, int threads) {
    // Elements are independent, so split them.
    const int64_t block = 4096;
    parallel_for(
        (len + block - 1) / block,
        [&](int64_t bi) {
            const int64_t i0 = bi * block, i1 = std::min(len, i0 + block);
            if (nchunks == 0) {
                std::fill(dst + i0, dst + i1, 0.f);
                return;
            }
            std::copy(src + i0, src + i1, dst + i0);
            for (int64_t c = 1; c < nchunks; ++c) {
                const float* p = src + c * len;
                for (int64_t i = i0; i < i1; ++i) dst[i] += p[i];
            }
        },
        threads);
}

std::unique_ptr<DwPlan> make_dw_gemm(const Conv2dShape& s, const ConvKit* kit) {
    return std::make_unique<DwGemm>(s, kit);
}

}  // namespace conv
}  // namespace striate
