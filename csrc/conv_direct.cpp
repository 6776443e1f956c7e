// conv_direct.cpp: stride-1 convolution forward and input gradient computed
// straight from the zero-padded image, with no im2col matrix, on the kernels
// of the active ISA path (conv_tiles.hpp).
//
// Two kernel families:
//   direct: vectors along output positions (rows, or rows flattened over the
//       padded width), register tiles of channels x position vectors, weights
//       broadcast; bias fused.
//   kvec:   for small output planes, vectors over W output channels and tiles
//       of positions, x broadcast; the result is transposed into place.
// dx is the same computation on dy padded by the kernel extent minus the
// forward padding, with flipped, transposed weights.
//
// Not here: strided or pointwise shapes (conv_gemm.cpp), the scatter dx for
// small outputs (conv_dx_scatter.cpp), the choice between them (conv2d.cpp).
#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "conv_internal.hpp"
#include "cpu.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {

namespace {

// ---- direct stride-1 convolution ------------------------------------------
//
// With stride 1 and the input zero-padded to (Hp, Wp), the input element under
// output (oh, ow) for reduction row r = (c, i, j) is xp[off[r] + oh*Wp + ow]
// with off[r] = c*Hp*Wp + i*dh*Wp + j*dw: consecutive ow read consecutive
// floats. So out[m][oh, ow] = sum_r wp[r][m] * xp[off[r] + oh*Wp + ow] is a
// GEMM whose B operand is read straight from the padded image (no im2col, no
// packing). The same kernel computes dx as a stride-1 convolution of the
// padded dy with the flipped, transposed weights.
//
// Output positions are cut into vectors of up to W ("segments"), either along
// each output row (rows mode: written straight into the output, no lane
// wasted when OW is a multiple of W) or along the rows flattened over the
// padded width, q = oh*Wp + ow (flat mode: columns ow >= OW are computed and
// dropped when copying out; fewer idle lanes when OW is small).
//
// Packed weights wp: blocks of mb output channels (the channel count of the
// tile shape, kit.direct[i].mr), each block R rows of mb floats (row r holds
// the weights of reduction row r; channels past M are zero). Of the kit's two
// tile shapes the one that pads less for the shape is taken; the tile starts
// from the bias and accumulates over r in order 0..R-1, so every output is
// the same sum in the same order whatever the tiling, the thread count or
// the vector width.

constexpr int64_t kSegPad = 12;           // segment lists are padded to a multiple of every NV
constexpr int64_t kDirectTaskBlocks = 2;  // channel blocks per task when one image is split over threads

// The kit's tile shape for M channels and these segments: the one with fewer
// padded lane-channels (ties: shape 0).
const ConvKit::DirectShape& direct_shape(const ConvKit& kit, int64_t M, const std::vector<Seg>& segs) {
    int64_t nseg = static_cast<int64_t>(segs.size());
    while (nseg > 0 && segs[static_cast<size_t>(nseg - 1)].mask == 0) --nseg;
    const ConvKit::DirectShape &a = kit.direct[0], &b = kit.direct[1];
    return round_up(M, b.mr) * round_up(nseg, b.nv) < round_up(M, a.mr) * round_up(nseg, a.nv) ? b : a;
}

// out[m*ldo + seg.dst + l] = bias[m] + sum_r wp(r, m) * xp[off[r] + seg.src + l] for m < M and
// every lane of every segment; bias may be null. segs holds a multiple of kSegPad entries.
// wp is packed in blocks of mb = direct_shape(kit, M, segs).mr channels:
// wp[m / mb][r][m % mb], zero past M.
int64_t count_segments(const std::vector<Seg>& segs);

// The channel blocks are independent tasks: with the calling thread outside a
// parallel region (batch of one image) they are spread over the threads, each
// computing exactly what the serial loop would, so results do not change.
// When there are fewer such tasks than threads (few channels), each is also
// cut into runs of whole tiles of positions (one 28x28 image of 1 -> 32
// channels was one task, so a second thread did nothing).
// after(m0, m1) runs once channels [m0, m1) are written.
template <class After>
void direct_conv(const ConvKit& kit, const float* xp, const int64_t* off, int64_t R, const float* wp, int64_t M,
                 const std::vector<Seg>& segs, float* out, int64_t ldo, const float* bias, int threads,
                 const After& after) {
    const ConvKit::DirectShape& shape = direct_shape(kit, M, segs);
    const int64_t mb = shape.mr, NV = shape.nv;
    const int64_t nseg = count_segments(segs), ntile = (nseg + NV - 1) / NV;
    // Tasks of kDirectTaskBlocks channel blocks each, in `parts` runs of positions.
    const int64_t nblk = (M + mb - 1) / mb, ntask = (nblk + kDirectTaskBlocks - 1) / kDirectTaskBlocks;
    const int64_t team = in_parallel_region() ? 1 : (threads > 0 ? threads : get_num_threads());
    const int64_t parts = std::min(ntile, ntask >= team ? 1 : (team + ntask - 1) / ntask);
    const int64_t per = (ntile + parts - 1) / parts * NV;  // segments per run: whole tiles
    parallel_for(
        ntask * parts,
        [&](int64_t i) {
            const auto [task, part] = split_index(i, parts);
            const int64_t mlo = task * kDirectTaskBlocks * mb, mhi = std::min(M, mlo + kDirectTaskBlocks * mb);
            for (int64_t t = part * per; t < std::min(nseg, (part + 1) * per); t += NV) {
                for (int64_t m0 = mlo; m0 < mhi; m0 += mb) {
                    const int64_t mr = std::min(mb, M - m0);
                    shape.fn[mr](xp, off, R, wp + m0 * R, segs.data() + t, out + m0 * ldo, ldo,
                                 bias ? bias + m0 : nullptr);
                }
            }
            if (parts == 1) after(mlo, mhi);
        },
        threads);
    if (parts > 1) after(0, M);
}

// The output vectors of one direct convolution (see Seg), W lanes each, padded
// with empty segments to a multiple of kSegPad. *rows tells which mode was
// chosen: rows mode writes (Hout, Wout) planes directly; flat mode writes
// planes of d.Q() floats with row stride Wp, to be compacted by unflatten_rows.
std::vector<Seg> direct_segments(const DirectGeom& d, int64_t W, bool* rows) {
    auto mask_of = [W](int64_t len) { return len >= W ? (1u << W) - 1u : (1u << len) - 1u; };
    const int64_t per_row = (d.Wout + W - 1) / W, Q = d.Q();
    *rows = d.Hout * per_row * W <= round_up(Q, W);
    std::vector<Seg> segs;
    if (*rows) {
        for (int64_t h = 0; h < d.Hout; ++h)
            for (int64_t w0 = 0; w0 < d.Wout; w0 += W) segs.push_back({h * d.Wp + w0, h * d.Wout + w0, mask_of(d.Wout - w0)});
    } else {
        for (int64_t q0 = 0; q0 < Q; q0 += W) segs.push_back({q0, q0, mask_of(Q - q0)});
    }
    while (segs.size() % kSegPad) segs.push_back({0, 0, 0u});
    return segs;
}

int64_t count_segments(const std::vector<Seg>& segs) {
    int64_t n = 0;
    for (const Seg& sg : segs) n += sg.mask != 0;
    return n;
}

// Copy the valid columns of planes [m0, m1) of out (planes of ldo floats, row
// stride Wp inside) into dst (M, Hout, Wout).
void unflatten_rows(const DirectGeom& d, int64_t m0, int64_t m1, const float* out, int64_t ldo, float* dst) {
    for (int64_t m = m0; m < m1; ++m)
        for (int64_t h = 0; h < d.Hout; ++h)
            std::memcpy(dst + (m * d.Hout + h) * d.Wout, out + m * ldo + h * d.Wp,
                        static_cast<size_t>(d.Wout) * sizeof(float));
}

// ---- direct forward vectorised over output channels (kvec) ------------------
//
// For small outputs (LeNet C3: 10x10) whole vectors of positions idle many
// lanes. There the vector runs over W output channels instead and the
// register tile over up to 2 rows x NT positions of one output row (with 2W
// or more channels left, two vectors share each broadcast):
// outT[p][k] = bias[k] + sum_r wT[r][k] * xp[off[r] + src(p)], positions in
// the tile read xp at consecutive addresses (stride 1), accumulated over r in
// order 0..R-1. outT (positions x 2W) is transposed into y afterwards.

// Lanes (padded output values) each forward kernel computes; the channel-vector
// kernel is used when it needs clearly fewer.
bool use_kvec(int64_t W, int64_t Kg, int64_t OH, int64_t OW, int64_t position_kernel_lanes) {
    const int64_t lanes = round_up(Kg, W) * OH * OW;
    return 10 * lanes < 9 * position_kernel_lanes;
}

// Lanes the position kernel computes for M channels over these segments.
int64_t position_lanes(const ConvKit& kit, int64_t M, const std::vector<Seg>& segs) {
    return round_up(M, direct_shape(kit, M, segs).mr) * count_segments(segs) * kit.W;
}

// One image and group: y (Kg, OH, OW) = bias + conv of the padded xp, through
// outT (OH*OW + W rows of 2W floats). wT is (R, ldw) with ldw a multiple of W,
// zero past Kg. Blocks of 2W channels use two-vector tiles, the rest one-vector tiles.
// The pairs of output rows are independent tasks, spread over `threads` when
// the caller is outside a parallel region (a batch of one image).
void kvec_conv(const ConvKit& kit, const DirectGeom& d, const int64_t* off, int64_t R, const float* xp,
               const float* wT, int64_t ldw, int64_t Kg, const float* bias, float* outT, float* y, int threads) {
    const int64_t W = kit.W, OH = d.Hout, OW = d.Wout, P = OH * OW, ldt = 2 * W;
    if (d.sw > 2) throw std::logic_error("kvec_conv: column step " + std::to_string(d.sw) + " has no tiles");
    const auto& tiles = d.sw == 2 ? kit.kvec_s2 : kit.kvec;  // positions sw columns apart
    for (int64_t k0 = 0; k0 < Kg;) {
        // Tiles as even as the row allows (8 positions: 4 + 4, not 7 + 1): a
        // one-position tile has too few accumulators to hide the FMA latency.
        const int64_t kv = Kg - k0 >= 2 * W ? 2 : 1, ntmax = ceil_div_nonneg(OW, ceil_div_nonneg(OW, kit.kvec_nt[kv - 1]));
        const int64_t nk = std::min<int64_t>(W * kv, Kg - k0), nlast = nk - W * (kv - 1);
        parallel_for((OH + 1) / 2, [&](int64_t pair) {
            const int64_t oh = 2 * pair, rows = std::min<int64_t>(2, OH - oh);
            for (int64_t ow0 = 0; ow0 < OW; ow0 += ntmax) {
                const int64_t nt = std::min<int64_t>(ntmax, OW - ow0);
                float* o0 = outT + (oh * OW + ow0) * ldt;
                tiles[kv - 1][rows - 1][static_cast<size_t>(nt)](xp, off, R, wT + k0, ldw,
                                                                 oh * d.sh * d.Wp + ow0 * d.sw, d.sh * d.Wp,
                                                                 bias ? bias + k0 : nullptr, nlast, o0, o0 + OW * ldt,
                                                                 ldt);
            }
        }, threads);
        for (int64_t v = 0; v < kv; ++v)
            for (int64_t p0 = 0; p0 < P; p0 += W)
                kit.transpose(outT + p0 * ldt + W * v, ldt, std::min<int64_t>(W, P - p0),
                              std::min<int64_t>(W, nk - W * v), y + (k0 + W * v) * P + p0, P, true);
        k0 += nk;
    }
}

}  // namespace

// Direct path usable for this geometry? (stride 1 and a vector ISA path; for
// dx also padding no wider than the dilated kernel, so that dy's padding is >= 0.)
bool direct_forward_ok(const Conv2dShape& s, const ConvKit* kit) { return kit && s.sh == 1 && s.sw == 1; }
bool direct_dx_ok(const Conv2dShape& s, const ConvKit* kit) {
    const int64_t eh = s.dh * (s.kh - 1), ew = s.dw * (s.kw - 1);
    return direct_forward_ok(s, kit) && s.pt <= eh && s.pb <= eh && s.pl <= ew && s.pr <= ew;
}

// y = conv(x, w) + b through direct_conv (stride 1).
// x is (N, C, H, W), w is (K, Cg, kh, kw), b is (K,) or null, y is (N, K, OH, OW).
void forward_direct(const ConvKit& kit, const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, int threads) {
    const DirectGeom d = input_geom(s);
    std::vector<int64_t> off(static_cast<size_t>(d.R()));
    direct_offsets(d, off.data());
    forward_direct_prepared(kit, s, d, off, d.padded_size(), [&d](const float* src, float* xp) { pad_image(d, src, xp); },
                            x, w, b, y, threads);
}

// The forward above on an image that prepare() builds (zero-padded, or for
// strides split into phases by conv_strided.cpp): output (d.Hout, d.Wout),
// image row stride d.Wp, reduction rows r = (c, i, j) at off[r] in order.
void forward_direct_prepared(const ConvKit& kit, const Conv2dShape& s, const DirectGeom& d,
                             const std::vector<int64_t>& off, int64_t image_size, const PrepareFn& prepare,
                             const float* x, const float* w, const float* b, float* y, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int64_t R = static_cast<int64_t>(off.size()), Q = d.Q();
    bool rows = false;
    const std::vector<Seg> segs = direct_segments(d, kit.W, &rows);
    const int64_t W = kit.W, mb = direct_shape(kit, Kg, segs).mr, Mpad = round_up(Kg, mb);
    // A geometry with steps (strided, unsplit) runs on the channel-vector kernel only.
    if (d.sh > 1 || d.sw > 1 || use_kvec(W, Kg, s.OH, s.OW, position_lanes(kit, Kg, segs))) {
        // wT is (groups, R, ldw): wT[g][r][k] = w[g*Kg + k][r], zero past Kg.
        const int64_t ldw = round_up(Kg, W);
        float* wT = tl_wpack.get(s.groups * R * ldw);
        parallel_for(
            s.groups * R,
            [&](int64_t gr) {
                const auto [g, r] = split_index(gr, R);
                for (int64_t k = 0; k < ldw; ++k) wT[gr * ldw + k] = k < Kg ? w[(g * Kg + k) * R + r] : 0.f;
            },
            pack_threads(s.groups * R * ldw, threads));
        parallel_for(
            s.N,
            [&](int64_t n) {
                float* xp = tl_pad.get(image_size);
                float* outT = tl_out.get((s.OH * s.OW + W) * 2 * W);  // positions x 2W and spare rows
                for (int64_t g = 0; g < s.groups; ++g) {
                    prepare(x + (n * s.C + g * Cg) * s.H * s.W, xp);
                    kvec_conv(kit, d, off.data(), R, xp, wT + g * R * ldw, ldw, Kg, b ? b + g * Kg : nullptr, outT,
                              y + (n * s.K + g * Kg) * s.OH * s.OW, threads);
                }
            },
            threads);
        return;
    }
    // wp is (groups, Mpad / mb, R, mb): wp[g][m / mb][r][m % mb] = w[g*Kg + m][r], zero past Kg.
    float* wp = tl_wpack.get(s.groups * Mpad * R);
    parallel_for(
        s.groups * Mpad,
        [&](int64_t gm) {
            const auto [g, m] = split_index(gm, Mpad);
            for (int64_t r = 0; r < R; ++r)
                wp[(g * Mpad + m / mb * mb) * R + r * mb + m % mb] = m < Kg ? w[(g * Kg + m) * R + r] : 0.f;
        },
        pack_threads(s.groups * Mpad * R, threads));
    parallel_for(
        s.N,
        [&](int64_t n) {
            float* xp = tl_pad.get(image_size);
            float* out = rows ? nullptr : tl_out.get(Kg * Q);  // (Kg, Q)
            for (int64_t g = 0; g < s.groups; ++g) {
                prepare(x + (n * s.C + g * Cg) * s.H * s.W, xp);
                float* yg = y + (n * s.K + g * Kg) * s.OH * s.OW;  // (Kg, OH, OW)
                const float* bg = b ? b + g * Kg : nullptr;
                if (rows) {
                    direct_conv(kit, xp, off.data(), R, wp + g * Mpad * R, Kg, segs, yg, s.OH * s.OW, bg, threads,
                                [](int64_t, int64_t) {});
                } else {
                    direct_conv(kit, xp, off.data(), R, wp + g * Mpad * R, Kg, segs, out, Q, bg, threads,
                                [&](int64_t m0, int64_t m1) { unflatten_rows(d, m0, m1, out, Q, yg); });
                }
            }
        },
        threads);
}

// dx as a stride-1 convolution of dy, padded by the dilated kernel extent minus
// the forward padding, with the flipped weights transposed to (Cg, Kg, kh, kw).
// dy is (N, K, OH, OW), w is (K, Cg, kh, kw), dx is (N, C, H, W).
void backward_dx_direct(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const DirectGeom d = dx_geom(s);
    const int64_t R = d.R(), Q = d.Q();
    const int64_t khw = s.kh * s.kw;
    bool rows = false;
    const std::vector<Seg> segs = direct_segments(d, kit.W, &rows);
    const int64_t W = kit.W, mb = direct_shape(kit, Cg, segs).mr, Mpad = round_up(Cg, mb);
    if (use_kvec(W, Cg, s.H, s.W, position_lanes(kit, Cg, segs))) {
        // Small dx planes: vectors over W input channels (kvec_conv), as in the forward.
        // wT[g][r = (k, i, j)][c] = w[g*Kg + k][c][kh-1-i][kw-1-j], zero past Cg.
        const int64_t ldw = round_up(Cg, W);
        float* wT = tl_wpack.get(s.groups * R * ldw);
        parallel_for(
            s.groups * R,
            [&](int64_t gr) {
                const auto [g, r] = split_index(gr, R);
                const auto [k, ij] = split_index(r, khw);
                const auto [i, j] = split_index(ij, s.kw);
                for (int64_t c = 0; c < ldw; ++c)
                    wT[gr * ldw + c] =
                        c < Cg ? w[((g * Kg + k) * Cg + c) * khw + (s.kh - 1 - i) * s.kw + (s.kw - 1 - j)] : 0.f;
            },
            pack_threads(s.groups * R * ldw, threads));
        std::vector<int64_t> koff(static_cast<size_t>(R));
        direct_offsets(d, koff.data());
        parallel_for(
            s.N,
            [&](int64_t n) {
                float* dyp = tl_pad.get(d.padded_size());
                float* outT = tl_out.get((s.H * s.W + W) * 2 * W);  // positions x 2W and spare rows
                for (int64_t g = 0; g < s.groups; ++g) {
                    pad_image(d, dy + (n * s.K + g * Kg) * s.OH * s.OW, dyp);
                    kvec_conv(kit, d, koff.data(), R, dyp, wT + g * R * ldw, ldw, Cg, nullptr, outT,
                              dx + (n * s.C + g * Cg) * s.H * s.W, threads);
                }
            },
            threads);
        return;
    }
    // wp[g][c / mb][r = (k, i, j)][c % mb] = w[g*Kg + k][c][kh-1-i][kw-1-j], zero past Cg.
    float* wp = tl_wpack.get(s.groups * Mpad * R);
    parallel_for(
        s.groups * Mpad,
        [&](int64_t gc) {
            const auto [g, c] = split_index(gc, Mpad);
            for (int64_t k = 0; k < Kg; ++k)
                for (int64_t i = 0; i < s.kh; ++i)
                    for (int64_t j = 0; j < s.kw; ++j) {
                        const int64_t r = (k * s.kh + i) * s.kw + j;
                        wp[(g * Mpad + c / mb * mb) * R + r * mb + c % mb] =
                            c < Cg ? w[((g * Kg + k) * Cg + c) * khw + (s.kh - 1 - i) * s.kw + (s.kw - 1 - j)] : 0.f;
                    }
        },
        pack_threads(s.groups * Mpad * R, threads));
    std::vector<int64_t> off(static_cast<size_t>(R));
    direct_offsets(d, off.data());
    parallel_for(
        s.N,
        [&](int64_t n) {
            float* dyp = tl_pad.get(d.padded_size());
            float* out = rows ? nullptr : tl_out.get(Cg * Q);  // (Cg, Q)
            for (int64_t g = 0; g < s.groups; ++g) {
                pad_image(d, dy + (n * s.K + g * Kg) * s.OH * s.OW, dyp);
                float* dxg = dx + (n * s.C + g * Cg) * s.H * s.W;  // (Cg, H, W)
                if (rows) {
                    direct_conv(kit, dyp, off.data(), R, wp + g * Mpad * R, Cg, segs, dxg, s.H * s.W, nullptr, threads,
                                [](int64_t, int64_t) {});
                } else {
                    direct_conv(kit, dyp, off.data(), R, wp + g * Mpad * R, Cg, segs, out, Q, nullptr, threads,
                                [&](int64_t m0, int64_t m1) { unflatten_rows(d, m0, m1, out, Q, dxg); });
                }
            }
        },
        threads);
}

std::vector<Seg> direct_segments_of(const DirectGeom& d, int64_t W, bool* rows) { return direct_segments(d, W, rows); }

int64_t direct_block(const ConvKit& kit, int64_t M, const std::vector<Seg>& segs) {
    return direct_shape(kit, M, segs).mr;
}

void direct_conv_run(const ConvKit& kit, const float* xp, const int64_t* off, int64_t R, const float* wp, int64_t M,
                     const std::vector<Seg>& segs, float* out, int64_t ldo, const float* bias, int threads,
                     const std::function<void(int64_t, int64_t)>& after) {
    direct_conv(kit, xp, off, R, wp, M, segs, out, ldo, bias, threads, after);
}

bool kvec_better(const ConvKit& kit, int64_t M, int64_t Hout, int64_t Wout, const std::vector<Seg>& segs) {
    return use_kvec(kit.W, M, Hout, Wout, position_lanes(kit, M, segs));
}

void kvec_conv_run(const ConvKit& kit, const DirectGeom& d, const int64_t* off, int64_t R, const float* xp,
                   const float* wT, int64_t ldw, int64_t M, float* outT, float* y, int threads) {
    kvec_conv(kit, d, off, R, xp, wT, ldw, M, nullptr, outT, y, threads);
}

double direct_dx_cost(const ConvKit& kit, const Conv2dShape& s) {
    // Cg (rounded to the channel block) times the padded output segments times
    // Kg*kh*kw, or for the channel-vector kernel one FMA per W channels and dx
    // position times Kg*kh*kw.
    const int64_t W = kit.W, Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw;
    bool rows = false;
    const std::vector<Seg> segs = direct_segments(dx_geom(s), W, &rows);
    const ConvKit::DirectShape& shape = direct_shape(kit, Cg, segs);
    if (use_kvec(W, Cg, s.H, s.W, position_lanes(kit, Cg, segs)))
        return double((Cg + W - 1) / W) * double(s.H * s.W) * double(Kg * khw);
    return double(round_up(Cg, shape.mr)) * double(round_up(count_segments(segs), shape.nv)) * double(Kg * khw);
}

}  // namespace conv
}  // namespace striate
