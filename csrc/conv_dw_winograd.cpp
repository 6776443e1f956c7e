// conv_dw_winograd.cpp: the weight gradient of 3x3 and 5x5, stride-1,
// dilation-1, ungrouped convolutions through Winograd F(3x3, 2x2) and
// F(5x5, 2x2): the output positions in 2 x 2 tiles, 16 products per (output
// channel, input channel) and tile instead of 36 (3x3), 36 instead of 100
// (5x5). The 3x3 case is described below; the 5x5 one is the same with 6 x 6
// input patches, 36 points, the forward's input transform (conv_tiles.hpp's
// wino5_btdb, points 0, +-1, 2, -1/2 and infinity, which keep the error of
// the corner taps down where +-2 did not) and wino5_dw_grad / wino5_dw_output.
//
// For one tile with 4 x 4 input patch d (zero outside the image, also past
// the padded edge of partial tiles) and 2 x 2 output gradient e (zero past
// OH, OW), the tile's 3 x 3 contribution sum_o e[o] d[o + (i, j)] equals
// G^T ((A e A^T) . (B^T d B)) G, with B^T, G, A^T the matrices of the forward
// F(2x2, 3x3) (conv_winograd.cpp), "." elementwise. G^T . G is linear, so per
// batch chunk
//   M[a][k][c] = sum over tiles t of V[a][t][k] * U[a][t][c],
//   U[a][t] = (B^T d_t B)[a] (input channels), V[a][t] = (A e_t A^T)[a] (output channels),
// for the 16 points a: 16 independent outer-product sums, each run by the
// direct dw's tile kernels (kit.dw) with the transformed tiles as positions
// (the position index is the identity), and the chunk's partial is
// G^T M[.][k][c] G for every (k, c). reduce() adds the partials in chunk order.
//
// Per chunk, the tiles (image, tile row, tile column) are cut into blocks of
// whole images or runs of tile rows (from the shape only). Per block: rows of
// x and dy are copied channels-last (the kit's block transposes), the kit's
// transforms write U and V for the block (fixed sequences of additions and
// subtractions), and the tile kernels add the block's tiles in order into M,
// a per-thread scratch. Every M element is therefore one sum over the chunk's
// tiles in (image, tile row, tile column) order, whatever the blocking, the
// tile shape of the ISA path or the thread count, and the transforms are the
// same operations on both vector paths: AVX2 and AVX-512 give the same bits.
// G^T M G is taken per chunk rather than once after the chunks are summed:
// the partials are then 9 instead of 16 floats per (k, c), and summing the
// 16-point partials took 11% of the time of 128 -> 128 8x8 (batch 64), more
// than the per-chunk transforms now cost.
//
// Not here: the forward and dx Winograd (conv_winograd.cpp), the transforms
// and tile kernels (conv_tiles.hpp), the choice of algorithm and the
// batch-chunk loop that calls chunk() (conv2d.cpp); other kernel sizes,
// strides, dilations or groups.
#include <algorithm>
#include <numeric>
#include <vector>

#include "conv_internal.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {

namespace {

// Tiles per block: U and V of a block (P (ldc + ldk) floats per tile, P = 16
// or 36 points) in about 256 KB, so they stay in L2 while the points' tile kernels read
// them, and at least kMinTiles so the kernels' accumulator set-up is spread
// over enough tiles. (128, 192, 256, 384 and 512 KB ran within the noise of
// each other on the layers of winograd_dw_better; padding the tile rows by a
// cache line against set conflicts ran 10-25% slower: more bytes, no gain.)
constexpr int64_t kBlockBytes = 256 * 1024;
constexpr int64_t kMinTiles = 32, kMaxTiles = 512;

class DwWinograd final : public DwPlan {
   public:
    const char* name() const override { return "winograd"; }

    DwWinograd(const ConvKit& kit, const Conv2dShape& s)
        : kit_(kit), s_(s), v_(choose_dw_variant(kit, s.C, s.K)), R_(s.kh), P_((s.kh + 1) * (s.kh + 1)) {
        ldc_ = round_up(s.C, kit.W * v_.mv);
        kpad_ = round_up(s.K, v_.nr);
        ldk_ = round_up(kpad_, kit.W);
        TH_ = (s.OH + 1) / 2;
        TW_ = (s.OW + 1) / 2;
        Wx_ = 2 * TW_ + R_ - 1;
        part_size = R_ * R_ * s.K * s.C;
        const int64_t per_image = TH_ * TW_;
        const int64_t target =
            std::clamp<int64_t>(kBlockBytes / (P_ * (ldc_ + ldk_) * int64_t(sizeof(float))),
                                kMinTiles, kMaxTiles);
        // 5x5: an image of up to twice the target is still one block rather
        // than two runs of rows (14x14 as 4 + 3 tile rows, 28 and 21 tiles,
        // left the tile kernels too few tiles per call). Side by side, 2
        // threads, batch 64: 32 -> 64 on 14x14 1.05x (AVX-512) and 1.04x
        // (AVX2); 64 -> 64 on 16x16 1.02x and 1.04x. (3x3 measured
        // 0.97-1.04x and is left as it was.)
        const int64_t whole = R_ == 5 ? 2 * target : target;
        if (per_image <= whole) {
            images_per_block_ = std::max<int64_t>(1, std::min<int64_t>(kBatchChunk, target / per_image));
            rows_per_block_ = TH_;
            max_tiles_ = images_per_block_ * per_image;
        } else {
            images_per_block_ = 1;
            rows_per_block_ = std::max<int64_t>(1, std::min(TH_, target / TW_));
            max_tiles_ = rows_per_block_ * TW_;
        }
        // Point strides one cache line past the tile rows, so the points of
        // one tile land in different cache sets.
        us_ = max_tiles_ * ldc_ + 16;
        vs_ = max_tiles_ * ldk_ + 16;
        src_.resize(static_cast<size_t>(max_tiles_));
        std::iota(src_.begin(), src_.end(), int64_t{0});
    }

    void chunk(const float* dy, const float* x, int64_t n0, int64_t n1, float* part, int threads) const override {
        const Conv2dShape& s = s_;
        const int64_t rows_x = 2 * rows_per_block_ + R_ - 1, rows_dy = 2 * rows_per_block_, wd = 2 * TW_;
        float* U = tl_wino.get(P_ * (us_ + vs_));
        float* V = U + P_ * us_;
        float* xr = tl_pad.get(rows_x * Wx_ * ldc_);
        float* er = tl_dyT.get(rows_dy * wd * ldk_);
        float* M = tl_out.get(P_ * kpad_ * ldc_);  // M[a][k][c] at (a * kpad + k) * ldc + c
        const wino_dw_fn input = R_ == 3 ? kit_.wino2_dw_in : kit_.wino5_dw_in;
        const wino_dw_fn grad = R_ == 3 ? kit_.wino2_dw_grad : kit_.wino5_dw_grad;
        bool first = true;
        // One block: images [nb, ne), tile rows [th0, th1) of each.
        auto block = [&](int64_t nb, int64_t ne, int64_t th0, int64_t th1) {
            const int64_t per = (th1 - th0) * TW_;
            for (int64_t n = nb; n < ne; ++n) {
                const int64_t tb = (n - nb) * per;
                pad_transpose_rows(kit_, s, s.C, Wx_, 2 * th0, 2 * th1 + R_ - 1, ldc_, x + n * s.C * s.H * s.W, xr);
                dy_rows(dy + n * s.K * s.OH * s.OW, 2 * th0, 2 * (th1 - th0), er);
                for (int64_t r = 0; r < th1 - th0; ++r) {
                    input(xr + 2 * r * Wx_ * ldc_, Wx_ * ldc_, ldc_, ldc_, TW_, U + (tb + r * TW_) * ldc_, ldc_, us_);
                    grad(er + 2 * r * wd * ldk_, wd * ldk_, ldk_, ldk_, TW_, V + (tb + r * TW_) * ldk_, ldk_, vs_);
                }
            }
            const int64_t nt = (ne - nb) * per, cstep = kit_.W * v_.mv;
            const int64_t all[2] = {0, nt};  // every transformed tile, in order
            // Points are independent sums: spread over the threads when the chunks
            // alone cannot use them (a single chunk), serial inside a chunk task.
            parallel_for(
                P_,
                [&](int64_t a) {
                    const float* Ua = U + a * us_;
                    const float* Va = V + a * vs_;
                    float* Ma = M + a * kpad_ * ldc_;
                    // As in the direct dw: input-channel blocks outside, so one block
                    // of U stays in L1 while the V tiles stream past it.
                    for (int64_t c0 = 0; c0 < ldc_; c0 += cstep)
                        for (int64_t k0 = 0; k0 < kpad_; k0 += v_.nr)
                            v_.fn(Ua + c0, ldc_, src_.data(), all, 1, Va + k0, ldk_, Ma + k0 * ldc_ + c0, first);
                },
                threads);
            first = false;
        };
        if (rows_per_block_ == TH_) {
            for (int64_t nb = n0; nb < n1; nb += images_per_block_) block(nb, std::min(n1, nb + images_per_block_), 0, TH_);
        } else {
            for (int64_t n = n0; n < n1; ++n)
                for (int64_t th0 = 0; th0 < TH_; th0 += rows_per_block_)
                    block(n, n + 1, th0, std::min(TH_, th0 + rows_per_block_));
        }
        finish(M, part, threads);
    }

    // dw[k][c][i][j] = sum over chunks, in order, of part[chunk][i*R + j][k][c]:
    // the sums element by element over contiguous blocks of the partials,
    // then their transpose into dw, output channel by output channel. (Summed
    // per output channel, the reads were C-float pieces K*C floats apart in
    // every chunk: 7-8.5% of the 32 -> 64 5x5 weight gradient at batch 64,
    // against 3-3.5% this way; AVX-512, perf.)
    void reduce(const float* parts, int64_t nchunks, float* dw, int threads) const override {
        const int64_t C = s_.C, K = s_.K, RR = R_ * R_;
        float* t = tl_wpack.get(part_size);  // the calling thread's: free once the chunks are done
        reduce_chunks(parts, nchunks, part_size, t, threads);
        parallel_for(
            K,
            [&](int64_t k) {
                float* dst = dw + k * C * RR;  // C * RR floats: stays in L1 while it is filled
                for (int64_t ij = 0; ij < RR; ++ij) {
                    const float* src = t + (ij * K + k) * C;
                    for (int64_t c = 0; c < C; ++c) dst[c * RR + ij] = src[c];
                }
            },
            threads);
    }

   private:
    // part[i*R + j][k][c] = (G^T M[.][k][c] G)[i][j], by the kit.
    void finish(const float* M, float* part, int threads) const {
        const int64_t C = s_.C, K = s_.K;
        const wino_dw_out_fn out = R_ == 3 ? kit_.wino2_dw_out : kit_.wino5_dw_out;
        parallel_for(K, [&](int64_t k) { out(M + k * ldc_, kpad_ * ldc_, C, part + k * C, K * C); }, threads);
    }

    // er (nrows, 2 TW, ldk) = rows [oh0, oh0 + nrows) of one image's dy (K, OH,
    // OW), channels last, zero past OH, OW and K.
    void dy_rows(const float* dyn, int64_t oh0, int64_t nrows, float* er) const {
        const int64_t W = kit_.W, OH = s_.OH, OW = s_.OW, K = s_.K, OHW = OH * OW, wd = 2 * TW_;
        const int64_t kfull = round_up(K, W);
        for (int64_t r = 0; r < nrows; ++r) {
            float* drow = er + r * wd * ldk_;
            const int64_t oh = oh0 + r;
            if (oh >= OH) {
                std::fill(drow, drow + wd * ldk_, 0.f);
                continue;
            }
            for (int64_t w0 = 0; w0 < OW; w0 += W) {
                const int64_t nw = std::min(W, OW - w0);
                for (int64_t k0 = 0; k0 < K; k0 += W)
                    kit_.transpose(dyn + k0 * OHW + oh * OW + w0, OHW, std::min(W, K - k0), nw, drow + w0 * ldk_ + k0,
                                   ldk_, false);
                if (kfull < ldk_)
                    for (int64_t w = w0; w < w0 + nw; ++w) std::fill(drow + w * ldk_ + kfull, drow + (w + 1) * ldk_, 0.f);
            }
            std::fill(drow + OW * ldk_, drow + wd * ldk_, 0.f);
        }
    }

    const ConvKit& kit_;
    Conv2dShape s_;
    const ConvKit::DwVariant& v_;
    const int R_;        // kernel side: 3 (F(2x2, 3x3), 16 points) or 5 (F(2x2, 5x5), 36 points)
    const int64_t P_;    // transform points
    // Channel strides: input ldc (a multiple of the tile's W*mv; the rows of U
    // and M), output ldk (a multiple of W, at least kpad, the multiple of the
    // tile's nr; the rows of V, zero past K, which the tile kernel reads nr at
    // a time). Then the tiles, the width of the channels-last input rows, the
    // blocking.
    int64_t ldc_, kpad_, ldk_, TH_, TW_, Wx_;
    int64_t images_per_block_, rows_per_block_, max_tiles_, us_, vs_;
    std::vector<int64_t> src_;  // 0, 1, ...: the transformed tiles are the kernels' positions
};

}  // namespace

bool winograd_dw_ok(const Conv2dShape& s, const ConvKit* kit) {
    return kit && (s.kh == 3 || s.kh == 5) && s.kw == s.kh && s.sh == 1 && s.sw == 1 && s.dh == 1 && s.dw == 1 &&
           s.groups == 1;
}

// Measured (dw alone, batch 64, 2 threads, medians of 9 interleaved pairs
// against the direct dw, speed-up AVX-512 / AVX2): 16->16 32x32 1.19 / 1.19,
// 32->32 16x16 1.35 / 1.51, 64->64 8x8 1.38 / 1.61, 128->128 8x8 1.51 / 1.73,
// 64->64 16x16 1.40 / 1.79; and 1.09-1.51 on 7x7 (partial tiles), 4x4, 14x14,
// 64x64 and 16<->64 channels. The smallest gain is at 16 channels, where
// the transforms and channels-last copies weigh most against 16 x 16
// products per tile; no eligible layer measured with >= 16 channels each
// way was slower, the same limit as the forward.
//
// 5 x 5 (dw alone, batch 64, 2 threads, interleaved against the direct dw,
// Zen 4, 2026-12-08, AVX-512 / AVX2): 32->64 14x14 1.35 / 1.28, 16->32 28x28
// 1.29 / 1.27, 64->128 8x8 1.14 / 1.14; with the earlier points +-2, whose
// transforms take fewer operations, 64->64 14x14 1.47 / 1.50 and 32->32
// 28x28 1.43 / 1.56, but 0.95-1.02 on 7x7 planes (16 tiles for 49 outputs,
// 36 points each), 16->16 28x28 1.25 / 0.77-0.83 and 6->16 0.70 / 0.67.
bool winograd_dw_better(const Conv2dShape& s) {
    if (s.kh == 5) return s.C >= 16 && s.K >= 32 && s.OH >= 8 && s.OW >= 8;
    return s.C >= 16 && s.K >= 16;
}

std::unique_ptr<DwPlan> make_dw_winograd(const Conv2dShape& s, const ConvKit* kit) {
    if (!winograd_dw_ok(s, kit)) return nullptr;
    return std::make_unique<DwWinograd>(*kit, s);
}

}  // namespace conv
}  // namespace striate
