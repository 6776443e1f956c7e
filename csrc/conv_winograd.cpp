// conv_winograd.cpp: 3x3 and 5x5, stride-1, dilation-1, ungrouped
// convolution forward and input gradient through Winograd F(2x2, 3x3) and
// F(2x2, 5x5): 2x2 outputs per 4x4 (6x6) input tile from 16 (36) products
// instead of 36 (100), so 2.25x (2.8x) fewer multiplies than the direct
// kernel.
//
// One routine for both kernel sizes R (tile T = R + 1, T * T points): the
// weights are transformed once per call, U[a][k][c] = (G g_kc G^T)[a] for
// the points a; the tiles, over (image, tile row, tile column) in that
// order, are cut into blocks of a fixed number of tiles (from the shape only).
// Per block, on one thread, with V and M in that thread's arena (kept across
// calls): the input transform V[a][c][t] = (B^T d_ct B)[a]; one GEMM per
// point, M[a] = U[a] . V[a] (the project's sgemm kernels on the calling
// thread, from U[a] packed once per call);
// the output transform y = A^T M A + bias, written straight into the output.
// Blocks are independent outputs, so every value is computed the same way
// for any thread count; the transforms are fixed sequences of additions and
// the GEMM sums over channels in one order on both vector paths, so AVX2 and
// AVX-512 give the same bits.
//
// dx is the same routine on dy, padded by R - 1 minus the forward padding,
// with the weights rotated by 180 degrees and transposed (K <-> C).
//
// Not here: the vector transforms (conv_tiles.hpp, wino2_* and wino5_*), the
// choice of algorithm (conv2d.cpp), other kernel sizes, strides or groups.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "conv_internal.hpp"
#include "gemm.hpp"
#include "memory.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {



namespace {

constexpr int64_t kSlack = 16;  // >= the widest vector: lanes past a segment's tiles

// Transform points of F(2x2, R x R): (R + 1) x (R + 1).
constexpr int64_t points(int R) { return int64_t{R + 1} * (R + 1); }

// A stride-1 R x R convolution of an (Cin, Hin, Win) input, padded by top on
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

// The tiles in blocks of whole tile rows: several whole images per block,
// runs of tile rows of the whole batch across images (5x5, see
// make_blocking), or (large planes, small batches) runs of tile rows of one
// image. From the shape only, so every thread count computes the same blocks.
struct Blocking {
    int64_t images_per_block;  // > 0: blocks of whole images; 0: blocks of rows_per_block tile rows
    int64_t rows_per_block, blocks_per_image, nblocks, max_tiles;
    int64_t span_rows = 0;  // > 0: blocks of span_rows tile rows of the whole batch, across images
};

// Tiles per block. 3x3: V and M of a block (16 (Cin + Kout) floats per tile)
// in about 384 KB, so they stay in L2 while the GEMMs read them. 5x5: about
// 2 MB (36 (Cin + Kout) floats per tile), past the 1 MB L2 of the Zen 4 it
// was measured on: the GEMM of one point reads only that point's slice, and
// longer GEMMs (more tiles) paid more than the misses. One thread, CPU time,
// AVX-512, batch 64, forward, the 384 KB budget against this one: 32 -> 64 on
// 14x14 9.6 against 8.1 ms, 64 -> 64 on 16x16 16.1 against 15.2 ms, 16 -> 32
// on 28x28 11.0 against 8.5 ms (dx and AVX2 alike).
int64_t target_tiles(const WinoGeom& g, int64_t npoints) {
    const int64_t per_tile = npoints * (g.Cin + g.Kout);
    const int64_t budget = npoints == 16 ? 96 * 1024 : 512 * 1024;  // floats
    return std::clamp<int64_t>(budget / per_tile, 32, 512);
}

constexpr int64_t kMinBlocks = 4;  // split images into row blocks below this many blocks

Blocking make_blocking(const WinoGeom& g, int64_t N, int64_t npoints) {
    const int64_t target = target_tiles(g, npoints), per_image = g.TH * g.TW;
    Blocking b{};
    // 5x5: with fewer images than the whole-image rule below asks for, still
    // whole images, as many per block as kMinBlocks blocks allow (16 -> 16 on 14x14, batch 16: 4 images a
    // block instead of 1, 0.60 -> 0.39 ms, direct 0.40; one thread, AVX-512).
    const int64_t fit = per_image <= target ? target / per_image : 0;
    if (npoints == 36 && fit > 0 && N >= 2 * kMinBlocks && N < kMinBlocks * fit) {
        b.images_per_block = N / kMinBlocks;
        b.nblocks = (N + b.images_per_block - 1) / b.images_per_block;
        b.max_tiles = b.images_per_block * per_image;
        return b;
    }
    if (npoints == 36 && g.TW % 2 == 1 && per_image <= target && N >= kMinBlocks * (target / per_image)) {
        // 5x5, an odd number of tile columns: whole images seldom fill the
        // GEMM's 16- and 32-column panels (3 images of 14x14 are 147 tiles,
        // computed as 160), so the blocks are runs of tile rows of the whole
        // batch, across images, 16 rows or a multiple. Side by side, AVX-512,
        // 2 threads, batch 64, forward / dx: 32 -> 64 on 14x14 (147 -> 112
        // tiles) 1.02-1.05x / 1.02-1.08x, AVX2 1.02x / 1.05x; 64 -> 64 on
        // 14x14 (98 -> 112) 1.05x / 1.07x; 32 -> 64 on 10x10 (150 -> 80)
        // 1.11x / 1.08x; 16 -> 32 on 18x18 (243 -> 288) 1.00x / 1.03x. With
        // an even number it did not pay: 16 -> 32 on 28x28 (196 tiles, as
        // 224) 0.97x with blocks of 224 and 0.93-0.97x with 112; 64 -> 64 on
        // 16x16 (64) 0.93x with 112.
        b.span_rows = 16 * std::max<int64_t>(1, target / (16 * g.TW));
        b.rows_per_block = std::min(b.span_rows, g.TH);
        b.nblocks = (N * g.TH + b.span_rows - 1) / b.span_rows;
        b.max_tiles = b.span_rows * g.TW;
        return b;
    }
    if (per_image <= target && N >= kMinBlocks * (target / per_image)) {
        b.images_per_block = target / per_image;
        b.nblocks = (N + b.images_per_block - 1) / b.images_per_block;
        b.max_tiles = b.images_per_block * per_image;
        return b;
    }
    int64_t rows = std::max<int64_t>(1, target / g.TW);
    if (N == 1) {
        // One image: an even number of blocks, at least two, as the budget
        // allows. kMinBlocks blocks of a small plane made GEMMs too short to
        // pay (2 threads, AVX-512, us: 32 -> 64 on 14x14, 5x5, 99 -> 79;
        // 32 -> 64 on 16x16, 49 -> 37; 64 -> 64 on 8x8, 76 -> 35), and an odd
        // count left a thread idle at the end (32 -> 32 on 32x32 in 3 blocks:
        // 69 -> 80 us).
        int64_t blocks = std::max<int64_t>(2, (g.TH + rows - 1) / rows);
        blocks = std::min(g.TH, blocks + blocks % 2);
        rows = (g.TH + blocks - 1) / blocks;
    } else {
        const int64_t wanted = (kMinBlocks + N - 1) / N;  // blocks per image
        rows = std::max<int64_t>(1, std::min(rows, (g.TH + wanted - 1) / wanted));
    }
    if (npoints == 36) {
        // The same number of blocks with their rows evened out: 64 -> 64 on 16x16 in
        // blocks of 5 + 3 tile rows (40 + 24 tiles) took 21 ms against 16 ms
        // for 4 + 4 (32 + 32 tiles; one thread, AVX-512, batch 64).
        rows = (g.TH + (g.TH + rows - 1) / rows - 1) / ((g.TH + rows - 1) / rows);
    }
    b.rows_per_block = rows;
    b.blocks_per_image = (g.TH + rows - 1) / rows;
    b.nblocks = N * b.blocks_per_image;
    b.max_tiles = rows * g.TW;
    return b;
}

// Calls f(n, th0, th1, tb) for the chunks of block blk: tile rows [th0, th1)
// of image n, whose first tile is column tb of the block.
template <class F>
void for_chunks(const WinoGeom& g, const Blocking& b, int64_t N, int64_t blk, F&& f) {
    if (b.span_rows > 0) {
        const int64_t r0 = blk * b.span_rows, r1 = std::min(N * g.TH, r0 + b.span_rows);
        for (int64_t r = r0; r < r1;) {
            const int64_t n = r / g.TH, th0 = r % g.TH, th1 = std::min(g.TH, th0 + (r1 - r));
            f(n, th0, th1, (r - r0) * g.TW);
            r += th1 - th0;
        }
        return;
    }
    if (b.images_per_block > 0) {
        const int64_t n0 = blk * b.images_per_block, n1 = std::min(N, n0 + b.images_per_block);
        for (int64_t n = n0; n < n1; ++n) f(n, int64_t{0}, g.TH, (n - n0) * g.TH * g.TW);
        return;
    }
    const auto [n, part] = split_index(blk, b.blocks_per_image);
    const int64_t th0 = part * b.rows_per_block;
    f(n, th0, std::min(g.TH, th0 + b.rows_per_block), int64_t{0});
}

// U[a][k][c] = (G g G^T)[a / 4][a % 4] for g(i, j) = get(k, c, i, j), with
// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
template <class Get>
void transform_weights3(int64_t K, int64_t C, const Get& get, float* U, int threads) {
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

// U[a][k][c] = (G g G^T)[a / 6][a % 6] for the 5 x 5 g(i, j) = get(k, c, i, j),
// with G of the points 0, 1, -1, 2, -1/2, infinity (conv_tiles.hpp):
//   G = [[    1,     0,     0,    0,     0],
//        [ -1/3,  -1/3,  -1/3, -1/3,  -1/3],
//        [  1/3,  -1/3,   1/3, -1/3,   1/3],
//        [ 1/15,  2/15,  4/15, 8/15, 16/15],
//        [-16/15, 8/15, -4/15, 2/15, -1/15],
//        [    0,     0,     0,    0,     1]].
// In float64, rounded once to float32 (the thirds and fifteenths are inexact),
// through the even and odd sums the rows share (the transform is a fixed
// cost per call, most of what a batch of one pays over the direct kernel).
inline void g5(const double (&g)[5], double (&t)[6]) {
    const double e = g[0] + g[2] + g[4], o = g[1] + g[3];
    t[0] = g[0];
    t[1] = (e + o) * (-1.0 / 3);
    t[2] = (e - o) * (1.0 / 3);
    t[3] = (g[0] + 2 * g[1] + 4 * g[2] + 8 * g[3] + 16 * g[4]) * (1.0 / 15);
    t[4] = (-16 * g[0] + 8 * g[1] - 4 * g[2] + 2 * g[3] - g[4]) * (1.0 / 15);
    t[5] = g[4];
}

template <class Get>
void transform_weights5(int64_t K, int64_t C, const Get& get, float* U, int threads) {
    constexpr int64_t kRun = 16;  // channels per run of stores
    parallel_for(
        K,
        [&](int64_t k) {
            for (int64_t c0 = 0; c0 < C; c0 += kRun) {
                const int64_t nc = std::min(kRun, C - c0);
                // The 36 points of kRun channels, then stored as runs of whole cache
                // lines: one channel at a time, 36 stores K C floats apart (a
                // multiple of 4 KB, all in one L1 set) made the transform 195 us of a
                // 360 us batch-1 call (32 -> 64, 14x14; now 65 us). The channels
                // side by side in the inner loops, for the compiler to vectorise,
                // took 117 us.
                float u[36][kRun];
                for (int64_t cc = 0; cc < nc; ++cc) {
                    double t[6][5];  // G g
                    for (int j = 0; j < 5; ++j) {
                        double col[5], tc[6];
                        for (int i = 0; i < 5; ++i) col[i] = get(k, c0 + cc, i, j);
                        g5(col, tc);
                        for (int p = 0; p < 6; ++p) t[p][j] = tc[p];
                    }
                    for (int p = 0; p < 6; ++p) {  // (G g) G^T, row p
                        double r[6];
                        g5(t[p], r);
                        for (int q = 0; q < 6; ++q) u[p * 6 + q][cc] = static_cast<float>(r[q]);
                    }
                }
                for (int a = 0; a < 36; ++a)
                    std::memcpy(U + (a * K + k) * C + c0, u[a], static_cast<size_t>(nc) * sizeof(float));
            }
        },
        threads);
}

template <class Get>
void transform_weights(int R, int64_t K, int64_t C, const Get& get, float* U, int threads) {
    if (R == 3) {
        transform_weights3(K, C, get, U, threads);
    } else {
        transform_weights5(K, C, get, U, threads);
    }
}

// out (N, Kout, Hout, Wout) = conv(in (N, Cin, Hin, Win)) + bias with an
// R x R kernel (R = 3 or 5) through the transformed weights, packed per point
// for the GEMM: point a's (Kout, Cin) matrix at PU + a * ps (pack_points);
// bias may be null.
void winograd_conv(const ConvKit& kit, int R, const WinoGeom& g, int64_t N, const float* in, const float* PU,
                   int64_t ps, const float* bias, float* out, int threads) {
    const int T = R + 1;  // tile side; T column phases per row parity
    const int64_t npoints = points(R);
    const wino_split_fn split = R == 3 ? kit.wino2_split : kit.wino5_split;
    const wino_in_fn input = R == 3 ? kit.wino2_in : kit.wino5_in;
    const wino_out_fn output = R == 3 ? kit.wino2_out : kit.wino5_out;
    const Blocking bk = make_blocking(g, N, npoints);
    const int64_t TW = g.TW, ld = round_up(bk.max_tiles, 16) + kSlack;
    // Point strides one cache line past the channel rows, so the points of
    // one tile land in different cache sets (ld * channels is often a multiple of 4 KB).
    const int64_t vs = g.Cin * ld + 16, ms = g.Kout * ld + 16;
    const int64_t v_size = npoints * vs, m_size = npoints * ms + kSlack;
    // Scratch: the 2 T split-row arrays (row parity x column phase) of up to
    // rows_max + T / 2 - 1 row pairs; the two output rows of every tile row.
    const int64_t rows_max = bk.images_per_block > 0 ? g.TH : bk.rows_per_block;
    const int64_t arr = (rows_max + T / 2 - 1) * TW + kSlack;
    const int64_t y_size = 2 * rows_max * TW + 2 * kSlack;
    const int64_t scratch = v_size + m_size + 2 * T * arr + 2 * y_size;
    parallel_for(
        bk.nblocks,
        [&](int64_t blk) {
            float* V = tl_wino.get(scratch);
            float* M = V + v_size;
            float* A = M + m_size;     // split rows: A + (parity * T + phase) * arr
            float* Y = A + 2 * T * arr;  // output rows: Y + r * y_size
            int64_t nt = 0;
            // Input transform, chunk after chunk: the scratch lanes a chunk writes
            // past its tiles belong to later chunks (or the slack).
            for_chunks(g, bk, N, blk, [&](int64_t n, int64_t th0, int64_t th1, int64_t tb) {
                const int64_t P = (th1 - th0) * TW;
                nt = tb + P;
                // d[i][q] of tile p (input row 2 th + i): array (i % 2, q) at p + (i / 2) TW.
                const float* src[36];
                for (int i = 0; i < T; ++i)
                    for (int q = 0; q < T; ++q) src[T * i + q] = A + ((i % 2) * T + q) * arr + (i / 2) * TW;
                for (int64_t c = 0; c < g.Cin; ++c) {
                    // The input rows split by column phase (kit.wino*_split): a scalar split
                    // took 12-23% of a 16-channel 32x32 forward.
                    split(in + (n * g.Cin + c) * g.Hin * g.Win, g.Hin, g.Win, g.top, g.left, 2 * th0,
                          2 * th1 + R - 1, th0, TW, A, arr);
                    input(src, P, V + c * ld + tb, vs);
                }
            });
            for (int64_t a = 0; a < npoints; ++a)
                sgemm_packed(kit.isa, g.Kout, nt, g.Cin, PU + a * ps, V + a * vs, ld, M + a * ms, ld);
            for_chunks(g, bk, N, blk, [&](int64_t n, int64_t th0, int64_t th1, int64_t tb) {
                const int64_t P = (th1 - th0) * TW, oh1 = std::min(g.Hout, 2 * th1);
                for (int64_t k = 0; k < g.Kout; ++k) {
                    output(M + k * ld + tb, ms, P, bias ? bias[k] : 0.f, Y, Y + y_size);
                    float* plane = out + (n * g.Kout + k) * g.Hout * g.Wout;
                    for (int64_t oh = 2 * th0; oh < oh1; ++oh)
                        std::memcpy(plane + oh * g.Wout, Y + (oh % 2) * y_size + (oh / 2 - th0) * 2 * TW,
                                    static_cast<size_t>(g.Wout) * sizeof(float));
                }
            });
        },
        threads);
}

// Floats of one point's packed (Kout, Cin) weights, rounded to whole cache lines.
int64_t packed_size(const ConvKit& kit, int64_t Kout, int64_t Cin) {
    return round_up(sgemm_packed_a_size(kit.isa, Kout, Cin), 16);
}

// The points' (Kout, Cin) matrices of U packed once per call, after U (in
// the same arena): the GEMM of every block then starts from them (packing per
// block cost 5-6% of a ResNet-20 forward).
float* pack_points(const ConvKit& kit, int64_t npoints, int64_t Kout, int64_t Cin, float* U, int64_t ps) {
    float* PU = U + npoints * round_up(Kout * Cin, 16);
    for (int64_t a = 0; a < npoints; ++a) sgemm_pack_a(kit.isa, Kout, Cin, U + a * Kout * Cin, Cin, PU + a * ps);
    return PU;
}

bool winograd_shape(const Conv2dShape& s, const ConvKit* kit) {
    return kit && (s.kh == 3 || s.kh == 5) && s.kw == s.kh && s.sh == 1 && s.sw == 1 && s.dh == 1 && s.dw == 1 &&
           s.groups == 1;
}

}  // namespace

bool winograd_forward_ok(const Conv2dShape& s, const ConvKit* kit) { return winograd_shape(s, kit); }
bool winograd_dx_ok(const Conv2dShape& s, const ConvKit* kit) {
    const int64_t r1 = s.kh - 1;  // dx pads dy by r1 - p on each side
    return winograd_shape(s, kit) && s.pt <= r1 && s.pb <= r1 && s.pl <= r1 && s.pr <= r1;
}

// At least 16 input and output channels, 3x3 and 5x5 alike. Never the batch
// size: a sample must get the same bits whatever the batch it is computed in
// (fit's frozen-backbone feature cache relies on it), so a batch of one pays
// the per-call weight transform and packing alone. 5x5, one thread, CPU time
// in ms (the machine was shared, so not wall clock), direct -> Winograd
// forward / dx, AVX-512 and AVX2:
//   batch 64:
//   32 -> 64, 14x14, pad 2   12.0 -> 8.4 / 11.9 -> 8.8     12.6 -> 8.1 / 12.4 -> 8.9
//   64 -> 64, 16x16, pad 2   30.3 -> 14.9 / 31.2 -> 15.5   33.0 -> 15.9 / 31.8 -> 15.9
//   16 -> 32, 28x28, pad 2   12.2 -> 8.8 / 12.3 -> 9.4     13.2 -> 10.0 / 17.8 -> 14.1
//   16 -> 16, 14x14, pad 2   1.57 -> 1.43 / 1.64 -> 1.54   1.67 -> 1.57 / 1.79 -> 1.69
//   8 -> 16, 28x28, pad 2    3.42 -> 3.51 / 4.39 -> 3.91   3.67 -> 3.98 / 4.83 -> 4.23
//   small batches:
//   32 -> 64, 14x14, N 1     0.21 -> 0.23 / 0.27 -> 0.36   0.21 -> 0.25 / 0.24 -> 0.27
//   32 -> 64, 14x14, N 4     0.77 -> 0.60 / 0.80 -> 0.66   0.76 -> 0.59 / 0.85 -> 0.69
//   64 -> 64, 16x16, N 1     0.50 -> 0.43 / 0.59 -> 0.45   0.52 -> 0.40 / 0.61 -> 0.43
//   16 -> 32, 28x28, N 1     0.20 -> 0.17 / 0.21 -> 0.18   0.20 -> 0.18 / 0.21 -> 0.19
//   16 -> 16, 14x14, N 16    0.39 -> 0.36 / 0.40 -> 0.37   0.45 -> 0.38 / 0.41 -> 0.38
//   (2 threads, wall clock, beside another 2-thread job: 0.9-2.4x for the
//   first three rows over two runs, medians of 15 pairs, too noisy to rank.)
// so 16 channels is still where it starts to pay (8 -> 16 is even, LeNet C3,
// 6 -> 16, stays direct); only the smallest call measured, one 14x14 image,
// is slower.
bool winograd_forward_better(const Conv2dShape& s) { return s.C >= 16 && s.K >= 16; }
bool winograd_dx_better(const Conv2dShape& s) { return s.C >= 16 && s.K >= 16; }

namespace {

// Transform and pack the forward weights w (K, C, R, R) into U (the
// arena layout pack_points expects); returns the packed points.
float* prepare_forward(const ConvKit& kit, const Conv2dShape& s, const float* w, float* U, int threads) {
    const int R = static_cast<int>(s.kh);
    transform_weights(
        R, s.K, s.C, [&](int64_t k, int64_t c, int i, int j) { return w[((k * s.C + c) * R + i) * R + j]; }, U,
        threads);
    return pack_points(kit, points(R), s.K, s.C, U, packed_size(kit, s.K, s.C));
}

int64_t forward_u_size(const ConvKit& kit, const Conv2dShape& s) {
    return points(static_cast<int>(s.kh)) * (round_up(s.K * s.C, 16) + packed_size(kit, s.K, s.C));
}

// Transformed, packed forward weights of recent calls with few tiles, found
// again by the weights' contents. A batch of one pays the transform and the
// packing alone (in a 32 -> 64 3x3 layer on one 16x16 image they took more
// time than the GEMMs), and an inference model calls every layer again with
// the same weights. A hit compares the weights byte for byte with the copy
// kept (a few microseconds), so changed weights are never served stale; the
// transform is deterministic, so a hit gives the bits a fresh transform gives.
struct Prepared {
    Isa isa;
    int64_t K, C, R;
    const float* source;      // where the weights were read (to replace a layer's stale entry)
    std::vector<float> raw;   // the weights, as they were
    std::unique_ptr<float[], void (*)(float*)> u{nullptr, [](float* p) { free_workspace(p, 64); }};
    const float* pu = nullptr;  // the packed points, inside u
    int64_t floats() const { return static_cast<int64_t>(raw.size()) + u_size; }
    int64_t u_size = 0;
};

class PreparedCache {
   public:
    static constexpr int64_t kMaxFloats = int64_t{8} << 20;  // 32 MB over all entries

    std::shared_ptr<const Prepared> find(const ConvKit& kit, const Conv2dShape& s, const float* w) {
        const size_t bytes = static_cast<size_t>(s.K * s.C * s.kh * s.kw) * sizeof(float);
        std::lock_guard<std::mutex> lock(mutex_);
        for (size_t i = entries_.size(); i-- > 0;) {
            const auto& e = entries_[i];
            if (e->isa == kit.isa && e->K == s.K && e->C == s.C && e->R == s.kh &&
                std::memcmp(e->raw.data(), w, bytes) == 0) {
                auto hit = e;
                entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
                entries_.push_back(hit);  // most recently used last
                ++hits_;
                return hit;
            }
        }
        ++misses_;
        return nullptr;
    }

    std::shared_ptr<const Prepared> add(const ConvKit& kit, const Conv2dShape& s, const float* w, int threads) {
        auto e = std::make_shared<Prepared>();
        e->isa = kit.isa;
        e->K = s.K;
        e->C = s.C;
        e->R = s.kh;
        e->source = w;
        e->raw.assign(w, w + s.K * s.C * s.kh * s.kw);
        e->u_size = forward_u_size(kit, s);
        e->u.reset(static_cast<float*>(allocate_workspace(e->u_size, sizeof(float), 64, "the Winograd weight cache")));
        e->pu = prepare_forward(kit, s, e->raw.data(), e->u.get(), threads);
        if (e->floats() > kMaxFloats) return e;  // used once, not kept
        std::lock_guard<std::mutex> lock(mutex_);
        // The same layer's earlier weights (read from the same place, same shape) will not come back.
        entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                      [&](const auto& o) {
                                          return o->source == w && o->isa == e->isa && o->K == e->K &&
                                                 o->C == e->C && o->R == e->R;
                                      }),
                       entries_.end());
        entries_.push_back(e);
        int64_t total = 0;
        for (const auto& o : entries_) total += o->floats();
        while (total > kMaxFloats) {
            total -= entries_.front()->floats();
            entries_.erase(entries_.begin());
        }
        return e;
    }

    WinogradCacheStats stats() {
        std::lock_guard<std::mutex> lock(mutex_);
        WinogradCacheStats st{hits_, misses_, static_cast<int64_t>(entries_.size()), 0};
        for (const auto& o : entries_) st.bytes += o->floats() * static_cast<int64_t>(sizeof(float));
        return st;
    }

    void clear() {
        std::lock_guard<std::mutex> lock(mutex_);
        entries_.clear();
        hits_ = misses_ = 0;
    }

   private:
    std::mutex mutex_;
    std::vector<std::shared_ptr<Prepared>> entries_;
    int64_t hits_ = 0, misses_ = 0;
};

PreparedCache& prepared_cache() {
    static PreparedCache cache;
    return cache;
}

// Calls with at most this many tiles keep their prepared weights: at 256
// tiles of 16 points the transform and packing are still about a tenth of a
// 3x3 call, at 64 (one 16x16 image) more than half.
constexpr int64_t kCachedTiles = 1024;

}  // namespace


void forward_winograd(const ConvKit& kit, const Conv2dShape& s, const float* x, const float* w, const float* b,
                      float* y, int threads) {
    // x (N, C, H, W), w (K, C, R, R), b (K,) or null, y (N, K, OH, OW).
    const int R = static_cast<int>(s.kh);
    const int64_t ps = packed_size(kit, s.K, s.C);
    const WinoGeom g = make_geom(s.C, s.H, s.W, s.pt, s.pl, s.K, s.OH, s.OW);
    if (s.N * g.TH * g.TW <= kCachedTiles) {
        auto prepared = prepared_cache().find(kit, s, w);
        if (!prepared) prepared = prepared_cache().add(kit, s, w, threads);
        winograd_conv(kit, R, g, s.N, x, prepared->pu, ps, b, y, threads);
        return;
    }
    const float* PU = prepare_forward(kit, s, w, tl_wpack.get(forward_u_size(kit, s)), threads);
    winograd_conv(kit, R, g, s.N, x, PU, ps, b, y, threads);
}

void backward_dx_winograd(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx,
                          int threads) {
    // dy (N, K, OH, OW), w (K, C, R, R), dx (N, C, H, W): dx = conv(dy padded by R - 1 - p, w'),
    // w'[c][k][i][j] = w[k][c][R - 1 - i][R - 1 - j].
    const int R = static_cast<int>(s.kh);
    const int64_t np = points(R), ps = packed_size(kit, s.C, s.K);
    float* U = tl_wpack.get(np * (round_up(s.C * s.K, 16) + ps));
    transform_weights(
        R, s.C, s.K,
        [&](int64_t c, int64_t k, int i, int j) { return w[((k * s.C + c) * R + (R - 1 - i)) * R + (R - 1 - j)]; },
        U, threads);
    float* PU = pack_points(kit, np, s.C, s.K, U, ps);
    winograd_conv(kit, R, make_geom(s.K, s.OH, s.OW, R - 1 - s.pt, R - 1 - s.pl, s.C, s.H, s.W), s.N, dy, PU, ps,
                  nullptr, dx, threads);
}

}  // namespace conv

WinogradCacheStats winograd_cache_stats() { return conv::prepared_cache().stats(); }
void winograd_cache_clear() { conv::prepared_cache().clear(); }

}  // namespace striate
