// conv_direct.cpp: stride-1 convolution forward and input gradient computed
// straight from the zero-padded image, with no im2col matrix (AVX-512).
//
// Two kernel families:
//   direct: vectors along output positions (rows, or rows flattened over the
//       padded width), register tiles of channels x position vectors, weights
//       broadcast; bias fused.
//   kvec:   for small output planes, vectors over 16 output channels and tiles
//       of positions, x broadcast; the result is transposed into place.
// dx is the same computation on dy padded by the kernel extent minus the
// forward padding, with flipped, transposed weights.
//
// Not here: strided or pointwise shapes (conv_gemm.cpp), the scatter dx for
// small outputs (conv_dx_scatter.cpp), the choice between them (conv2d.cpp).
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

// ---- direct stride-1 convolution (AVX-512) ---------------------------------
//
// With stride 1 and the input zero-padded to (Hp, Wp), the input element under
// output (oh, ow) for reduction row r = (c, i, j) is xp[off[r] + oh*Wp + ow]
// with off[r] = c*Hp*Wp + i*dh*Wp + j*dw: consecutive ow read consecutive
// floats. So out[m][oh, ow] = sum_r wp[r][m] * xp[off[r] + oh*Wp + ow] is a
// GEMM whose B operand is read straight from the padded image (no im2col, no
// packing). The same kernel computes dx as a stride-1 convolution of the
// padded dy with the flipped, transposed weights.
//
// Output positions are cut into vectors of up to 16 ("segments"), either
// along each output row (rows mode: written straight into the output, no lane
// wasted when OW is a multiple of 16) or along the rows flattened over the
// padded width, q = oh*Wp + ow (flat mode: columns ow >= OW are computed and
// dropped when copying out; fewer idle lanes when OW is small).
//
// Packed weights wp: blocks of mb (8 or 6) output channels, each block R rows
// of mb floats (row r holds the weights of reduction row r; channels past M are
// zero). Register tile: 8 channels x 3 segments or 6 channels x 4 segments,
// whichever pads less for the shape; it starts from the bias and accumulates
// over r in order 0..R-1, so every output is the same sum in the same order
// whatever the tiling or the thread count.

constexpr int64_t kDirectMR = 8;     // largest channel block of any tile shape
constexpr int64_t kSegPad = 12;      // segment lists are padded to a multiple of every NV
constexpr int64_t kDirectTaskBlocks = 2;  // channel blocks per task when one image is split over threads

// One vector of output positions: input at xp[off[r] + src + l], output at
// out[m*ldo + dst + l], for the lanes l set in mask. Loads always read all 16
// lanes (the padded buffer has kDirectSlack floats of slack); stores are masked.
struct Seg {
    int64_t src, dst;
    uint32_t mask;
};

// One register tile: MR channels x NV segments. wb holds R rows of WS floats.
template <int MR, int NV, int WS>
__attribute__((target("avx512f,fma"))) void direct_tile_avx512(const float* xp, const int64_t* off, int64_t R,
                                                                const float* wb, const Seg* sg, float* out,
                                                                int64_t ldo, const float* bias) {
    __m512 acc[MR][NV];
    int64_t so[NV];
    for (int v = 0; v < NV; ++v) so[v] = sg[v].src;
    for (int m = 0; m < MR; ++m) {
        const __m512 init = bias ? _mm512_set1_ps(bias[m]) : _mm512_setzero_ps();
        for (int v = 0; v < NV; ++v) acc[m][v] = init;
    }
    for (int64_t r = 0; r < R; ++r) {
        const float* src = xp + off[r];
        __m512 xv[NV];
        for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_ps(src + so[v]);
        const float* wr = wb + r * WS;
        for (int m = 0; m < MR; ++m) {
            const __m512 wv = _mm512_set1_ps(wr[m]);
            for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_fmadd_ps(wv, xv[v], acc[m][v]);
        }
    }
    for (int v = 0; v < NV; ++v) {
        const __mmask16 mask = static_cast<__mmask16>(sg[v].mask);
        if (!mask) continue;
        for (int m = 0; m < MR; ++m) _mm512_mask_storeu_ps(out + m * ldo + sg[v].dst, mask, acc[m][v]);
    }
}

using direct_tile_fn = void (*)(const float*, const int64_t*, int64_t, const float*, const Seg*, float*, int64_t,
                                const float*);
// Tile shapes: 8 channels x 3 segments, or 6 channels x 4 segments (24 accumulators each).
template <int NV, int WS, int... Ms>
constexpr std::array<direct_tile_fn, kDirectMR + 1> tile_table(std::integer_sequence<int, Ms...>) {
    return {nullptr, direct_tile_avx512<Ms + 1, NV, WS>...};
}
const std::array<direct_tile_fn, kDirectMR + 1> kTiles8x3 = tile_table<3, 8>(std::make_integer_sequence<int, 8>{});
const std::array<direct_tile_fn, kDirectMR + 1> kTiles6x4 = tile_table<4, 6>(std::make_integer_sequence<int, 6>{});

// Channels per weight block (and per tile) for M channels and these segments:
// the shape with fewer padded lane-channels, 8 x 3 or 6 x 4 (ties: 8 x 3).
int64_t direct_block(int64_t M, const std::vector<Seg>& segs) {
    int64_t nseg = static_cast<int64_t>(segs.size());
    while (nseg > 0 && segs[static_cast<size_t>(nseg - 1)].mask == 0) --nseg;
    return round_up(M, 6) * round_up(nseg, 4) < round_up(M, 8) * round_up(nseg, 3) ? 6 : 8;
}

// out[m*ldo + seg.dst + l] = bias[m] + sum_r wp(r, m) * xp[off[r] + seg.src + l] for m < M and
// every lane of every segment; bias may be null. segs holds a multiple of kSegPad entries.
// wp is packed in blocks of mb = direct_block(M, segs) channels: wp[m / mb][r][m % mb],
// zero past M.
// The channel blocks are independent tasks: with the calling thread outside a
// parallel region (batch of one image) they are spread over the threads, each
// computing exactly what the serial loop would, so results do not change.
// after(m0, m1) runs once a task has written channels [m0, m1) (may be null).
template <class After>
void direct_conv(const float* xp, const int64_t* off, int64_t R, const float* wp, int64_t M,
                 const std::vector<Seg>& segs, float* out, int64_t ldo, const float* bias, int threads,
                 const After& after) {
    const int64_t mb = direct_block(M, segs), NV = mb == 6 ? 4 : 3;
    const auto& table = mb == 6 ? kTiles6x4 : kTiles8x3;
    const int64_t nseg = static_cast<int64_t>(segs.size());
    // Tasks of kDirectTaskBlocks channel blocks each.
    const int64_t nblk = (M + mb - 1) / mb, ntask = (nblk + kDirectTaskBlocks - 1) / kDirectTaskBlocks;
    parallel_for(
        ntask,
        [&](int64_t task) {
            const int64_t mlo = task * kDirectTaskBlocks * mb, mhi = std::min(M, mlo + kDirectTaskBlocks * mb);
            for (int64_t t = 0; t < nseg && segs[static_cast<size_t>(t)].mask != 0; t += NV) {
                for (int64_t m0 = mlo; m0 < mhi; m0 += mb) {
                    const int64_t mr = std::min(mb, M - m0);
                    table[static_cast<size_t>(mr)](xp, off, R, wp + m0 * R, segs.data() + t, out + m0 * ldo, ldo,
                                                   bias ? bias + m0 : nullptr);
                }
            }
            after(mlo, mhi);
        },
        threads);
}

// The output vectors of one direct convolution (see Seg), padded with empty
// segments to a multiple of kSegPad. *rows tells which mode was chosen:
// rows mode writes (Hout, Wout) planes directly; flat mode writes planes of
// d.Q() floats with row stride Wp, to be compacted by unflatten_rows.
std::vector<Seg> direct_segments(const DirectGeom& d, bool* rows) {
    auto mask_of = [](int64_t len) { return len >= 16 ? 0xFFFFu : (1u << len) - 1u; };
    const int64_t per_row = (d.Wout + 15) / 16, Q = d.Q();
    *rows = d.Hout * per_row * 16 <= (Q + 15) / 16 * 16;
    std::vector<Seg> segs;
    if (*rows) {
        for (int64_t h = 0; h < d.Hout; ++h)
            for (int64_t w0 = 0; w0 < d.Wout; w0 += 16)
                segs.push_back({h * d.Wp + w0, h * d.Wout + w0, mask_of(d.Wout - w0)});
    } else {
        for (int64_t q0 = 0; q0 < Q; q0 += 16) segs.push_back({q0, q0, mask_of(Q - q0)});
    }
    while (segs.size() % kSegPad) segs.push_back({0, 0, 0u});
    return segs;
}

// Copy the valid columns of planes [m0, m1) of out (planes of ldo floats, row
// stride Wp inside) into dst (M, Hout, Wout).
void unflatten_rows(const DirectGeom& d, int64_t m0, int64_t m1, const float* out, int64_t ldo, float* dst) {
    for (int64_t m = m0; m < m1; ++m)
        for (int64_t h = 0; h < d.Hout; ++h)
            std::memcpy(dst + (m * d.Hout + h) * d.Wout, out + m * ldo + h * d.Wp,
                        static_cast<size_t>(d.Wout) * sizeof(float));
}

// ---- direct forward vectorised over output channels (AVX-512) ---------------
//
// For small outputs (LeNet C3: 10x10) whole vectors of positions idle many
// lanes. There the vector runs over 16 output channels instead and the
// register tile over up to 2 rows x NT positions of one output row (with 32
// or more channels left, two vectors of 16 share each broadcast):
// outT[p][k] = bias[k] + sum_r wT[r][k] * xp[off[r] + src(p)], positions in
// the tile read xp at consecutive addresses (stride 1), accumulated over r in
// order 0..R-1. outT (positions x 16) is transposed into y afterwards.

constexpr int kKvecNT = 12;   // positions per row in a one-vector tile (2 rows: 24 accumulators)
constexpr int kKvecNT2 = 7;   // positions per row in a two-vector tile (2 rows: 28 accumulators)

// KV vectors of 16 channels (KV = 2: 32 channels, each broadcast feeds two FMAs).
// outT rows hold ldt floats per position; kmask applies to the last vector.
template <int ROWS, int NT, int KV>
__attribute__((target("avx512f,fma"))) void kvec_tile_avx512(const float* xp, const int64_t* off, int64_t R,
                                                              const float* wT, int64_t ldw, int64_t src0,
                                                              int64_t rstep, const float* bias, __mmask16 kmask,
                                                              float* out0, float* out1, int64_t ldt) {
    __m512 acc[ROWS][NT][KV];
    for (int kv = 0; kv < KV; ++kv) {
        const __mmask16 mk = kv == KV - 1 ? kmask : __mmask16(0xFFFF);
        const __m512 init = bias ? _mm512_maskz_loadu_ps(mk, bias + 16 * kv) : _mm512_setzero_ps();
        for (int h = 0; h < ROWS; ++h)
            for (int t = 0; t < NT; ++t) acc[h][t][kv] = init;
    }
    for (int64_t r = 0; r < R; ++r) {
        __m512 wv[KV];
        for (int kv = 0; kv < KV; ++kv) wv[kv] = _mm512_loadu_ps(wT + r * ldw + 16 * kv);
        const float* b0 = xp + off[r] + src0;
        for (int t = 0; t < NT; ++t) {
            const __m512 bc = _mm512_set1_ps(b0[t]);
            for (int kv = 0; kv < KV; ++kv) acc[0][t][kv] = _mm512_fmadd_ps(wv[kv], bc, acc[0][t][kv]);
        }
        if (ROWS == 2) {
            const float* b1 = b0 + rstep;
            for (int t = 0; t < NT; ++t) {
                const __m512 bc = _mm512_set1_ps(b1[t]);
                for (int kv = 0; kv < KV; ++kv)
                    acc[ROWS - 1][t][kv] = _mm512_fmadd_ps(wv[kv], bc, acc[ROWS - 1][t][kv]);
            }
        }
    }
    for (int t = 0; t < NT; ++t)
        for (int kv = 0; kv < KV; ++kv) _mm512_storeu_ps(out0 + ldt * t + 16 * kv, acc[0][t][kv]);
    if (ROWS == 2)
        for (int t = 0; t < NT; ++t)
            for (int kv = 0; kv < KV; ++kv) _mm512_storeu_ps(out1 + ldt * t + 16 * kv, acc[ROWS - 1][t][kv]);
}

using kvec_tile_fn = void (*)(const float*, const int64_t*, int64_t, const float*, int64_t, int64_t, int64_t,
                              const float*, __mmask16, float*, float*, int64_t);
template <int ROWS, int KV, int... Ts>
constexpr std::array<kvec_tile_fn, kKvecNT + 1> kvec_table(std::integer_sequence<int, Ts...>) {
    return {nullptr, kvec_tile_avx512<ROWS, Ts + 1, KV>...};
}
// kKvecTiles[KV - 1][ROWS - 1][NT]; two-vector tiles exist for NT <= kKvecNT2 only.
const std::array<kvec_tile_fn, kKvecNT + 1> kKvecTiles[2][2] = {
    {kvec_table<1, 1>(std::make_integer_sequence<int, kKvecNT>{}),
     kvec_table<2, 1>(std::make_integer_sequence<int, kKvecNT>{})},
    {kvec_table<1, 2>(std::make_integer_sequence<int, kKvecNT2>{}),
     kvec_table<2, 2>(std::make_integer_sequence<int, kKvecNT2>{})},
};

// Lanes (padded output values) each forward kernel computes; the channel-vector
// kernel is used when it needs clearly fewer.
bool use_kvec(int64_t Kg, int64_t OH, int64_t OW, int64_t position_kernel_lanes) {
    const int64_t lanes = (Kg + 15) / 16 * 16 * OH * OW;
    return 10 * lanes < 9 * position_kernel_lanes;
}

// One image and group: y (Kg, OH, OW) = bias + conv of the padded xp, through outT (OH*OW, kKvecLdt).
// wT is (R, ldw) with ldw a multiple of 16, zero past Kg. Blocks of 32 channels
// use two-vector tiles, the rest one-vector tiles.
constexpr int64_t kKvecLdt = 32;
void kvec_conv(const DirectGeom& d, const int64_t* off, const float* xp, const float* wT, int64_t ldw, int64_t Kg,
               const float* bias, float* outT, float* y) {
    const int64_t R = d.R(), OH = d.Hout, OW = d.Wout, P = OH * OW, ldt = kKvecLdt;
    for (int64_t k0 = 0; k0 < Kg;) {
        const int64_t kv = Kg - k0 >= 32 ? 2 : 1, ntmax = kv == 2 ? kKvecNT2 : kKvecNT;
        const int64_t nk = std::min<int64_t>(16 * kv, Kg - k0), nlast = nk - 16 * (kv - 1);
        const __mmask16 kmask = nlast >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nlast) - 1u);
        for (int64_t oh = 0; oh < OH; oh += 2) {
            const int64_t rows = std::min<int64_t>(2, OH - oh);
            for (int64_t ow0 = 0; ow0 < OW; ow0 += ntmax) {
                const int64_t nt = std::min<int64_t>(ntmax, OW - ow0);
                float* o0 = outT + (oh * OW + ow0) * ldt;
                kKvecTiles[kv - 1][rows - 1][static_cast<size_t>(nt)](xp, off, R, wT + k0, ldw, oh * d.Wp + ow0,
                                                                      d.Wp, bias ? bias + k0 : nullptr, kmask, o0,
                                                                      o0 + OW * ldt, ldt);
            }
        }
        for (int64_t v = 0; v < kv; ++v)
            for (int64_t p0 = 0; p0 < P; p0 += 16)
                transpose_block16(outT + p0 * ldt + 16 * v, ldt, std::min<int64_t>(16, P - p0),
                                  std::min<int64_t>(16, nk - 16 * v), y + (k0 + 16 * v) * P + p0, P, true);
        k0 += nk;
    }
}


}  // namespace

// Direct path usable for this geometry? (stride 1 and an AVX-512 CPU; for dx
// also padding no wider than the dilated kernel, so that dy's padding is >= 0.)
bool direct_forward_ok(const Conv2dShape& s) { return s.sh == 1 && s.sw == 1 && active_isa() == Isa::avx512; }
bool direct_dx_ok(const Conv2dShape& s) {
    const int64_t eh = s.dh * (s.kh - 1), ew = s.dw * (s.kw - 1);
    return direct_forward_ok(s) && s.pt <= eh && s.pb <= eh && s.pl <= ew && s.pr <= ew;
}

// y = conv(x, w) + b through direct_conv (stride 1).
// x is (N, C, H, W), w is (K, Cg, kh, kw), b is (K,) or null, y is (N, K, OH, OW).
void forward_direct(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const DirectGeom d = input_geom(s);
    const int64_t R = d.R(), Q = d.Q();
    bool rows = false;
    const std::vector<Seg> segs = direct_segments(d, &rows);
    const int64_t mb = direct_block(Kg, segs), Mpad = (Kg + mb - 1) / mb * mb;
    std::vector<int64_t> off(static_cast<size_t>(R));
    direct_offsets(d, off.data());
    int64_t nseg = 0;
    for (const Seg& sg : segs) nseg += sg.mask != 0;
    if (use_kvec(Kg, s.OH, s.OW, Mpad * nseg * 16)) {
        // wT is (groups, R, ldw): wT[g][r][k] = w[g*Kg + k][r], zero past Kg.
        const int64_t ldw = (Kg + 15) / 16 * 16;
        float* wT = tl_wpack.get(s.groups * R * ldw);
        parallel_for(
            s.groups * R,
            [&](int64_t gr) {
                const auto [g, r] = split_index(gr, R);
                for (int64_t k = 0; k < ldw; ++k) wT[gr * ldw + k] = k < Kg ? w[(g * Kg + k) * R + r] : 0.f;
            },
            threads);
        parallel_for(
            s.N,
            [&](int64_t n) {
                float* xp = tl_pad.get(d.padded_size());
                float* outT = tl_out.get((s.OH * s.OW + 16) * kKvecLdt);  // (OH*OW, kKvecLdt) and a spare row
                for (int64_t g = 0; g < s.groups; ++g) {
                    pad_image(d, x + (n * s.C + g * Cg) * s.H * s.W, xp);
                    kvec_conv(d, off.data(), xp, wT + g * R * ldw, ldw, Kg, b ? b + g * Kg : nullptr, outT,
                              y + (n * s.K + g * Kg) * s.OH * s.OW);
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
        threads);
    parallel_for(
        s.N,
        [&](int64_t n) {
            float* xp = tl_pad.get(d.padded_size());
            float* out = rows ? nullptr : tl_out.get(Kg * Q);  // (Kg, Q)
            for (int64_t g = 0; g < s.groups; ++g) {
                pad_image(d, x + (n * s.C + g * Cg) * s.H * s.W, xp);
                float* yg = y + (n * s.K + g * Kg) * s.OH * s.OW;  // (Kg, OH, OW)
                const float* bg = b ? b + g * Kg : nullptr;
                if (rows) {
                    direct_conv(xp, off.data(), R, wp + g * Mpad * R, Kg, segs, yg, s.OH * s.OW, bg, threads,
                                [](int64_t, int64_t) {});
                } else {
                    direct_conv(xp, off.data(), R, wp + g * Mpad * R, Kg, segs, out, Q, bg, threads,
                                [&](int64_t m0, int64_t m1) { unflatten_rows(d, m0, m1, out, Q, yg); });
                }
            }
        },
        threads);
}

// dx as a stride-1 convolution of dy, padded by the dilated kernel extent minus
// the forward padding, with the flipped weights transposed to (Cg, Kg, kh, kw).
// dy is (N, K, OH, OW), w is (K, Cg, kh, kw), dx is (N, C, H, W).
void backward_dx_direct(const Conv2dShape& s, const float* dy, const float* w, float* dx, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const DirectGeom d = dx_geom(s);
    const int64_t R = d.R(), Q = d.Q();
    const int64_t khw = s.kh * s.kw;
    bool rows = false;
    const std::vector<Seg> segs = direct_segments(d, &rows);
    const int64_t mb = direct_block(Cg, segs), Mpad = (Cg + mb - 1) / mb * mb;
    int64_t nseg = 0;
    for (const Seg& sg : segs) nseg += sg.mask != 0;
    if (use_kvec(Cg, s.H, s.W, Mpad * nseg * 16)) {
        // Small dx planes: vectors over 16 input channels (kvec_conv), as in the forward.
        // wT[g][r = (k, i, j)][c] = w[g*Kg + k][c][kh-1-i][kw-1-j], zero past Cg.
        const int64_t ldw = (Cg + 15) / 16 * 16;
        float* wT = tl_wpack.get(s.groups * R * ldw);
        parallel_for(
            s.groups * R,
            [&](int64_t gr) {
                const auto [g, r] = split_index(gr, R);
                const int64_t k = r / khw, i = r % khw / s.kw, j = r % s.kw;
                for (int64_t c = 0; c < ldw; ++c)
                    wT[gr * ldw + c] =
                        c < Cg ? w[((g * Kg + k) * Cg + c) * khw + (s.kh - 1 - i) * s.kw + (s.kw - 1 - j)] : 0.f;
            },
            threads);
        std::vector<int64_t> koff(static_cast<size_t>(R));
        direct_offsets(d, koff.data());
        parallel_for(
            s.N,
            [&](int64_t n) {
                float* dyp = tl_pad.get(d.padded_size());
                float* outT = tl_out.get((s.H * s.W + 16) * kKvecLdt);  // (H*W, kKvecLdt) and a spare row
                for (int64_t g = 0; g < s.groups; ++g) {
                    pad_image(d, dy + (n * s.K + g * Kg) * s.OH * s.OW, dyp);
                    kvec_conv(d, koff.data(), dyp, wT + g * R * ldw, ldw, Cg, nullptr, outT,
                              dx + (n * s.C + g * Cg) * s.H * s.W);
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
        threads);
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
                    direct_conv(dyp, off.data(), R, wp + g * Mpad * R, Cg, segs, dxg, s.H * s.W, nullptr, threads,
                                [](int64_t, int64_t) {});
                } else {
                    direct_conv(dyp, off.data(), R, wp + g * Mpad * R, Cg, segs, out, Q, nullptr, threads,
                                [&](int64_t m0, int64_t m1) { unflatten_rows(d, m0, m1, out, Q, dxg); });
                }
            }
        },
        threads);
}

double direct_dx_cost(const Conv2dShape& s) {
    // Cg (rounded to the channel block) times the padded output segments times
    // Kg*kh*kw, or for the channel-vector kernel one FMA per 16 channels and dx
    // position times Kg*kh*kw.
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw;
    bool rows = false;
    const std::vector<Seg> segs = direct_segments(dx_geom(s), &rows);
    int64_t nseg = 0;
    for (const Seg& sg : segs) nseg += sg.mask != 0;
    const int64_t mb = direct_block(Cg, segs), nv = mb == 6 ? 4 : 3, Mpad = round_up(Cg, mb);
    if (use_kvec(Cg, s.H, s.W, Mpad * nseg * 16)) return double((Cg + 15) / 16) * double(s.H * s.W) * double(Kg * khw);
    return double(Mpad) * double(round_up(nseg, nv)) * double(Kg * khw);
}

}  // namespace conv
}  // namespace striate
