// conv2d.cpp: 2-D convolution forward and backward (float32, NCHW).
//
// Paths, chosen from the shape and the CPU only (never the thread count):
//   forward, stride 1, AVX-512: direct kernel reading the zero-padded image
//       (vectors along output rows or the padded-width flattening; for small
//       outputs, vectors over 16 output channels); bias fused.
//   dx, stride 1, padding <= dilated kernel extent, AVX-512: the same kernel
//       on the padded dy with flipped, transposed weights (for small dx planes
//       the channel-vector variant, over 16 input channels), unless the scatter
//       dx needs fewer FMAs (small outputs such as LeNet C3) or the padding is
//       wider: scatter dx adds bands of dy convolved with one kernel row into
//       the padded dx (no padded dy, no col2im).
//   dw, >= 16 input channels per group, AVX-512, any stride: outer-product
//       tiles on a channels-last copy of x and the transposed dy.
//   dw, < 16 input and 12..16 output channels per group, stride 1, kernel
//       width 3 or 5, AVX-512 (LeNet C3): vectors over the output channels,
//       x broadcast from the padded image (kvec dw).
//   dw, < 16 input and <= 16 output channels per group, stride 1, AVX-512,
//       output rows filling at least half of the padded width (LeNet C1):
//       masked vectors over positions flattened along the padded width,
//       lanes summed once per batch chunk (flat dw).
//   everything else (strided forward/dx, 1x1 stride-1 unpadded, dw with few
//   input and over 16 output channels such as 3->32, CPUs without AVX-512):
//   im2col + SGEMM, per image n and
//   group g (Kg = K/groups, Cg = C/groups, CKK = Cg*kh*kw, P = OH*OW):
//       forward   y[n,g] (Kg x P)   = w[g] (Kg x CKK) . cols (CKK x P)
//       backward  dcols (CKK x P)   = w[g]^T . dy[n,g];  dx[n,g] = col2im(dcols)
//                 dw[g] (Kg x CKK)  = sum_n dy[n,g] . cols^T
//   db[k] = sum_n sum_p dy[n,k,p] always in fixed-order lanes (sum_fixed).
// A 1x1 kernel with stride 1 and no padding uses x (and dx) as cols directly.
//
// Threads split the batch (or independent rows of packed weights); when the
// batch alone cannot keep them busy (one image, one dw chunk) the direct
// forward and dx also split channel blocks, scatter dx channel pairs and direct
// dw kernel taps, each output still computed by one thread in the same order
// (nested parallel_for runs serially inside a batch task). dw and
// db are reduced over fixed chunks of kBatchChunk images: each chunk
// accumulates its images in index order into its own partial, and the
// partials are summed in chunk order, so every output bit is the same for any
// thread count. Scratch buffers (padded images, im2col columns, partials,
// packed weights) live in per-thread arenas kept across calls.
//
// Not here: argument checks against Python objects (bind_conv.cpp), the GEMM
// itself (gemm.cpp).
#include "conv2d.hpp"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gemm.hpp"
#include "parallel.hpp"
#include "shape.hpp"

namespace striate {

namespace {

// Images per dw/db partial. Fixed (never derived from the thread count) so that
// the reduction order, and therefore every bit of dw and db, is the same for
// any number of threads.
constexpr int64_t kBatchChunk = 4;

// A per-thread scratch buffer that grows on demand and is kept across calls,
// so steady-state training allocates nothing here.
// Buffers start on a 64-byte boundary, so rows whose stride is a multiple of
// 16 floats are read with whole-cache-line vector loads.
class Arena {
   public:
    float* get(int64_t n) {
        if (n > size_) {
            buf_.reset();  // release first so the peak is not old + new
            buf_.reset(static_cast<float*>(
                ::operator new[](static_cast<size_t>(n) * sizeof(float), std::align_val_t(kAlign))));
            size_ = n;
        }
        return buf_.get();
    }

   private:
    static constexpr size_t kAlign = 64;
    struct Free {
        void operator()(float* p) const { ::operator delete[](p, std::align_val_t(kAlign)); }
    };
    std::unique_ptr<float[], Free> buf_;
    int64_t size_ = 0;
};

thread_local Arena tl_cols;   // im2col output
thread_local Arena tl_dcols;  // input-gradient columns before col2im
thread_local Arena tl_parts;  // dw/db partials (used by the calling thread only)
thread_local Arena tl_pad;    // zero-padded image (direct path)
thread_local Arena tl_out;    // direct-path output before dropping the padded columns
thread_local Arena tl_wpack;  // packed weights for the direct path (calling thread only)
thread_local Arena tl_dyT;    // transposed dy (direct dw)

void require_positive(int64_t v, const char* name) {
    if (v <= 0) throw std::invalid_argument(std::string("`") + name + "` must be positive, got " + std::to_string(v));
}
void require_nonnegative(int64_t v, const char* name) {
    if (v < 0) {
        throw std::invalid_argument(std::string("`") + name + "` must be non-negative, got " + std::to_string(v));
    }
}

inline int64_t ceil_div_nonneg(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

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

inline bool is_pointwise(const Conv2dShape& s) {
    return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.pt == 0 && s.pb == 0 && s.pl == 0 && s.pr == 0;
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

// Sum of n floats in a fixed order (16 interleaved lanes, then the lanes in
// order), so the compiler can vectorise it without reassociating anything.
float sum_fixed(const float* p, int64_t n) {
    float acc[16] = {0.f};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int l = 0; l < 16; ++l) acc[l] += p[i + l];
    }
    for (int l = 0; i < n; ++i, ++l) acc[l] += p[i];
    float t = 0.f;
    for (int l = 0; l < 16; ++l) t += acc[l];
    return t;
}


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
constexpr int64_t kDirectSlack = 32;  // floats past the padded image that full-vector loads may touch
constexpr int64_t kDirectTaskBlocks = 2;  // channel blocks per task when one image is split over threads

// One vector of output positions: input at xp[off[r] + src + l], output at
// out[m*ldo + dst + l], for the lanes l set in mask. Loads always read all 16
// lanes (the padded buffer has kDirectSlack floats of slack); stores are masked.
struct Seg {
    int64_t src, dst;
    uint32_t mask;
};

bool cpu_has_avx512() {
    static const bool v = __builtin_cpu_supports("avx512f") != 0;
    return v;
}

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
    auto round_up = [](int64_t a, int64_t b) { return (a + b - 1) / b * b; };
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

// Geometry of one direct convolution: a (Cin, Hin, Win) input padded by
// (top, bottom, left, right) into (Cin, Hp, Wp), kernel (kh, kw) with
// dilation (dh, dw), stride 1, output (Hout, Wout) flattened with row stride Wp.
struct DirectGeom {
    int64_t Cin, Hin, Win, top, bottom, left, right, kh, kw, dh, dw;
    int64_t Hp, Wp, Hout, Wout;
    int64_t Q() const { return (Hout - 1) * Wp + Wout; }  // flattened output positions
    int64_t R() const { return Cin * kh * kw; }
    int64_t padded_size() const { return Cin * Hp * Wp + kDirectSlack; }
};

DirectGeom make_direct_geom(int64_t Cin, int64_t Hin, int64_t Win, int64_t top, int64_t bottom, int64_t left,
                            int64_t right, int64_t kh, int64_t kw, int64_t dh, int64_t dw) {
    DirectGeom d{Cin, Hin, Win, top, bottom, left, right, kh, kw, dh, dw, 0, 0, 0, 0};
    d.Hp = Hin + top + bottom;
    d.Wp = Win + left + right;
    d.Hout = d.Hp - dh * (kh - 1);
    d.Wout = d.Wp - dw * (kw - 1);
    return d;
}

// off[r] for r = (c, i, j).
void direct_offsets(const DirectGeom& d, int64_t* off) {
    for (int64_t c = 0; c < d.Cin; ++c)
        for (int64_t i = 0; i < d.kh; ++i)
            for (int64_t j = 0; j < d.kw; ++j) off[(c * d.kh + i) * d.kw + j] = c * d.Hp * d.Wp + i * d.dh * d.Wp + j * d.dw;
}

// xp = zero-padded src. src is (Cin, Hin, Win); xp holds d.padded_size() floats.
void pad_image(const DirectGeom& d, const float* src, float* xp) {
    const int64_t size = d.padded_size();
    float* p = xp;
    for (int64_t c = 0; c < d.Cin; ++c) {
        const float* sc = src + c * d.Hin * d.Win;
        std::fill(p, p + d.top * d.Wp, 0.f);
        p += d.top * d.Wp;
        for (int64_t h = 0; h < d.Hin; ++h) {
            std::fill(p, p + d.left, 0.f);
            std::memcpy(p + d.left, sc + h * d.Win, static_cast<size_t>(d.Win) * sizeof(float));
            std::fill(p + d.left + d.Win, p + d.Wp, 0.f);
            p += d.Wp;
        }
        std::fill(p, p + d.bottom * d.Wp, 0.f);
        p += d.bottom * d.Wp;
    }
    std::fill(p, xp + size, 0.f);
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

// Direct path usable for this geometry? (stride 1 and an AVX-512 CPU; for dx
// also padding no wider than the dilated kernel, so that dy's padding is >= 0.)
bool direct_forward_ok(const Conv2dShape& s) { return s.sh == 1 && s.sw == 1 && cpu_has_avx512(); }
bool direct_dx_ok(const Conv2dShape& s) {
    const int64_t eh = s.dh * (s.kh - 1), ew = s.dw * (s.kw - 1);
    return direct_forward_ok(s) && s.pt <= eh && s.pb <= eh && s.pl <= ew && s.pr <= ew;
}

// ---- direct dw (AVX-512), for Cg >= 16 and any stride ------------------------
//
// dw[k][c][i][j] = sum_n sum_p dy[n][k][p] * xpad[n][c][src(p) + i*dh*Wp + j*dw]
// with src(p) = oh*sh*Wp + ow*sw. Per image, x is copied into a zero-padded
// channels-last buffer xT (Hp*Wp pixels x ldc channels) and dy into dyT
// (P x ldk), so that for each kernel tap (i, j) the partial
// part[i][j][k][c] += sum_p dyT[p][k] * xT[src(p) + off_ij][c]
// is an outer-product update vectorised over c (loads) with k broadcast, and
// no im2col matrix exists. The sum over p runs in order, images in chunk order,
// so the result does not depend on the tiling or the thread count.

struct DwTile {
    int mv, nr;  // vectors of 16 input channels, output channels per tile
};

template <int MV, int NR>
__attribute__((target("avx512f,fma"))) void dw_tile_avx512(const float* xT, int64_t ldc, const int64_t* src, int64_t P,
                                                            const float* dyT, int64_t ldk, float* part, bool first) {
    __m512 acc[NR][MV];
    for (int r = 0; r < NR; ++r)
        for (int v = 0; v < MV; ++v)
            acc[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(part + r * ldc + 16 * v);
    for (int64_t p = 0; p < P; ++p) {
        const float* xrow = xT + src[p] * ldc;
        __m512 xv[MV];
        for (int v = 0; v < MV; ++v) xv[v] = _mm512_loadu_ps(xrow + 16 * v);
        const float* drow = dyT + p * ldk;
        for (int r = 0; r < NR; ++r) {
            const __m512 b = _mm512_set1_ps(drow[r]);
            for (int v = 0; v < MV; ++v) acc[r][v] = _mm512_fmadd_ps(b, xv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < NR; ++r)
        for (int v = 0; v < MV; ++v) _mm512_storeu_ps(part + r * ldc + 16 * v, acc[r][v]);
}

using dw_tile_fn = void (*)(const float*, int64_t, const int64_t*, int64_t, const float*, int64_t, float*, bool);

struct DwVariant {
    DwTile t;
    dw_tile_fn fn;
};
const DwVariant kDwVariants[] = {
    {{4, 6}, dw_tile_avx512<4, 6>}, {{3, 8}, dw_tile_avx512<3, 8>}, {{2, 12}, dw_tile_avx512<2, 12>},
    {{2, 8}, dw_tile_avx512<2, 8>}, {{1, 16}, dw_tile_avx512<1, 16>},
};

// The variant with the least padded work for Cg input and Kg output channels.
const DwVariant& choose_dw_variant(int64_t Cg, int64_t Kg) {
    auto round_up = [](int64_t a, int64_t b) { return (a + b - 1) / b * b; };
    const DwVariant* best = &kDwVariants[0];
    double best_work = -1;
    for (const DwVariant& v : kDwVariants) {
        // Padded FMAs, weighted lightly by the loads each tile step issues per FMA
        // (the tiles are FMA-bound: 64->64 on 7x7 and 16x16 ran 4-6% faster with
        // the unpadded 2 x 8 tile than with 4 x 6 and its 66 padded channels).
        const double work = double(round_up(Cg, 16 * v.t.mv) * round_up(Kg, v.t.nr)) *
                             (1.0 + 0.1 * double(v.t.mv + v.t.nr) / double(v.t.mv * v.t.nr));
        if (best_work < 0 || work < best_work) {
            best = &v;
            best_work = work;
        }
    }
    return *best;
}

bool direct_dw_ok(const Conv2dShape& s) { return s.C / s.groups >= 16 && cpu_has_avx512(); }

// dst[j*ldd + r] = src[r*lds + j] for r < 16, j < ncols (<= 16): 16 full lanes are
// stored per destination row, lanes r >= nrows are zero (or, with
// store_valid_only, only the lanes r < nrows are stored).
__attribute__((target("avx512f"))) void transpose_block16(const float* src, int64_t lds, int64_t nrows,
                                                          int64_t ncols, float* dst, int64_t ldd,
                                                          bool store_valid_only = false) {
    const __mmask16 cm = ncols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << ncols) - 1u);
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < nrows ? _mm512_maskz_loadu_ps(cm, src + i * lds) : _mm512_setzero_ps();
    // Stage 1: interleave pairs of rows.
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    // Stage 2: pairs of 64-bit elements.
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    // Stage 3 and 4: 128-bit lanes.
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
    // r[j] now holds column j of the block.
    const __mmask16 rm = store_valid_only && nrows < 16 ? __mmask16((1u << nrows) - 1u) : __mmask16(0xFFFF);
    for (int j = 0; j < ncols; ++j) _mm512_mask_storeu_ps(dst + j * ldd, rm, r[j]);
}

// xT (Hp*Wp, ldc) = zero-padded channels-last copy of x (Cg, H, W); ldc is a multiple of 16.
void pad_transpose(const Conv2dShape& s, int64_t Cg, int64_t Wp, int64_t Hp, int64_t ldc, const float* x, float* xT) {
    const int64_t HW = s.H * s.W, cfull = (Cg + 15) / 16 * 16;
    for (int64_t hp = 0; hp < Hp; ++hp) {
        float* drow = xT + hp * Wp * ldc;
        const int64_t h = hp - s.pt;
        if (h < 0 || h >= s.H) {
            std::fill(drow, drow + Wp * ldc, 0.f);
            continue;
        }
        std::fill(drow, drow + s.pl * ldc, 0.f);
        std::fill(drow + (s.pl + s.W) * ldc, drow + Wp * ldc, 0.f);
        for (int64_t w0 = 0; w0 < s.W; w0 += 16) {
            const int64_t nw = std::min<int64_t>(16, s.W - w0);
            for (int64_t c0 = 0; c0 < Cg; c0 += 16)
                transpose_block16(x + c0 * HW + h * s.W + w0, HW, std::min<int64_t>(16, Cg - c0), nw,
                                  drow + (s.pl + w0) * ldc + c0, ldc);
            if (cfull < ldc)
                for (int64_t w = w0; w < w0 + nw; ++w) std::fill(drow + (s.pl + w) * ldc + cfull, drow + (s.pl + w + 1) * ldc, 0.f);
        }
    }
}

// dyT (P, ldk) = transpose of dy (Kg, P); ldk is a multiple of 16, columns past Kg zero.
void transpose_dy(int64_t Kg, int64_t P, int64_t ldk, const float* dy, float* dyT) {
    const int64_t kfull = (Kg + 15) / 16 * 16;
    for (int64_t p0 = 0; p0 < P; p0 += 16) {
        const int64_t np = std::min<int64_t>(16, P - p0);
        for (int64_t k0 = 0; k0 < Kg; k0 += 16)
            transpose_block16(dy + k0 * P + p0, P, std::min<int64_t>(16, Kg - k0), np, dyT + p0 * ldk + k0, ldk);
        if (kfull < ldk)
            for (int64_t p = p0; p < p0 + np; ++p) std::fill(dyT + p * ldk + kfull, dyT + (p + 1) * ldk, 0.f);
    }
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


// y = conv(x, w) + b through direct_conv (stride 1).
// x is (N, C, H, W), w is (K, Cg, kh, kw), b is (K,) or null, y is (N, K, OH, OW).
void forward_direct(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const DirectGeom d = make_direct_geom(Cg, s.H, s.W, s.pt, s.pb, s.pl, s.pr, s.kh, s.kw, s.dh, s.dw);
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
                const int64_t g = gr / R, r = gr % R;
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
            const int64_t g = gm / Mpad, m = gm % Mpad;
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
    const int64_t eh = s.dh * (s.kh - 1), ew = s.dw * (s.kw - 1);
    const DirectGeom d =
        make_direct_geom(Kg, s.OH, s.OW, eh - s.pt, eh - s.pb, ew - s.pl, ew - s.pr, s.kh, s.kw, s.dh, s.dw);
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
                const int64_t g = gr / R, r = gr % R, k = r / khw, i = r % khw / s.kw, j = r % s.kw;
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
            const int64_t g = gc / Mpad, c = gc % Mpad;
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

// ---- flat dw (AVX-512), for Cg < 16 and stride 1 ------------------------------
//
// With stride 1, output position (oh, ow) flattened over the padded input width
// as q = oh*Wp + ow reads xp[off[r] + q] for reduction row r = (c, i, j). With
// dy laid out the same way (dyf[k][q], zero where ow >= OW),
// dw[k][r] = sum_n sum_q dyf[n][k][q] * xp[n][off[r] + q]: both operands are
// contiguous in q, so a register tile of MK output channels x NR rows keeps
// one 16-lane accumulator per (k, r), runs over every q-vector of every image
// of one batch chunk in order, and is reduced across lanes once at the end
// (a fixed instruction sequence). The FMAs are masked to the real output
// positions, so lanes with ow >= OW leave their accumulators alone and a
// non-finite x that no window of tap (i, j) covers never reaches dw[.][.][i][j]. No im2col matrix,
// no transposes; the result depends on the chunk only, never on the tiling or
// the thread count.

constexpr int kFlatMaxMK = 6, kFlatMaxNR = 6;

template <int MK, int NR>
__attribute__((target("avx512f,fma"))) void flat_dw_tile_avx512(const float* xp, int64_t xstride, const float* dyf,
                                                                 int64_t ldq, int64_t dystride, int64_t nimg,
                                                                 const int64_t* off, const uint16_t* masks,
                                                                 int64_t qv, float* dst, int64_t ldd) {
    __m512 acc[MK][NR];
    for (int m = 0; m < MK; ++m)
        for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
    int64_t o[NR];
    for (int r = 0; r < NR; ++r) o[r] = off[r];
    for (int64_t n = 0; n < nimg; ++n) {
        const float* xn = xp + n * xstride;
        const float* dn = dyf + n * dystride;
        for (int64_t v = 0; v < qv; ++v) {
            const __mmask16 mask = static_cast<__mmask16>(masks[v]);
            __m512 dv[MK];
            for (int m = 0; m < MK; ++m) {
                dv[m] = _mm512_loadu_ps(dn + m * ldq + 16 * v);
                __asm__("" : "+v"(dv[m]));  // in a register, not reloaded by each of the NR FMAs
            }
            for (int r = 0; r < NR; ++r) {
                const __m512 xv = _mm512_loadu_ps(xn + o[r] + 16 * v);
                for (int m = 0; m < MK; ++m) acc[m][r] = _mm512_mask3_fmadd_ps(dv[m], xv, acc[m][r], mask);
            }
        }
    }
    // Lanes summed by a fixed shuffle tree.
    for (int m = 0; m < MK; ++m)
        for (int r = 0; r < NR; ++r) dst[m * ldd + r] = _mm512_reduce_add_ps(acc[m][r]);
}

using flat_dw_fn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, const int64_t*,
                            const uint16_t*, int64_t, float*, int64_t);
template <int MK, int... Rs>
constexpr std::array<flat_dw_fn, kFlatMaxNR + 1> flat_dw_row(std::integer_sequence<int, Rs...>) {
    return {nullptr, flat_dw_tile_avx512<MK, Rs + 1>...};
}
template <int... Ms>
constexpr std::array<std::array<flat_dw_fn, kFlatMaxNR + 1>, kFlatMaxMK + 1> flat_dw_table(
    std::integer_sequence<int, Ms...>) {
    return {std::array<flat_dw_fn, kFlatMaxNR + 1>{}, flat_dw_row<Ms + 1>(std::make_integer_sequence<int, kFlatMaxNR>{})...};
}
const auto kFlatDwTiles = flat_dw_table(std::make_integer_sequence<int, kFlatMaxMK>{});

// Flat dw for this geometry? Stride 1, fewer than 16 input channels per group
// (wider groups use the channels-last direct dw), at most 16 output channels
// per group (for 3->32 k3 on 32x32 it measured 0.98x to 1.07x the GEMM, so the
// GEMM keeps those), not pointwise, and at least half of the flattened lanes
// are real output positions.
bool flat_dw_ok(const Conv2dShape& s) {
    if (s.sh != 1 || s.sw != 1 || s.C / s.groups >= 16 || s.K / s.groups > 16 || is_pointwise(s) ||
        !cpu_has_avx512())
        return false;
    const int64_t Wp = s.W + s.pl + s.pr, Q = (s.OH - 1) * Wp + s.OW;
    return 2 * s.OH * s.OW >= (Q + 15) / 16 * 16;
}

// dyf (Kg, ldq) = dy (Kg, OH, OW) flattened with row stride Wp, zero elsewhere.
__attribute__((target("avx512f"))) void flatten_dy(int64_t Kg, int64_t OH, int64_t OW, int64_t Wp, int64_t ldq,
                                                   const float* dy, float* dyf) {
    // Rows are short (28 floats for LeNet C1): masked vector copies, no library call per row.
    auto lanes = [](int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u); };
    for (int64_t k = 0; k < Kg; ++k) {
        float* dk = dyf + k * ldq;
        const float* src = dy + k * OH * OW;
        for (int64_t h = 0; h < OH; ++h) {
            float* drow = dk + h * Wp;
            const float* srow = src + h * OW;
            const int64_t row_end = std::min(Wp, ldq - h * Wp);  // write [0, row_end): data, then zeros
            for (int64_t w0 = 0; w0 < row_end; w0 += 16)
                _mm512_mask_storeu_ps(drow + w0, lanes(row_end - w0), _mm512_maskz_loadu_ps(lanes(OW - w0), srow + w0));
        }
        for (int64_t q = OH * Wp; q < ldq; ++q) dk[q] = 0.f;
    }
}

// dw partial of one batch chunk [n0, n1): part (K, Cg, kh, kw) = sum over the
// chunk's images, in order, through flat_dw_tile_avx512.
void flat_dw_chunk(const Conv2dShape& s, const DirectGeom& d, const int64_t* off, const float* dy, const float* x,
                   int64_t n0, int64_t n1, float* part) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, R = d.R();
    const int64_t Q = d.Q(), qv = (Q + 15) / 16, ldq = qv * 16;
    const int64_t nimg = n1 - n0, xstride = d.padded_size(), dystride = Kg * ldq;
    float* xp = tl_pad.get(nimg * xstride);
    float* dyf = tl_dyT.get(nimg * dystride);
    const int64_t mkb = (Kg % 4 != 0 && Kg % 6 == 0) || Kg == 6 ? 6 : 4, nrb = 24 / mkb;
    // masks[v] bit l: q = 16*v + l is a real output position (q < Q and q % Wp < OW).
    std::vector<uint16_t> masks(static_cast<size_t>(qv), 0);
    for (int64_t h = 0; h < s.OH; ++h)
        for (int64_t q = h * d.Wp; q < h * d.Wp + s.OW; ++q)
            masks[static_cast<size_t>(q >> 4)] |= static_cast<uint16_t>(1u << (q & 15));
    for (int64_t g = 0; g < s.groups; ++g) {
        for (int64_t n = n0; n < n1; ++n) {
            pad_image(d, x + (n * s.C + g * Cg) * s.H * s.W, xp + (n - n0) * xstride);
            flatten_dy(Kg, s.OH, s.OW, d.Wp, ldq, dy + (n * s.K + g * Kg) * s.OH * s.OW, dyf + (n - n0) * dystride);
        }
        float* pg = part + g * Kg * R;  // (Kg, R)
        for (int64_t k0 = 0; k0 < Kg; k0 += mkb) {
            const int64_t mk = std::min(mkb, Kg - k0);
            for (int64_t r0 = 0; r0 < R; r0 += nrb) {
                const int64_t nr = std::min(nrb, R - r0);
                kFlatDwTiles[static_cast<size_t>(mk)][static_cast<size_t>(nr)](
                    xp, xstride, dyf + k0 * ldq, ldq, dystride, nimg, off + r0, masks.data(), qv, pg + k0 * R + r0, R);
            }
        }
    }
}

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
           Kg <= 16 && cpu_has_avx512();
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

// ---- scatter dx (AVX-512), stride 1 -------------------------------------------
//
// The direct dx kernel reads dy zero-padded by the kernel extent; for small
// outputs (LeNet C3: 10x10 dy, 18x18 padded) most of its FMAs multiply those
// zeros. Here dy is flattened along the forward padded width (dyf[k][q],
// q = oh*Wp + ow, zero where ow >= OW, with zeros in front), and the rows
// (c, i) of the reduction are taken one band at a time: the padded dx at
// dxp[off(c, i) + p] receives sum_k sum_j w[k][c][i][j] * dyf[k][p - j*dw]
// for the band positions p. A register tile holds NR channels (their dx
// planes never overlap within a tile) times NV vectors of p, sums k and j in
// order, then adds the band into dxp under the mask of positions any tap
// reaches. Each dx element receives its bands in a fixed order (kernel rows i,
// then channels); images are independent, so the result does not depend on
// the thread count. Like the direct kernel, it multiplies the weights by dy's
// zero padding.

template <int NR, int NV>
__attribute__((target("avx512f,fma"))) void scatter_dx_tile_avx512(const float* dyf, int64_t ldq, int64_t Kg,
                                                                    int64_t kw, int64_t dil, const float* const* wrow,
                                                                    float* const* dst, const uint16_t* masks) {
    __m512 acc[NR][NV];
    for (int a = 0; a < NR; ++a)
        for (int v = 0; v < NV; ++v) acc[a][v] = _mm512_setzero_ps();
    const float* wr[NR];
    for (int a = 0; a < NR; ++a) wr[a] = wrow[a];
    for (int64_t k = 0; k < Kg; ++k) {
        for (int64_t j = 0; j < kw; ++j) {
            const float* src = dyf + k * ldq - j * dil;
            __m512 dv[NV];
            for (int v = 0; v < NV; ++v) {
                dv[v] = _mm512_loadu_ps(src + 16 * v);
                // Keep the vector in a register: folded into each of the NR FMAs it would be
                // loaded NR times, and full-width loads, not FMAs, would set the pace.
                __asm__("" : "+v"(dv[v]));
            }
            for (int a = 0; a < NR; ++a) {
                const __m512 wv = _mm512_set1_ps(wr[a][j * Kg + k]);
                for (int v = 0; v < NV; ++v) acc[a][v] = _mm512_fmadd_ps(wv, dv[v], acc[a][v]);
            }
        }
    }
    for (int a = 0; a < NR; ++a)
        for (int v = 0; v < NV; ++v) {
            float* p = dst[a] + 16 * v;
            const __m512 old = _mm512_loadu_ps(p);
            _mm512_storeu_ps(p, _mm512_mask_add_ps(old, static_cast<__mmask16>(masks[v]), old, acc[a][v]));
        }
}

constexpr int kSdxNR = 2, kSdxNV = 9;  // 18 accumulators + 9 dy vectors + 1 weight in registers
using scatter_dx_fn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, const float* const*, float* const*,
                               const uint16_t*);
template <int NR, int... Vs>
constexpr std::array<scatter_dx_fn, kSdxNV + 1> scatter_dx_row(std::integer_sequence<int, Vs...>) {
    return {nullptr, scatter_dx_tile_avx512<NR, Vs + 1>...};
}
const std::array<scatter_dx_fn, kSdxNV + 1> kSdxTiles[kSdxNR + 1] = {
    {},
    scatter_dx_row<1>(std::make_integer_sequence<int, kSdxNV>{}),
    scatter_dx_row<2>(std::make_integer_sequence<int, kSdxNV>{}),
};

// Scatter dx instead of the direct dx kernel? Stride 1, AVX-512, and fewer
// estimated vector FMAs: direct computes Cg (rounded to its channel block)
// times its padded output segments times Kg*kh*kw; scatter computes
// Cg*kh*kw*Kg per vector of a band.
bool scatter_dx_better(const Conv2dShape& s) {
    if (s.sh != 1 || s.sw != 1 || !cpu_has_avx512()) return false;
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw;
    const int64_t Wp = s.W + s.pl + s.pr, qv = ((s.OH - 1) * Wp + s.OW + s.dw * (s.kw - 1) + 15) / 16;
    const double scatter = double(Cg * khw) * double(qv) * double(Kg);
    if (!direct_dx_ok(s)) return true;
    const int64_t eh = s.dh * (s.kh - 1), ew = s.dw * (s.kw - 1);
    const DirectGeom dd =
        make_direct_geom(Kg, s.OH, s.OW, eh - s.pt, eh - s.pb, ew - s.pl, ew - s.pr, s.kh, s.kw, s.dh, s.dw);
    bool rows = false;
    const std::vector<Seg> segs = direct_segments(dd, &rows);
    int64_t nseg = 0;
    for (const Seg& sg : segs) nseg += sg.mask != 0;
    const int64_t mb = direct_block(Cg, segs), nv = mb == 6 ? 4 : 3, Mpad = (Cg + mb - 1) / mb * mb;
    if (use_kvec(Cg, s.H, s.W, Mpad * nseg * 16)) {
        // The direct dx runs kvec_conv: one FMA per 16 channels and dx position.
        const double kvec = double((Cg + 15) / 16) * double(s.H * s.W) * double(Kg * khw);
        return scatter < kvec;
    }
    const double direct = double(Mpad) * double((nseg + nv - 1) / nv * nv) * double(Kg * khw);
    return scatter < direct;
}

// dx through scatter_dx_tile_avx512. dy is (N, K, OH, OW), w is (K, Cg, kh, kw), dx is (N, C, H, W).
void backward_dx_scatter(const Conv2dShape& s, const float* dy, const float* w, float* dx, int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw, R = Cg * khw;
    const DirectGeom d = make_direct_geom(Cg, s.H, s.W, s.pt, s.pb, s.pl, s.pr, s.kh, s.kw, s.dh, s.dw);
    const int64_t ext = s.dw * (s.kw - 1);
    const int64_t Q = (s.OH - 1) * d.Wp + s.OW, B = Q + ext;  // dy positions, band positions
    const int64_t qv = (B + 15) / 16, front = (ext + 15) / 16 * 16, ldq = front + qv * 16;
    // masks[v] bit l: band position p = 16*v + l is reached by some tap j (p - j*dw is a real dy position).
    std::vector<uint16_t> masks(static_cast<size_t>(qv), 0);
    for (int64_t h = 0; h < s.OH; ++h)
        for (int64_t q = h * d.Wp; q < h * d.Wp + s.OW; ++q)
            for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t p = q + j * s.dw;
                masks[static_cast<size_t>(p >> 4)] |= static_cast<uint16_t>(1u << (p & 15));
            }
    const int64_t nvblocks = (qv + kSdxNV - 1) / kSdxNV, vblock = (qv + nvblocks - 1) / nvblocks;
    // wT[g][r][k] = w[g*Kg + k][r].
    float* wT = tl_wpack.get(s.groups * R * Kg);
    parallel_for(
        s.groups * R,
        [&](int64_t gr) {
            const int64_t g = gr / R, r = gr % R;
            for (int64_t k = 0; k < Kg; ++k) wT[gr * Kg + k] = w[(g * Kg + k) * R + r];
        },
        threads);
    parallel_for(
        s.N,
        [&](int64_t n) {
            float* dxp = tl_pad.get(d.padded_size());
            float* dyf = tl_dyT.get(Kg * ldq + 16);  // 16 floats of slack for the last band vector
            for (int64_t g = 0; g < s.groups; ++g) {
                // dyf[k][front + q]: flattened dy, zeros in front, between rows and behind.
                std::fill(dyf, dyf + Kg * ldq + 16, 0.f);
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
                    (Cg + kSdxNR - 1) / kSdxNR,
                    [&](int64_t cp) {
                    const int64_t c0 = cp * kSdxNR;
                    for (int64_t i = 0; i < s.kh; ++i) {
                        const int64_t nr = std::min<int64_t>(kSdxNR, Cg - c0);
                        const float* wrow[kSdxNR];
                        float* rowdst[kSdxNR];
                        for (int64_t a = 0; a < nr; ++a) {
                            wrow[a] = wg + ((c0 + a) * s.kh + i) * s.kw * Kg;
                            rowdst[a] = dxp + (c0 + a) * d.Hp * d.Wp + i * s.dh * d.Wp;
                        }
                        for (int64_t v0 = 0; v0 < qv; v0 += vblock) {
                            const int64_t nv = std::min<int64_t>(vblock, qv - v0);
                            float* dst[kSdxNR];
                            for (int64_t a = 0; a < nr; ++a) dst[a] = rowdst[a] + 16 * v0;
                            kSdxTiles[nr][static_cast<size_t>(nv)](dyf + front + 16 * v0, ldq, Kg, s.kw, s.dw, wrow,
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

}  // namespace

Conv2dShape make_conv2d_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t kh, int64_t kw,
                              int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                              int64_t dh, int64_t dw, int64_t groups) {
    require_nonnegative(N, "N (batch size)");
    require_positive(C, "C (input channels)");
    require_positive(H, "H (input height)");
    require_positive(W, "W (input width)");
    require_positive(K, "K (output channels)");
    require_positive(kh, "kh (kernel height)");
    require_positive(kw, "kw (kernel width)");
    require_positive(sh, "stride_h");
    require_positive(sw, "stride_w");
    require_nonnegative(pt, "pad_top");
    require_nonnegative(pb, "pad_bottom");
    require_nonnegative(pl, "pad_left");
    require_nonnegative(pr, "pad_right");
    require_positive(dh, "dil_h");
    require_positive(dw, "dil_w");
    require_positive(groups, "groups");
    if (C % groups != 0) {
        throw std::invalid_argument("input channels C=" + std::to_string(C) + " are not divisible by `groups`=" +
                                    std::to_string(groups));
    }
    if (K % groups != 0) {
        throw std::invalid_argument("output channels K=" + std::to_string(K) + " (w.shape[0]) are not divisible by `groups`=" +
                                    std::to_string(groups));
    }
    Conv2dShape s{N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, dh, dw, groups, 0, 0};
    // Dilated kernel extent and padded sizes, checked before conv_out_size uses them.
    checked_mul(dh, kh - 1, "dilated kernel height");
    checked_mul(dw, kw - 1, "dilated kernel width");
    s.OH = conv_out_size(H, kh, sh, pt, pb, dh, "the height");
    s.OW = conv_out_size(W, kw, sw, pl, pr, dw, "the width");
    // Every buffer this file touches, checked once here.
    checked_numel({N, C, H, W}, "input size");
    checked_numel({N, K, s.OH, s.OW}, "output size");
    checked_numel({K, C / groups, kh, kw}, "weight size");
    checked_numel({C / groups, kh, kw, s.OH, s.OW}, "im2col buffer size");
    checked_numel({(N + kBatchChunk - 1) / kBatchChunk + 1, K, C / groups, kh, kw}, "gradient partials size");
    return s;
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    int threads) {
    // x is (N, C, H, W), w is (K, Cg, kh, kw), b is (K,) or null, y is (N, K, OH, OW)
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int64_t CKK = Cg * s.kh * s.kw, P = s.OH * s.OW;
    const bool pointwise = is_pointwise(s);
    if (!pointwise && direct_forward_ok(s)) {
        forward_direct(s, x, w, b, y, threads);
        return;
    }
    const DirectGeom d = make_direct_geom(Cg, s.H, s.W, s.pt, s.pb, s.pl, s.pr, s.kh, s.kw, s.dh, s.dw);
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

void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w, float* dx,
                     float* dw, float* db, int threads) {
    // dy is (N, K, OH, OW), x is (N, C, H, W), w is (K, Cg, kh, kw)
    // dx is (N, C, H, W), dw is (K, Cg, kh, kw), db is (K,)
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int64_t CKK = Cg * s.kh * s.kw, P = s.OH * s.OW;
    const int64_t wsize = s.K * CKK;
    const bool pointwise = is_pointwise(s);
    const int64_t nchunks = (s.N + kBatchChunk - 1) / kBatchChunk;
    if (dx && !pointwise && scatter_dx_better(s)) {
        backward_dx_scatter(s, dy, w, dx, threads);
        dx = nullptr;  // done; the loop below handles dw and db
    } else if (dx && !pointwise && direct_dx_ok(s)) {
        backward_dx_direct(s, dy, w, dx, threads);
        dx = nullptr;
    }

    // Direct dw: partials per chunk are (groups, kh*kw, kpad, ldc), see dw_tile_avx512.
    const bool dw_direct = dw && !pointwise && direct_dw_ok(s);
    const bool dw_kvec = dw && !dw_direct && !pointwise && kvec_dw_ok(s);  // partials (groups, CKK, kvld)
    const bool dw_flat = dw && !dw_direct && !dw_kvec && flat_dw_ok(s);    // partials (K, Cg, kh, kw)
    const int64_t kvld = (Kg + 15) / 16 * 16;
    const DwVariant* dwv = dw_direct ? &choose_dw_variant(Cg, Kg) : nullptr;
    const int64_t khw = s.kh * s.kw;
    const int64_t ldc = dw_direct ? (Cg + 16 * dwv->t.mv - 1) / (16 * dwv->t.mv) * (16 * dwv->t.mv) : 0;
    const int64_t kpad = dw_direct ? (Kg + dwv->t.nr - 1) / dwv->t.nr * dwv->t.nr : 0;
    const int64_t ldk = (kpad + 15) / 16 * 16;  // row stride of dyT
    const int64_t dw_part_size = dw_direct ? s.groups * khw * kpad * ldc : dw_kvec ? s.groups * CKK * kvld : wsize;
    const int64_t Hp = s.H + s.pt + s.pb, Wp = s.W + s.pl + s.pr;
    std::vector<int64_t> src;
    if (dw_direct) {
        src.resize(static_cast<size_t>(P));
        for (int64_t oh = 0; oh < s.OH; ++oh)
            for (int64_t ow = 0; ow < s.OW; ++ow) src[static_cast<size_t>(oh * s.OW + ow)] = oh * s.sh * Wp + ow * s.sw;
    }

    // Partials: chunk c owns dw_parts[c] (K, Cg, kh, kw), or the direct layout, and db_parts[c] (K,).
    float* parts = (dw || db) ? tl_parts.get(nchunks * ((dw ? dw_part_size : 0) + (db ? s.K : 0))) : nullptr;
    float* dw_parts = dw ? parts : nullptr;
    float* db_parts = db ? parts + (dw ? nchunks * dw_part_size : 0) : nullptr;

    const DirectGeom d = make_direct_geom(Cg, s.H, s.W, s.pt, s.pb, s.pl, s.pr, s.kh, s.kw, s.dh, s.dw);
    std::vector<int64_t> off(static_cast<size_t>(CKK));
    direct_offsets(d, off.data());
    parallel_for(
        nchunks,
        [&](int64_t c) {
            const bool gemm_dw = dw && !dw_direct && !dw_flat && !dw_kvec;
            float* cols = (gemm_dw && !pointwise) ? tl_cols.get(CKK * P) : nullptr;
            float* xp = (gemm_dw && !pointwise) ? tl_pad.get(d.padded_size()) : nullptr;
            float* xT = dw_direct ? tl_pad.get(Hp * Wp * ldc) : nullptr;
            float* dyT = dw_direct ? tl_dyT.get(P * ldk) : nullptr;
            float* dcols = (dx && !pointwise) ? tl_dcols.get(CKK * P) : nullptr;
            const int64_t n0 = c * kBatchChunk, n1 = std::min(s.N, n0 + kBatchChunk);
            if (dw_flat) flat_dw_chunk(s, d, off.data(), dy, x, n0, n1, dw_parts + c * wsize);
            if (dw_kvec) kvec_dw_chunk(s, d, dy, x, n0, n1, kvld, dw_parts + c * dw_part_size);
            for (int64_t n = n0; n < n1; ++n) {
                for (int64_t g = 0; g < s.groups; ++g) {
                    const float* xg = x + (n * s.C + g * Cg) * s.H * s.W;  // (Cg, H, W)
                    const float* wg = w + g * Kg * CKK;                      // (Kg, CKK)
                    const float* dyg = dy + (n * s.K + g * Kg) * P;          // (Kg, P)
                    if (dw_direct) {
                        pad_transpose(s, Cg, Wp, Hp, ldc, xg, xT);
                        transpose_dy(Kg, P, ldk, dyg, dyT);
                        float* part = dw_parts + c * dw_part_size + g * khw * kpad * ldc;  // (kh*kw, kpad, ldc)
                        const int64_t cstep = 16 * dwv->t.mv;
                        // Taps are independent tiles: spread over the threads when the chunks
                        // alone cannot use them (a single chunk), serial inside a chunk task.
                        parallel_for(
                            khw,
                            [&](int64_t ij) {
                                const int64_t i = ij / s.kw, j = ij % s.kw, off_ij = i * s.dh * Wp + j * s.dw;
                                for (int64_t k0 = 0; k0 < kpad; k0 += dwv->t.nr)
                                    for (int64_t c0 = 0; c0 < ldc; c0 += cstep)
                                        dwv->fn(xT + off_ij * ldc + c0, ldc, src.data(), P, dyT + k0, ldk,
                                                part + (ij * kpad + k0) * ldc + c0, n == n0);
                            },
                            threads);
                    } else if (gemm_dw) {
                        if (!pointwise) {
                            pad_image(d, xg, xp);
                            im2col_padded(s, d, off.data(), xp, cols);
                        }
                        float* dwg = dw_parts + c * wsize + g * Kg * CKK;  // (Kg, CKK)
                        sgemm(false, true, Kg, CKK, P, 1.f, dyg, P, pointwise ? xg : cols, P, n == n0 ? 0.f : 1.f,
                              dwg, CKK, threads);
                    }
                    if (dx) {
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
                if (db) {
                    float* dbc = db_parts + c * s.K;
                    for (int64_t k = 0; k < s.K; ++k) {
                        const float t = sum_fixed(dy + (n * s.K + k) * P, P);
                        dbc[k] = n == n0 ? t : dbc[k] + t;
                    }
                }
            }
        },
        threads);

    // Sum the partials in chunk order; elements are independent, so split them.
    auto reduce = [&](const float* src, int64_t len, float* dst) {
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
    };
    if (dw && dw_direct) {
        // dw[g*Kg + k][c][i][j] = sum over chunks, in order, of part[chunk][g][i*kw + j][k][c].
        parallel_for(
            s.K,
            [&](int64_t kk) {
                const int64_t g = kk / Kg, k = kk % Kg;
                std::vector<float> t(static_cast<size_t>(khw * Cg), 0.f);  // (kh*kw, Cg)
                for (int64_t c = 0; c < nchunks; ++c)
                    for (int64_t ij = 0; ij < khw; ++ij) {
                        const float* src = dw_parts + c * dw_part_size + ((g * khw + ij) * kpad + k) * ldc;
                        float* tr = t.data() + ij * Cg;
                        if (c == 0) {
                            std::copy(src, src + Cg, tr);
                        } else {
                            for (int64_t ch = 0; ch < Cg; ++ch) tr[ch] += src[ch];
                        }
                    }
                float* dst = dw + kk * CKK;  // (Cg, kh, kw)
                for (int64_t ij = 0; ij < khw; ++ij)
                    for (int64_t ch = 0; ch < Cg; ++ch) dst[ch * khw + ij] = t[static_cast<size_t>(ij * Cg + ch)];
            },
            threads);
    } else if (dw && dw_kvec) {
        // dw[g*Kg + k][r] = sum over chunks, in order, of part[chunk][g][r][k].
        parallel_for(
            s.K,
            [&](int64_t kk) {
                const int64_t g = kk / Kg, k = kk % Kg;
                float* dst = dw + kk * CKK;
                for (int64_t r = 0; r < CKK; ++r) {
                    const float* src = dw_parts + (g * CKK + r) * kvld + k;
                    float t = nchunks > 0 ? src[0] : 0.f;
                    for (int64_t c = 1; c < nchunks; ++c) t += src[c * dw_part_size];
                    dst[r] = t;
                }
            },
            threads);
    } else if (dw) {
        reduce(dw_parts, wsize, dw);
    }
    if (db) reduce(db_parts, s.K, db);
}

}  // namespace striate
