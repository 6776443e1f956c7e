// conv_winograd.cpp: 3x3, stride-1, dilation-1, ungrouped convolution forward
// and input gradient through Winograd F(2x2, 3x3): 2x2 outputs per 4x4 input
// tile from 16 products instead of 36, so 2.25x fewer multiplies than the
// direct kernel.
//
// One call: the weights are transformed once, U[a][k][c] = (G g_kc G^T)[a]
// for the 16 points a; the tiles, over (image, tile row, tile column) in that
// order, are cut into blocks of a fixed number of tiles (from the shape only).
// Per block, on one thread, with V and M in that thread's arena (kept across
// calls): the input transform V[a][c][t] = (B^T d_ct B)[a]; 16 independent
// GEMMs M[a] = U[a] . V[a] (the project's sgemm, on the calling thread);
// the output transform y = A^T M A + bias, written straight into the output.
// Blocks are independent outputs, so every value is computed the same way
// for any thread count; the transforms are fixed sequences of additions and
// the GEMM sums over channels in one order on both vector paths, so AVX2 and
// AVX-512 give the same bits.
//
// dx is the same routine on dy, padded by 2 minus the forward padding, with
// the weights rotated by 180 degrees and transposed (K <-> C).
//
// Not here: the vector transforms (conv_tiles.hpp, wino2_*), the choice of
// algorithm (conv2d.cpp), other kernel sizes, strides or groups.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "conv_internal.hpp"
#include "gemm.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {

namespace {

constexpr int64_t kPoints = 16;  // 4 x 4 transform points of F(2x2, 3x3)
constexpr int64_t kSlack = 16;   // >= the widest vector: lanes past a segment's tiles

// A stride-1 3x3 convolution of an (Cin, Hin, Win) input, padded by top on
// the top and left on the left (the bottom and right padding only show as
// zeros past the input), into a (Kout, Hout, Wout) output, in TH x TW tiles
// of 2 x 2 outputs.
struct WinoGeom {
    int64_t Cin, Hin, Win, top, left, Kout, Hout, Wout, TH, TW;
};

WinoGeom make_geom(int64_t Cin, int64_t Hin, int64_t Win, int64_t top, int64_t left, int64_t Kout, int64_t Hout,
                   int64_t Wout) {
    return {Cin, Hin, Win, top, left, Kout, Hout, Wout, (Hout + 1) / 2, (Wout + 1) / 2};
}

// Tiles per block: V and M of a block (16 (Cin + Kout) floats per tile) in
// about 384 KB, so they stay in L2 while the GEMMs read them.
int64_t block_tiles(const WinoGeom& g) {
    if (const char* e = std::getenv("STRIATE_WINO_T")) return std::max<int64_t>(16, std::atoll(e));
    const int64_t per_tile = kPoints * (g.Cin + g.Kout);
    return std::clamp<int64_t>(round_up(96 * 1024 / per_tile, 16), 32, 512);
}

// Calls f(n, th, tw0, tw1, tb) for the tile-row segments of tiles [t0, t1):
// image n, tile row th, tile columns [tw0, tw1), the first at block column tb.
template <class F>
void for_segments(const WinoGeom& g, int64_t t0, int64_t t1, F&& f) {
    const int64_t per_image = g.TH * g.TW;
    for (int64_t t = t0; t < t1;) {
        const auto [n, r] = split_index(t, per_image);
        const auto [th, tw0] = split_index(r, g.TW);
        const int64_t tw1 = std::min(g.TW, tw0 + (t1 - t));
        f(n, th, tw0, tw1, t - t0);
        t += tw1 - tw0;
    }
}

// e[j] = row[col0 + 2j], o[j] = row[col0 + 2j + 1] for j < n, zero outside
// [0, Win); all zero when the row ih is outside [0, Hin).
void deinterleave_row(const float* plane, int64_t Hin, int64_t Win, int64_t ih, int64_t col0, int64_t n, float* e,
                      float* o) {
    if (ih < 0 || ih >= Hin) {
        std::fill(e, e + n, 0.f);
        std::fill(o, o + n, 0.f);
        return;
    }
    const float* row = plane + ih * Win;
    // j in [jlo, jhi): both columns inside the row.
    const int64_t jlo = std::min(n, col0 >= 0 ? 0 : (-col0 + 1) / 2);
    const int64_t room = Win - col0;  // columns from col0 to the end of the row
    const int64_t jhi = std::max(jlo, std::min(n, room < 0 ? 0 : room / 2));
    auto at = [&](int64_t c) { return c >= 0 && c < Win ? row[c] : 0.f; };
    for (int64_t j = 0; j < jlo; ++j) {
        e[j] = at(col0 + 2 * j);
        o[j] = at(col0 + 2 * j + 1);
    }
    const float* src = row + col0;
    for (int64_t j = jlo; j < jhi; ++j) {
        e[j] = src[2 * j];
        o[j] = src[2 * j + 1];
    }
    for (int64_t j = jhi; j < n; ++j) {
        e[j] = at(col0 + 2 * j);
        o[j] = at(col0 + 2 * j + 1);
    }
}

// U[a][k][c] = (G g G^T)[a / 4][a % 4] for g(i, j) = get(k, c, i, j), with
// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
template <class Get>
void transform_weights(int64_t K, int64_t C, const Get& get, float* U, int threads) {
    parallel_for(
        K,
        [&](int64_t k) {
            for (int64_t c = 0; c < C; ++c) {
                float g[3][3], t[4][3];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) g[i][j] = get(k, c, i, j);
                for (int j = 0; j < 3; ++j) {  // t = G g
                    t[0][j] = g[0][j];
                    t[1][j] = (g[0][j] + g[1][j] + g[2][j]) * 0.5f;
                    t[2][j] = (g[0][j] - g[1][j] + g[2][j]) * 0.5f;
                    t[3][j] = g[2][j];
                }
                for (int p = 0; p < 4; ++p) {  // t G^T
                    const float u[4] = {t[p][0], (t[p][0] + t[p][1] + t[p][2]) * 0.5f,
                                        (t[p][0] - t[p][1] + t[p][2]) * 0.5f, t[p][2]};
                    for (int q = 0; q < 4; ++q) U[((p * 4 + q) * K + k) * C + c] = u[q];
                }
            }
        },
        threads);
}

// out (N, Kout, Hout, Wout) = conv(in (N, Cin, Hin, Win)) + bias through the
// transformed weights U (16, Kout, Cin); bias may be null.
void winograd_conv(const ConvKit& kit, const WinoGeom& g, int64_t N, const float* in, const float* U,
                   const float* bias, float* out, int threads) {
    const int64_t W = kit.W, total = N * g.TH * g.TW;
    const int64_t T = block_tiles(g), ld = round_up(T, 16) + kSlack;
    const int64_t nblocks = (total + T - 1) / T;
    const int64_t rowlen = round_up(g.TW + 1, 16) + kSlack;  // one even or odd input row
    const int64_t v_size = kPoints * g.Cin * ld, m_size = kPoints * g.Kout * ld + kSlack;
    parallel_for(
        nblocks,
        [&](int64_t blk) {
            const int64_t t0 = blk * T, t1 = std::min(total, t0 + T), nt = t1 - t0;
            float* V = tl_wino.get(v_size + m_size + 8 * rowlen);
            float* M = V + v_size;
            float* rows = M + m_size;
            const float* e[4] = {rows, rows + 2 * rowlen, rows + 4 * rowlen, rows + 6 * rowlen};
            const float* o[4] = {rows + rowlen, rows + 3 * rowlen, rows + 5 * rowlen, rows + 7 * rowlen};
            // Input transform, segment after segment: the scratch lanes a segment
            // writes past its tiles belong to later segments (or the slack).
            for_segments(g, t0, t1, [&](int64_t n, int64_t th, int64_t tw0, int64_t tw1, int64_t tb) {
                const int64_t L = tw1 - tw0, fill = round_up(L, W) + 1;
                for (int64_t c = 0; c < g.Cin; ++c) {
                    const float* plane = in + (n * g.Cin + c) * g.Hin * g.Win;
                    for (int64_t i = 0; i < 4; ++i)
                        deinterleave_row(plane, g.Hin, g.Win, 2 * th + i - g.top, 2 * tw0 - g.left, fill,
                                         rows + 2 * i * rowlen, rows + (2 * i + 1) * rowlen);
                    kit.wino2_in(e, o, L, V + c * ld + tb, g.Cin * ld);
                }
            });
            for (int64_t a = 0; a < kPoints; ++a)
                sgemm_isa(kit.isa, false, false, g.Kout, nt, g.Cin, 1.f, U + a * g.Kout * g.Cin, g.Cin,
                          V + a * g.Cin * ld, ld, 0.f, M + a * g.Kout * ld, ld, 1);
            for_segments(g, t0, t1, [&](int64_t n, int64_t th, int64_t tw0, int64_t tw1, int64_t tb) {
                const int64_t L = tw1 - tw0, ncols = std::min(2 * tw1, g.Wout) - 2 * tw0;
                for (int64_t k = 0; k < g.Kout; ++k) {
                    float* y0 = out + ((n * g.Kout + k) * g.Hout + 2 * th) * g.Wout + 2 * tw0;
                    float* y1 = 2 * th + 1 < g.Hout ? y0 + g.Wout : nullptr;
                    kit.wino2_out(M + k * ld + tb, g.Kout * ld, L, bias ? bias[k] : 0.f, y0, y1, ncols);
                }
            });
        },
        threads);
}

bool winograd_shape(const Conv2dShape& s, const ConvKit* kit) {
    return kit && s.kh == 3 && s.kw == 3 && s.sh == 1 && s.sw == 1 && s.dh == 1 && s.dw == 1 && s.groups == 1;
}

}  // namespace

bool winograd_forward_ok(const Conv2dShape& s, const ConvKit* kit) { return winograd_shape(s, kit); }
bool winograd_dx_ok(const Conv2dShape& s, const ConvKit* kit) {
    return winograd_shape(s, kit) && s.pt <= 2 && s.pb <= 2 && s.pl <= 2 && s.pr <= 2;
}

bool winograd_forward_better(const Conv2dShape& s) { return s.C >= 16 && s.K >= 16; }
bool winograd_dx_better(const Conv2dShape& s) { return s.C >= 16 && s.K >= 16; }

void forward_winograd(const ConvKit& kit, const Conv2dShape& s, const float* x, const float* w, const float* b,
                      float* y, int threads) {
    // x (N, C, H, W), w (K, C, 3, 3), b (K,) or null, y (N, K, OH, OW).
    float* U = tl_wpack.get(kPoints * s.K * s.C);
    transform_weights(
        s.K, s.C, [&](int64_t k, int64_t c, int i, int j) { return w[((k * s.C + c) * 3 + i) * 3 + j]; }, U,
        threads);
    winograd_conv(kit, make_geom(s.C, s.H, s.W, s.pt, s.pl, s.K, s.OH, s.OW), s.N, x, U, b, y, threads);
}

void backward_dx_winograd(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx,
                          int threads) {
    // dy (N, K, OH, OW), w (K, C, 3, 3), dx (N, C, H, W): dx = conv(dy padded by 2 - p, w'),
    // w'[c][k][i][j] = w[k][c][2 - i][2 - j].
    float* U = tl_wpack.get(kPoints * s.C * s.K);
    transform_weights(
        s.C, s.K,
        [&](int64_t c, int64_t k, int i, int j) { return w[((k * s.C + c) * 3 + (2 - i)) * 3 + (2 - j)]; }, U,
        threads);
    winograd_conv(kit, make_geom(s.K, s.OH, s.OW, 2 - s.pt, 2 - s.pl, s.C, s.H, s.W), s.N, dy, U, nullptr, dx,
                  threads);
}

}  // namespace conv
}  // namespace striate
