// conv_tiles.hpp: every convolution micro-kernel family, written once over the
// vector type V (simd.hpp) and the tile contract of conv_internal.hpp, and
// the ConvKit of dispatch tables that exports them.
//
// Deliberately without an include guard: conv_tiles_avx512.cpp and
// conv_tiles_avx2.cpp each include it once, inside their own namespace, after
// defining `using V = simd::...;` and STRIATE_TILE_TARGET (the target
// attribute every kernel here carries). Tile dimensions follow from V::W:
// 16 lanes (AVX-512, 32 registers) take the large tiles, 8 lanes (AVX2, 16
// registers) tiles of at most 12 accumulators.
//
// Not here: the drivers that pack operands and loop over tiles (conv_*.cpp),
// the choice of algorithm (conv2d.cpp).

constexpr bool kWide = V::W == 16;
constexpr int W = V::W;
constexpr uint32_t kFullMask = (1u << W) - 1u;  // all W lanes

// ---- direct: MR channels x NV position vectors --------------------------------
// out[m*ldo + sg[v].dst + l] = bias[m] + sum_r wb[r*WS + m] * xp[off[r] + sg[v].src + l]
// for m < MR and the lanes l set in sg[v].mask; wb holds R rows of WS floats.
template <int MR, int NV, int WS>
STRIATE_TILE_TARGET void direct_tile(const float* xp, const int64_t* off, int64_t R, const float* wb, const Seg* sg,
                                     float* out, int64_t ldo, const float* bias) {
    typename V::reg acc[MR][NV];
    int64_t so[NV];
    for (int v = 0; v < NV; ++v) so[v] = sg[v].src;
    for (int m = 0; m < MR; ++m) {
        const typename V::reg init = bias ? V::set1(bias[m]) : V::zero();
        for (int v = 0; v < NV; ++v) acc[m][v] = init;
    }
    for (int64_t r = 0; r < R; ++r) {
        const float* src = xp + off[r];
        typename V::reg xv[NV];
        for (int v = 0; v < NV; ++v) xv[v] = V::load(src + so[v]);
        const float* wr = wb + r * WS;
        for (int m = 0; m < MR; ++m) {
            const typename V::reg wv = V::set1(wr[m]);
            for (int v = 0; v < NV; ++v) acc[m][v] = V::fma(wv, xv[v], acc[m][v]);
        }
    }
    for (int v = 0; v < NV; ++v) {
        if (!sg[v].mask) continue;
        if (sg[v].mask == kFullMask) {  // plain stores: AVX2 masked stores are slow on AMD cores
            for (int m = 0; m < MR; ++m) V::store(out + m * ldo + sg[v].dst, acc[m][v]);
            continue;
        }
        const typename V::mask mask = V::bits(sg[v].mask);
        for (int m = 0; m < MR; ++m) V::mask_store(out + m * ldo + sg[v].dst, mask, acc[m][v]);
    }
}

// Tile shapes of equal register count: AVX-512 8 x 3 and 6 x 4 (24
// accumulators), AVX2 4 x 3 and 6 x 2 (12 accumulators, the 3 or 2 x vectors
// and one broadcast fill the 16 registers).
constexpr int kDirMR0 = kWide ? 8 : 4, kDirNV0 = 3;
constexpr int kDirMR1 = 6, kDirNV1 = kWide ? 4 : 2;

template <int NV, int WS, int... Ms>
ConvKit::DirectShape direct_shape(std::integer_sequence<int, Ms...>) {
    return {WS, NV, {nullptr, direct_tile<Ms + 1, NV, WS>...}};
}

// ---- kvec: ROWS x NT positions x KV vectors of output channels ------------------
// outROW[t*ldt + W*kv + l] = bias[W*kv + l] + sum_r wT[r*ldw + W*kv + l] * xp[off[r] + src0 + ROW*rstep + CS*t];
// the bias of the last vector is read under the mask of its nlast lanes.
template <int ROWS, int NT, int KV, int CS = 1>
STRIATE_TILE_TARGET void kvec_tile(const float* xp, const int64_t* off, int64_t R, const float* wT, int64_t ldw,
                                   int64_t src0, int64_t rstep, const float* bias, int64_t nlast, float* out0,
                                   float* out1, int64_t ldt) {
    typename V::reg acc[ROWS][NT][KV];
    for (int kv = 0; kv < KV; ++kv) {
        const typename V::mask mk = V::prefix(kv == KV - 1 ? nlast : W);
        const typename V::reg init = bias ? V::maskz_load(mk, bias + W * kv) : V::zero();
        for (int h = 0; h < ROWS; ++h)
            for (int t = 0; t < NT; ++t) acc[h][t][kv] = init;
    }
    for (int64_t r = 0; r < R; ++r) {
        typename V::reg wv[KV];
        for (int kv = 0; kv < KV; ++kv) wv[kv] = V::load(wT + r * ldw + W * kv);
        const float* b0 = xp + off[r] + src0;
        for (int h = 0; h < ROWS; ++h) {
            const float* bh = b0 + h * rstep;
            for (int t = 0; t < NT; ++t) {
                const typename V::reg bc = V::set1(bh[CS * t]);
                for (int kv = 0; kv < KV; ++kv) acc[h][t][kv] = V::fma(wv[kv], bc, acc[h][t][kv]);
            }
        }
    }
    for (int h = 0; h < ROWS; ++h) {
        float* o = h == 0 ? out0 : out1;
        for (int t = 0; t < NT; ++t)
            for (int kv = 0; kv < KV; ++kv) V::store(o + ldt * t + W * kv, acc[h][t][kv]);
    }
}

// Positions per row: AVX-512 12 (one vector, 2 rows: 24 accumulators) and 7
// (two vectors: 28); AVX2 6 (12) and 3 (12).
constexpr int kKvecNT1 = kWide ? 12 : 6, kKvecNT2 = kWide ? 7 : 3;

template <int ROWS, int KV, int CS, int... Ts>
std::array<kvec_tile_fn, kMaxKvecNT + 1> kvec_row(std::integer_sequence<int, Ts...>) {
    return {nullptr, kvec_tile<ROWS, Ts + 1, KV, CS>...};
}

// ---- dw outer product: NR output channels x MV vectors of input channels ----------
// part[r*ldc + W*v + l] (+)= sum_p dyT[p*ldk + r] * xT[src[p]*ldc + W*v + l], from
// zero when `first`, else from part, over the positions p of the nranges ranges
// [ranges[2q], ranges[2q + 1]) in order (the direct dw leaves out the positions
// whose pixel is padding).
template <int MV, int NR>
STRIATE_TILE_TARGET void dw_tile(const float* xT, int64_t ldc, const int64_t* src, const int64_t* ranges,
                                 int64_t nranges, const float* dyT, int64_t ldk, float* part, bool first) {
    typename V::reg acc[NR][MV];
    for (int r = 0; r < NR; ++r)
        for (int v = 0; v < MV; ++v) acc[r][v] = first ? V::zero() : V::load(part + r * ldc + W * v);
    for (int64_t q = 0; q < nranges; ++q) {
        const int64_t pend = ranges[2 * q + 1];
        for (int64_t p = ranges[2 * q]; p < pend; ++p) {
            const float* xrow = xT + src[p] * ldc;
            typename V::reg xv[MV];
            for (int v = 0; v < MV; ++v) xv[v] = V::load(xrow + W * v);
            const float* drow = dyT + p * ldk;
            for (int r = 0; r < NR; ++r) {
                const typename V::reg b = V::set1(drow[r]);
                for (int v = 0; v < MV; ++v) acc[r][v] = V::fma(b, xv[v], acc[r][v]);
            }
        }
    }
    for (int r = 0; r < NR; ++r)
        for (int v = 0; v < MV; ++v) V::store(part + r * ldc + W * v, acc[r][v]);
}

// ---- flat dw: MK output channels x NR reduction rows, lanes summed once --------------
// dst[m*ldd + r] = sum_n sum_v sum_{l in masks[v]} dyf[n][m*ldq + 16*v + l] * xp[n][off[r] + 16*v + l].
// Positions are grouped in 16 logical lanes on every ISA (kFlatLanes): each
// lane l accumulates positions 16*v + l over (n, v) in order, then the lanes
// are added by the tree of V::hsum. With 8-lane vectors the tile runs twice,
// over lanes 0..7 and 8..15, and adds the halves (hi + lo) before V::hsum,
// which is exactly the first step of Avx512::hsum: every ISA gives the same
// bits.
template <int MK, int NR>
STRIATE_TILE_TARGET void flat_dw_tile(const float* xp, int64_t xstride, const float* dyf, int64_t ldq,
                                      int64_t dystride, int64_t nimg, const int64_t* off, const uint16_t* masks,
                                      int64_t qv, float* dst, int64_t ldd) {
    static_assert(kFlatLanes % W == 0, "flat dw lanes must be whole vectors");
    typename V::reg total[MK][NR];
    int64_t o[NR];
    for (int r = 0; r < NR; ++r) o[r] = off[r];
    for (int h = 0; h < kFlatLanes / W; ++h) {
        typename V::reg acc[MK][NR];
        for (int m = 0; m < MK; ++m)
            for (int r = 0; r < NR; ++r) acc[m][r] = V::zero();
        for (int64_t n = 0; n < nimg; ++n) {
            const float* xn = xp + n * xstride + h * W;
            const float* dn = dyf + n * dystride + h * W;
            for (int64_t v = 0; v < qv; ++v) {
                const typename V::mask mask = V::bits(static_cast<uint32_t>(masks[v]) >> (h * W));
                typename V::reg dv[MK];
                for (int m = 0; m < MK; ++m) {
                    dv[m] = V::load(dn + m * ldq + kFlatLanes * v);
                    V::keep(dv[m]);  // in a register, not reloaded by each of the NR FMAs
                }
                for (int r = 0; r < NR; ++r) {
                    const typename V::reg xv = V::load(xn + o[r] + kFlatLanes * v);
                    for (int m = 0; m < MK; ++m) acc[m][r] = V::fma_where(dv[m], xv, acc[m][r], mask);
                }
            }
        }
        for (int m = 0; m < MK; ++m)
            for (int r = 0; r < NR; ++r) total[m][r] = h == 0 ? acc[m][r] : V::add(acc[m][r], total[m][r]);
    }
    for (int m = 0; m < MK; ++m)
        for (int r = 0; r < NR; ++r) dst[m * ldd + r] = V::hsum(total[m][r]);
}

template <int MK, int... Rs>
std::array<flat_dw_fn, kFlatMax + 1> flat_dw_row(std::integer_sequence<int, Rs...>) {
    return {nullptr, flat_dw_tile<MK, Rs + 1>...};
}

// Output channels per flat-dw tile for Kg channels; rows per tile = accumulators / that.
// AVX-512: 4 x 6 or 6 x 4 (24); AVX2: 2 x 6 or 3 x 4 (12).
int64_t flat_dw_mk(int64_t Kg) {
    if (kWide) return (Kg % 4 != 0 && Kg % 6 == 0) || Kg == 6 ? 6 : 4;
    return Kg % 2 != 0 && Kg % 3 == 0 ? 3 : 2;
}

// ---- kvec dw: NI kernel rows x KW taps, vectors over W output channels ---------------
// dst[(a*KW + j)*ldk + l] = sum_n sum_(oh, ow) dyT[n][(oh*OW + ow)*ldk + l] * xp[n][pair_off[a] + oh*Wp + ow + j].
template <int NI, int KW>
STRIATE_TILE_TARGET void kvec_dw_tile(const float* xp, int64_t xstride, const float* dyT, int64_t ldk,
                                      int64_t dystride, int64_t nimg, const int64_t* pair_off, int64_t OH, int64_t OW,
                                      int64_t Wp, float* dst) {
    typename V::reg acc[NI][KW];
    for (int a = 0; a < NI; ++a)
        for (int j = 0; j < KW; ++j) acc[a][j] = V::zero();
    int64_t po[NI];
    for (int a = 0; a < NI; ++a) po[a] = pair_off[a];
    for (int64_t n = 0; n < nimg; ++n) {
        const float* xn = xp + n * xstride;
        const float* dn = dyT + n * dystride;
        for (int64_t oh = 0; oh < OH; ++oh) {
            const float* xrow = xn + oh * Wp;
            const float* drow = dn + oh * OW * ldk;
            for (int64_t ow = 0; ow < OW; ++ow) {
                const typename V::reg dv = V::load(drow + ow * ldk);
                for (int a = 0; a < NI; ++a) {
                    const float* b = xrow + po[a] + ow;
                    for (int j = 0; j < KW; ++j) acc[a][j] = V::fma(dv, V::set1(b[j]), acc[a][j]);
                }
            }
        }
    }
    for (int a = 0; a < NI; ++a)
        for (int j = 0; j < KW; ++j) V::store(dst + (a * KW + j) * ldk, acc[a][j]);
}

// Kernel rows per tile: AVX-512 8 (k3: 24 accumulators) and 5 (k5: 25); AVX2 4 (12) and 2 (10).
constexpr int kKdwNI3 = kWide ? 8 : 4, kKdwNI5 = kWide ? 5 : 2;

template <int KW, int... As>
std::array<kvec_dw_fn, kMaxKdwNI + 1> kvec_dw_row(std::integer_sequence<int, As...>) {
    return {nullptr, kvec_dw_tile<As + 1, KW>...};
}

// ---- scatter dx: NR input channels x NV band vectors --------------------------------
// dst[a][W*v + l] += sum_k sum_j wrow[a][j*Kg + k] * dyf[k*ldq + W*v + l - j*dil] on the
// lanes set in masks[v]; k and j in order.
template <int NR, int NV>
STRIATE_TILE_TARGET void scatter_dx_tile(const float* dyf, int64_t ldq, int64_t Kg, int64_t kw, int64_t dil,
                                         const float* const* wrow, float* const* dst, const uint16_t* masks) {
    typename V::reg acc[NR][NV];
    for (int a = 0; a < NR; ++a)
        for (int v = 0; v < NV; ++v) acc[a][v] = V::zero();
    const float* wr[NR];
    for (int a = 0; a < NR; ++a) wr[a] = wrow[a];
    for (int64_t k = 0; k < Kg; ++k) {
        for (int64_t j = 0; j < kw; ++j) {
            const float* src = dyf + k * ldq - j * dil;
            typename V::reg dv[NV];
            for (int v = 0; v < NV; ++v) {
                dv[v] = V::load(src + W * v);
                // Keep the vector in a register: folded into each of the NR FMAs it would be
                // loaded NR times, and loads, not FMAs, would set the pace.
                V::keep(dv[v]);
            }
            for (int a = 0; a < NR; ++a) {
                const typename V::reg wv = V::set1(wr[a][j * Kg + k]);
                for (int v = 0; v < NV; ++v) acc[a][v] = V::fma(wv, dv[v], acc[a][v]);
            }
        }
    }
    for (int a = 0; a < NR; ++a)
        for (int v = 0; v < NV; ++v) {
            float* p = dst[a] + W * v;
            V::store(p, V::mask_add(V::load(p), V::bits(masks[v]), acc[a][v]));
        }
}

// AVX-512 2 x 9 (18 accumulators + 9 dy vectors + 1 weight); AVX2 2 x 5 (10 + 5 + 1).
constexpr int kSdxNR = 2, kSdxNV = kWide ? 9 : 5;

template <int NR, int... Vs>
std::array<scatter_dx_fn, kMaxSdxNV + 1> scatter_dx_row(std::integer_sequence<int, Vs...>) {
    return {nullptr, scatter_dx_tile<NR, Vs + 1>...};
}

// ---- W x W block transpose and the flattened dy copy -----------------------------------
// dst[j*ldd + r] = src[r*lds + j] for r < W, j < ncols (<= W): W full lanes are
// stored per destination row, lanes r >= nrows are zero (or, with
// store_valid_only, only the lanes r < nrows are stored).
STRIATE_TILE_TARGET void transpose_block(const float* src, int64_t lds, int64_t nrows, int64_t ncols, float* dst,
                                         int64_t ldd, bool store_valid_only) {
    // Whole rows and columns take plain loads and stores (AVX2 masked stores are slow on AMD cores).
    const typename V::mask cm = V::prefix(ncols);
    typename V::reg r[W];
    for (int i = 0; i < W; ++i)
        r[i] = i >= nrows ? V::zero() : ncols >= W ? V::load(src + i * lds) : V::maskz_load(cm, src + i * lds);
    V::transpose(r);
    if (!store_valid_only || nrows >= W) {
        for (int j = 0; j < ncols; ++j) V::store(dst + j * ldd, r[j]);
        return;
    }
    const typename V::mask rm = V::prefix(nrows);
    for (int j = 0; j < ncols; ++j) V::mask_store(dst + j * ldd, rm, r[j]);
}

// ---- im2col by positions: runs of consecutive floats, in whole vectors -----------------
// dst[p*ldd + q*len + l] = src[poff[p] + roff[q] + l] for p < np, q < nq, l < len
// (ldd >= nq * len).
// Each run is copied as whole vectors (no masks, no library call per run): the
// lanes past a run land on the next run or position, written afterwards, so
// dst needs W floats of slack past its end and src W - 1 past its last run.
STRIATE_TILE_TARGET void gather_runs(const float* src, const int64_t* roff, int64_t nq, int64_t len,
                                     const int64_t* poff, int64_t np, float* dst, int64_t ldd) {
    for (int64_t p = 0; p < np; ++p) {
        const float* sp = src + poff[p];
        float* d = dst + p * ldd;
        for (int64_t q = 0; q < nq; ++q, d += len) {
            const float* sq = sp + roff[q];
            for (int64_t l = 0; l < len; l += W) V::store(d + l, V::load(sq + l));
        }
    }
}

// dyf (Kg, ldq) = dy (Kg, OH, OW) flattened with row stride Wp, zero elsewhere.
STRIATE_TILE_TARGET void flatten_dy(int64_t Kg, int64_t OH, int64_t OW, int64_t Wp, int64_t ldq, const float* dy,
                                    float* dyf) {
    // Rows are short (28 floats for LeNet C1): masked vector copies, no library call per row.
    for (int64_t k = 0; k < Kg; ++k) {
        float* dk = dyf + k * ldq;
        const float* src = dy + k * OH * OW;
        for (int64_t h = 0; h < OH; ++h) {
            float* drow = dk + h * Wp;
            const float* srow = src + h * OW;
            const int64_t row_end = std::min(Wp, ldq - h * Wp);  // write [0, row_end): data, then zeros
            for (int64_t w0 = 0; w0 < row_end; w0 += W) {
                const typename V::reg v = w0 + W <= OW ? V::load(srow + w0) : V::maskz_load(V::prefix(OW - w0), srow + w0);
                if (w0 + W <= row_end) {
                    V::store(drow + w0, v);  // plain stores where they fit: AVX2 masked stores are slow on AMD cores
                } else {
                    V::mask_store(drow + w0, V::prefix(row_end - w0), v);
                }
            }
        }
        for (int64_t q = OH * Wp; q < ldq; ++q) dk[q] = 0.f;
    }
}

// ---- Winograd F(2x2, 3x3) transforms ---------------------------------------------------
// Vectors run over W consecutive tiles p of a chunk of whole tile rows,
// flattened (p = tile row * TW + tile column). Each value is one fixed
// sequence of additions and subtractions, the same on every ISA path.

// The input transform B^T d B of P tiles: tile p's input d[i][q] (row i,
// column q of its 4 x 4 input) is src[4i + q][p], readable for
// p < round_up(P, W); v[a*lda + p] = (B^T d B)[a / 4][a % 4] for
// p < round_up(P, W) (lanes past P are scratch, overwritten by later tiles or
// ignored).
STRIATE_TILE_TARGET void wino2_input(const float* const* src, int64_t P, float* v, int64_t lda) {
    using R = typename V::reg;
    for (int64_t p = 0; p < P; p += W) {
        R t[4][4];  // t = B^T d, one column q at a time
        for (int q = 0; q < 4; ++q) {
            const R d0 = V::load(src[q] + p), d1 = V::load(src[4 + q] + p), d2 = V::load(src[8 + q] + p),
                    d3 = V::load(src[12 + q] + p);
            t[0][q] = V::sub(d0, d2);
            t[1][q] = V::add(d1, d2);
            t[2][q] = V::sub(d2, d1);
            t[3][q] = V::sub(d1, d3);
        }
        for (int r = 0; r < 4; ++r) {  // (B^T d) B, row r
            float* vr = v + 4 * r * lda + p;
            V::store(vr, V::sub(t[r][0], t[r][2]));
            V::store(vr + lda, V::add(t[r][1], t[r][2]));
            V::store(vr + 2 * lda, V::sub(t[r][2], t[r][1]));
            V::store(vr + 3 * lda, V::sub(t[r][1], t[r][3]));
        }
    }
}

// Lanes c0 .. c0 + W - 1 of a row of w floats, zero outside [0, w): masked
// loads, so nothing outside the row is read.
STRIATE_TILE_TARGET inline typename V::reg padded_lanes(const float* row, int64_t w, int64_t c0) {
    const int64_t lo = c0 < 0 ? -c0 : 0, hi = w - c0 < W ? w - c0 : W;
    if (hi <= lo) return V::zero();
    if (lo == 0 && hi == W) return V::load(row + c0);
    const uint32_t m = ((hi >= 32 ? ~0u : (1u << hi) - 1u)) & ~((1u << lo) - 1u);
    return V::maskz_load(V::bits(m), row + c0);
}

// Rows [r0, r1) of a plane of h x w floats, seen with `top` zero rows and
// `left` zero columns before it and zeros past it, split by column phase for
// nt tiles per row: padded row r goes to x_q = a + ((r % 2) * NQ + q) * arr +
// (r / 2 - th0) * nt with x_q[j] = padded[r][2j + q] for q < NQ, j < nt (the
// arrays wino2_input (NQ = 4) and wino5_input (NQ = 6) read). One
// de-interleaved pair of vectors per W tiles (masked loads at the row edges)
// gives x0 and x1; x2 and x3 are the same moved down one lane, x4 and x5 those
// moved down one more. W lanes are stored at a time, so up to round_up(nt, W)
// entries are written: the lanes past nt land in the next row of the same
// array, written afterwards, or in the caller's slack past the last.
template <int NQ>
STRIATE_TILE_TARGET void wino_split(const float* plane, int64_t h, int64_t w, int64_t top, int64_t left, int64_t r0,
                                    int64_t r1, int64_t th0, int64_t nt, float* a, int64_t arr) {
    using R = typename V::reg;
    for (int64_t r = r0; r < r1; ++r) {
        float* x[NQ];
        x[0] = a + (r % 2) * NQ * arr + (r / 2 - th0) * nt;
        for (int q = 1; q < NQ; ++q) x[q] = x[q - 1] + arr;
        const int64_t ih = r - top;
        if (ih < 0 || ih >= h) {
            for (int64_t j = 0; j < nt; j += W)
                for (int q = 0; q < NQ; ++q) V::store(x[q] + j, V::zero());
            continue;
        }
        const float* row = plane + ih * w;
        for (int64_t j = 0; j < nt; j += W) {
            const int64_t c0 = 2 * j - left, cn = c0 + 2 * W;  // cn: the columns of x0, x1 at j + W
            R ev, od;
            V::deinterleave(padded_lanes(row, w, c0), padded_lanes(row, w, c0 + W), ev, od);
            V::store(x[0] + j, ev);
            V::store(x[1] + j, od);
            // x(q + 2), x(q + 3) are x(q), x(q + 1) one tile on: the lanes moved down, the next column in.
            for (int q = 2; q < NQ; q += 2) {
                const int64_t ce = cn + q - 2, co = ce + 1;
                ev = V::shift_in(ev, ce >= 0 && ce < w ? row[ce] : 0.f);
                od = V::shift_in(od, co >= 0 && co < w ? row[co] : 0.f);
                V::store(x[q] + j, ev);
                V::store(x[q + 1] + j, od);
            }
        }
    }
}

// The output transform A^T m A + bias of P tiles: m[a*lda + p] (a < 16),
// readable for p < round_up(P, W); output (r, l) of tile p goes to
// y_r[2p + l], stored for p < round_up(P, W) (y0, y1 hold that many pairs).
STRIATE_TILE_TARGET void wino2_output(const float* m, int64_t lda, int64_t P, float bias, float* y0, float* y1) {
    using R = typename V::reg;
    const R b = V::set1(bias);
    for (int64_t p = 0; p < P; p += W) {
        R s[2][4];  // s = A^T m
        for (int q = 0; q < 4; ++q) {
            const R m0 = V::load(m + q * lda + p), m1 = V::load(m + (4 + q) * lda + p),
                    m2 = V::load(m + (8 + q) * lda + p), m3 = V::load(m + (12 + q) * lda + p);
            s[0][q] = V::add(V::add(m0, m1), m2);
            s[1][q] = V::sub(V::sub(m1, m2), m3);
        }
        for (int r = 0; r < 2; ++r) {
            float* y = (r ? y1 : y0) + 2 * p;
            const R c0 = V::add(V::add(V::add(s[r][0], s[r][1]), s[r][2]), b);
            const R c1 = V::add(V::sub(V::sub(s[r][1], s[r][2]), s[r][3]), b);
            R lo, hi;
            V::interleave(c0, c1, lo, hi);
            V::store(y, lo);
            V::store(y + W, hi);
        }
    }
}

// ---- Winograd F(2x2, 5x5) transforms ----------------------------------------------------
// Points 0, 1, -1, 2, -1/2 and infinity:
//   B^T = [[1,  3/2,   -2, -3/2,    1, 0],     A^T = [[1, 1,  1, 1,    1, 0],
//          [0,   -1, -5/2, -1/2,    1, 0],            [0, 1, -1, 2, -1/2, 1]]
//          [0,    1,  1/2, -5/2,    1, 0],
//          [0, -1/2,   -1,  1/2,    1, 0],
//          [0,    2,   -1,   -2,    1, 0],
//          [0,    1,  3/2,   -2, -3/2, 1]]
// (G, 6 x 5, is applied to the weights in conv_winograd.cpp.) Every factor
// is a power of two or a sum of two (3/2 x = x + x/2), so the products are
// exact and a multiply-add the compiler may form rounds as the separate
// operations do: the AVX2 and AVX-512 instantiations round alike. The
// symmetric points +-2 (all-integer transforms) put up to 16 times the weight
// on the corner taps and left the tests' elementwise tolerance on some
// outputs near zero (forward up to 1.34x, the weight gradient 2.7x over 48
// random layers); 2 and -1/2 gave half to a third of that error in a float32
// simulation of both (+-1/2 gave more). Shared by the forward, dx and dw.

// t = B^T d for one column (or row) d of a 6 x 6 tile, through a = d1 - d3
// and q = d4 - d2.
STRIATE_TILE_TARGET inline void wino5_bt(const typename V::reg (&d)[6], typename V::reg (&t)[6]) {
    using R = typename V::reg;
    const R half = V::set1(0.5f);
    const R a = V::sub(d[1], d[3]), q = V::sub(d[4], d[2]);
    const R ha = V::mul(a, half), hq = V::mul(q, half);
    const R s23 = V::add(d[2], d[3]), d23 = V::sub(d[2], d[3]);
    t[0] = V::add(V::add(V::sub(d[0], d[2]), q), V::add(a, ha));  // d0 + 3/2 d1 - 2 d2 - 3/2 d3 + d4
    t[1] = V::sub(V::sub(q, a), V::add(s23, V::mul(s23, half)));  // -d1 - 5/2 d2 - 1/2 d3 + d4
    t[2] = V::add(V::add(q, a), V::add(d23, V::mul(d23, half)));  // d1 + 1/2 d2 - 5/2 d3 + d4
    t[3] = V::sub(q, ha);                                         // -1/2 d1 - d2 + 1/2 d3 + d4
    t[4] = V::add(q, V::add(a, a));                               // 2 d1 - d2 - 2 d3 + d4
    t[5] = V::sub(V::sub(V::add(d[5], a), d[3]), V::add(q, hq));  // d1 + 3/2 d2 - 2 d3 - 3/2 d4 + d5
}

// The input transform B^T d B of P tiles: tile p's input d[i][q] (row i,
// column q of its 6 x 6 input) is src[6i + q][p], readable for
// p < round_up(P, W); v[a*lda + p] = (B^T d B)[a / 6][a % 6] for
// p < round_up(P, W) (lanes past P are scratch, as in wino2_input).
// B^T d B of one vector of tiles: d[i][q] = src[6i + q][p], and (B^T d B)[r][q]
// goes to v[(6r + q)*lda + p].
STRIATE_TILE_TARGET inline void wino5_btdb(const float* const* src, int64_t p, float* v, int64_t lda) {
    using R = typename V::reg;
    R t[6][6];  // t = B^T d, one column q at a time: t[r][q]
    for (int q = 0; q < 6; ++q) {
        R d[6], o[6];
        for (int i = 0; i < 6; ++i) d[i] = V::load(src[6 * i + q] + p);
        wino5_bt(d, o);
        for (int r = 0; r < 6; ++r) t[r][q] = o[r];
    }
    for (int r = 0; r < 6; ++r) {  // (B^T d) B, row r
        R o[6];
        wino5_bt(t[r], o);
        float* vr = v + 6 * r * lda + p;
        for (int q = 0; q < 6; ++q) V::store(vr + q * lda, o[q]);
    }
}

STRIATE_TILE_TARGET void wino5_input(const float* const* src, int64_t P, float* v, int64_t lda) {
    for (int64_t p = 0; p < P; p += W) wino5_btdb(src, p, v, lda);
}

// (s0, s1) = A^T m for one column (or row) m of six values.
STRIATE_TILE_TARGET inline void wino5_at(const typename V::reg (&m)[6], typename V::reg& s0, typename V::reg& s1) {
    s0 = V::add(m[0], V::add(V::add(m[1], m[2]), V::add(m[3], m[4])));
    s1 = V::add(V::add(V::sub(m[1], m[2]), V::sub(V::add(m[3], m[3]), V::mul(m[4], V::set1(0.5f)))), m[5]);
}

// The output transform A^T m A + bias of P tiles: m[a*lda + p] (a < 36),
// readable for p < round_up(P, W); output (r, l) of tile p goes to
// y_r[2p + l], stored for p < round_up(P, W) (y0, y1 hold that many pairs).
STRIATE_TILE_TARGET void wino5_output(const float* m, int64_t lda, int64_t P, float bias, float* y0, float* y1) {
    using R = typename V::reg;
    const R b = V::set1(bias);
    for (int64_t p = 0; p < P; p += W) {
        R s[2][6];  // s = A^T m
        for (int q = 0; q < 6; ++q) {
            R col[6];
            for (int i = 0; i < 6; ++i) col[i] = V::load(m + (6 * i + q) * lda + p);
            wino5_at(col, s[0][q], s[1][q]);
        }
        for (int r = 0; r < 2; ++r) {
            float* y = (r ? y1 : y0) + 2 * p;
            R c0, c1, lo, hi;
            wino5_at(s[r], c0, c1);
            V::interleave(V::add(c0, b), V::add(c1, b), lo, hi);
            V::store(y, lo);
            V::store(y + W, hi);
        }
    }
}

// The weight-gradient transforms work on channels-last rows instead: vectors
// run over W consecutive channels of one tile, tiles one after another along
// a tile row, n channels (a multiple of W). Tile t's 4 x 4 input is
// x[i*ldr + (2t + q)*ldx + c] (row i, column q); u[a*lda + t*ldu + c] =
// (B^T d B)[a / 4][a % 4], by the same sequence of operations as wino2_input.
STRIATE_TILE_TARGET void wino2_dw_input(const float* x, int64_t ldr, int64_t ldx, int64_t n, int64_t nt, float* u,
                                        int64_t ldu, int64_t lda) {
    using R = typename V::reg;
    for (int64_t t = 0; t < nt; ++t) {
        const float* xt = x + 2 * t * ldx;
        float* ut = u + t * ldu;
        for (int64_t c = 0; c < n; c += W) {
            R b[4][4];  // B^T d, one column q at a time
            for (int q = 0; q < 4; ++q) {
                const float* xq = xt + q * ldx + c;
                const R d0 = V::load(xq), d1 = V::load(xq + ldr), d2 = V::load(xq + 2 * ldr),
                        d3 = V::load(xq + 3 * ldr);
                b[0][q] = V::sub(d0, d2);
                b[1][q] = V::add(d1, d2);
                b[2][q] = V::sub(d2, d1);
                b[3][q] = V::sub(d1, d3);
            }
            for (int r = 0; r < 4; ++r) {  // (B^T d) B, row r
                float* ur = ut + 4 * r * lda + c;
                V::store(ur, V::sub(b[r][0], b[r][2]));
                V::store(ur + lda, V::add(b[r][1], b[r][2]));
                V::store(ur + 2 * lda, V::sub(b[r][2], b[r][1]));
                V::store(ur + 3 * lda, V::sub(b[r][1], b[r][3]));
            }
        }
    }
}

// The output-gradient side: tile t's 2 x 2 dy is e[i][j] = dy[i*ldr + (2t + j)*lde + k];
// v[a*lda + t*ldv + k] = (A e A^T)[a / 4][a % 4] for k < n (a multiple of W), with
// A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]: each of (e0, e1) -> (e0, e0 + e1, e0 - e1, -e1),
// columns first, then rows.
STRIATE_TILE_TARGET void wino2_dw_grad(const float* dy, int64_t ldr, int64_t lde, int64_t n, int64_t nt, float* v,
                                       int64_t ldv, int64_t lda) {
    using R = typename V::reg;
    const R z = V::zero();
    for (int64_t t = 0; t < nt; ++t) {
        const float* et = dy + 2 * t * lde;
        float* vt = v + t * ldv;
        for (int64_t k = 0; k < n; k += W) {
            R h[2][4];  // e A^T: row i of e expanded to 4 columns
            for (int i = 0; i < 2; ++i) {
                const R e0 = V::load(et + i * ldr + k), e1 = V::load(et + i * ldr + lde + k);
                h[i][0] = e0;
                h[i][1] = V::add(e0, e1);
                h[i][2] = V::sub(e0, e1);
                h[i][3] = V::sub(z, e1);
            }
            for (int q = 0; q < 4; ++q) {  // A (e A^T), column q
                float* vq = vt + q * lda + k;
                V::store(vq, h[0][q]);
                V::store(vq + 4 * lda, V::add(h[0][q], h[1][q]));
                V::store(vq + 8 * lda, V::sub(h[0][q], h[1][q]));
                V::store(vq + 12 * lda, V::sub(z, h[1][q]));
            }
        }
    }
}

// The weight gradient of one (output channel, input-channel vector) from the
// 16 sums M: d[(3i + j)*ldd + c] = (G^T m_c G)[i][j] for c < n, m_c[a / 4][a % 4]
// = m[a*lda + c] (readable for c < round_up(n, W)). As (2G)^T m (2G) / 4 with
// 2G^T = [[2, 1, 1, 0], [0, 1, -1, 0], [0, 1, 1, 2]]: additions only, then one
// multiplication by 1/4 whose result is stored, so there is no multiply-add
// for the compiler to fuse and both ISA paths round alike.
STRIATE_TILE_TARGET void wino2_dw_output(const float* m, int64_t lda, int64_t n, float* d, int64_t ldd) {
    using R = typename V::reg;
    const R quarter = V::set1(0.25f);
    for (int64_t c = 0; c < n; c += W) {
        R r[3][4];  // 2G^T m, one column q at a time
        for (int q = 0; q < 4; ++q) {
            const R m0 = V::load(m + q * lda + c), m1 = V::load(m + (4 + q) * lda + c),
                    m2 = V::load(m + (8 + q) * lda + c), m3 = V::load(m + (12 + q) * lda + c);
            const R h = V::add(m1, m2);
            r[0][q] = V::add(V::add(m0, m0), h);
            r[1][q] = V::sub(m1, m2);
            r[2][q] = V::add(h, V::add(m3, m3));
        }
        const typename V::mask tail = V::prefix(n - c);
        for (int i = 0; i < 3; ++i) {  // (2G^T m) 2G / 4, row i
            const R h = V::add(r[i][1], r[i][2]);
            const R out[3] = {V::mul(V::add(V::add(r[i][0], r[i][0]), h), quarter),
                              V::mul(V::sub(r[i][1], r[i][2]), quarter),
                              V::mul(V::add(h, V::add(r[i][3], r[i][3])), quarter)};
            for (int j = 0; j < 3; ++j) {
                float* dj = d + (3 * i + j) * ldd + c;
                if (c + W <= n) {
                    V::store(dj, out[j]);
                } else {
                    V::mask_store(dj, tail, out[j]);
                }
            }
        }
    }
}

// The 5 x 5 weight gradient through F(2x2, 5x5), on channels-last rows as
// above, with the forward's points and matrices; its G^T M G takes
//   15 G = [[15, 0, 0, 0, 0], [-5, -5, -5, -5, -5], [5, -5, 5, -5, 5], [1, 2, 4, 8, 16],
//           [-16, 8, -4, 2, -1], [0, 0, 0, 0, 15]],
// integers, so that it too has only exact products.
// Tile t's 6 x 6 input is x[i*ldr + (2t + q)*ldx + c]; u[a*lda + t*ldu + c] =
// (B^T d B)[a / 6][a % 6].
STRIATE_TILE_TARGET void wino5_dw_input(const float* x, int64_t ldr, int64_t ldx, int64_t n, int64_t nt, float* u,
                                        int64_t ldu, int64_t lda) {
    for (int64_t t = 0; t < nt; ++t) {
        const float* src[36];  // the tile's 6 x 6 inputs, channel 0
        for (int i = 0; i < 6; ++i)
            for (int q = 0; q < 6; ++q) src[6 * i + q] = x + i * ldr + (2 * t + q) * ldx;
        for (int64_t c = 0; c < n; c += W) wino5_btdb(src, c, u + t * ldu, lda);
    }
}

// (e0, e1) -> A (e0, e1) = (e0, e0 + e1, e0 - e1, e0 + 2 e1, e0 - e1 / 2, e1).
STRIATE_TILE_TARGET inline void wino5_dw_a(typename V::reg e0, typename V::reg e1, typename V::reg (&h)[6]) {
    h[0] = e0;
    h[1] = V::add(e0, e1);
    h[2] = V::sub(e0, e1);
    h[3] = V::add(e0, V::add(e1, e1));
    h[4] = V::sub(e0, V::mul(e1, V::set1(0.5f)));
    h[5] = e1;
}

// The output-gradient side: tile t's 2 x 2 dy is e[i][j] = dy[i*ldr + (2t +
// j)*lde + k]; v[a*lda + t*ldv + k] = (A e A^T)[a / 6][a % 6] for k < n (a
// multiple of W): rows of e expanded first, then columns.
STRIATE_TILE_TARGET void wino5_dw_grad(const float* dy, int64_t ldr, int64_t lde, int64_t n, int64_t nt, float* v,
                                       int64_t ldv, int64_t lda) {
    using R = typename V::reg;
    for (int64_t t = 0; t < nt; ++t) {
        const float* et = dy + 2 * t * lde;
        float* vt = v + t * ldv;
        for (int64_t k = 0; k < n; k += W) {
            R h[2][6];  // e A^T: row i of e expanded to 6 columns
            for (int i = 0; i < 2; ++i) wino5_dw_a(V::load(et + i * ldr + k), V::load(et + i * ldr + lde + k), h[i]);
            for (int q = 0; q < 6; ++q) {  // A (e A^T), column q
                R col[6];
                wino5_dw_a(h[0][q], h[1][q], col);
                for (int r = 0; r < 6; ++r) V::store(vt + (6 * r + q) * lda + k, col[r]);
            }
        }
    }
}

// r = (15 G)^T m for one column m of six values.
STRIATE_TILE_TARGET inline void wino5_dw_gt15(const typename V::reg (&m)[6], typename V::reg (&r)[5]) {
    using R = typename V::reg;
    const R two = V::set1(2.f), four = V::set1(4.f), eight = V::set1(8.f), sixteen = V::set1(16.f);
    const R s12 = V::add(m[1], m[2]), d21 = V::sub(m[2], m[1]);
    const R s12x5 = V::add(V::mul(s12, four), s12), d21x5 = V::add(V::mul(d21, four), d21);
    r[0] = V::sub(V::add(V::add(V::sub(V::mul(m[0], sixteen), m[0]), d21x5), m[3]), V::mul(m[4], sixteen));
    r[1] = V::add(V::sub(V::mul(m[3], two), s12x5), V::mul(m[4], eight));
    r[2] = V::sub(V::add(d21x5, V::mul(m[3], four)), V::mul(m[4], four));
    r[3] = V::add(V::sub(V::mul(m[3], eight), s12x5), V::mul(m[4], two));
    r[4] = V::add(V::sub(V::add(d21x5, V::mul(m[3], sixteen)), m[4]), V::sub(V::mul(m[5], sixteen), m[5]));
}

// The 5 x 5 weight gradient of one (output channel, input-channel vector) from
// the 36 sums M: d[(5i + j)*ldd + c] = (G^T m_c G)[i][j] for c < n, m_c[a / 6][a % 6]
// = m[a*lda + c] (readable for c < round_up(n, W)), as (15G)^T m (15G) / 225: the
// one inexact multiplication's result is stored.
STRIATE_TILE_TARGET void wino5_dw_output(const float* m, int64_t lda, int64_t n, float* d, int64_t ldd) {
    using R = typename V::reg;
    const R scale = V::set1(1.f / 225.f);
    for (int64_t c = 0; c < n; c += W) {
        R g[5][6];  // (15G)^T m, one column q at a time: g[i][q]
        for (int q = 0; q < 6; ++q) {
            R col[6], o[5];
            for (int a = 0; a < 6; ++a) col[a] = V::load(m + (6 * a + q) * lda + c);
            wino5_dw_gt15(col, o);
            for (int i = 0; i < 5; ++i) g[i][q] = o[i];
        }
        const typename V::mask tail = V::prefix(n - c);
        for (int i = 0; i < 5; ++i) {  // ((15G)^T m) (15G) / 225, row i
            R o[5];
            wino5_dw_gt15(g[i], o);
            for (int j = 0; j < 5; ++j) {
                float* dj = d + (5 * i + j) * ldd + c;
                const R out = V::mul(o[j], scale);
                if (c + W <= n) {
                    V::store(dj, out);
                } else {
                    V::mask_store(dj, tail, out);
                }
            }
        }
    }
}

// ---- the kit --------------------------------------------------------------------------

ConvKit make_kit(Isa isa) {
    ConvKit k{};
    k.isa = isa;
    k.W = W;
    k.direct[0] = direct_shape<kDirNV0, kDirMR0>(std::make_integer_sequence<int, kDirMR0>{});
    k.direct[1] = direct_shape<kDirNV1, kDirMR1>(std::make_integer_sequence<int, kDirMR1>{});
    k.kvec_nt[0] = kKvecNT1;
    k.kvec_nt[1] = kKvecNT2;
    k.kvec[0][0] = kvec_row<1, 1, 1>(std::make_integer_sequence<int, kKvecNT1>{});
    k.kvec[0][1] = kvec_row<2, 1, 1>(std::make_integer_sequence<int, kKvecNT1>{});
    k.kvec[1][0] = kvec_row<1, 2, 1>(std::make_integer_sequence<int, kKvecNT2>{});
    k.kvec[1][1] = kvec_row<2, 2, 1>(std::make_integer_sequence<int, kKvecNT2>{});
    k.kvec_s2[0][0] = kvec_row<1, 1, 2>(std::make_integer_sequence<int, kKvecNT1>{});
    k.kvec_s2[0][1] = kvec_row<2, 1, 2>(std::make_integer_sequence<int, kKvecNT1>{});
    k.kvec_s2[1][0] = kvec_row<1, 2, 2>(std::make_integer_sequence<int, kKvecNT2>{});
    k.kvec_s2[1][1] = kvec_row<2, 2, 2>(std::make_integer_sequence<int, kKvecNT2>{});
    if (kWide) {
        k.dw = {{{4, 6, dw_tile<4, 6>}, {3, 8, dw_tile<3, 8>}, {2, 12, dw_tile<2, 12>}, {2, 8, dw_tile<2, 8>},
                 {1, 16, dw_tile<1, 16>}, {0, 0, nullptr}}};
    } else {
        // Accumulators + MV x vectors + one broadcast <= 16 registers.
        k.dw = {{{2, 6, dw_tile<2, 6>}, {3, 4, dw_tile<3, 4>}, {1, 12, dw_tile<1, 12>}, {4, 2, dw_tile<4, 2>},
                 {2, 4, dw_tile<2, 4>}, {1, 8, dw_tile<1, 8>}}};
    }
    k.flat_acc = kWide ? 24 : 12;
    k.flat_mk = flat_dw_mk;
    k.flat[1] = flat_dw_row<1>(std::make_integer_sequence<int, kFlatMax>{});
    k.flat[2] = flat_dw_row<2>(std::make_integer_sequence<int, kFlatMax>{});
    k.flat[3] = flat_dw_row<3>(std::make_integer_sequence<int, kFlatMax>{});
    k.flat[4] = flat_dw_row<4>(std::make_integer_sequence<int, kFlatMax>{});
    k.flat[5] = flat_dw_row<5>(std::make_integer_sequence<int, kFlatMax>{});
    k.flat[6] = flat_dw_row<6>(std::make_integer_sequence<int, kFlatMax>{});
    k.kdw_ni[0] = kKdwNI3;
    k.kdw_ni[1] = kKdwNI5;
    k.kdw[0] = kvec_dw_row<3>(std::make_integer_sequence<int, kKdwNI3>{});
    k.kdw[1] = kvec_dw_row<5>(std::make_integer_sequence<int, kKdwNI5>{});
    k.sdx_nr = kSdxNR;
    k.sdx_nv = kSdxNV;
    k.sdx[1] = scatter_dx_row<1>(std::make_integer_sequence<int, kSdxNV>{});
    k.sdx[2] = scatter_dx_row<2>(std::make_integer_sequence<int, kSdxNV>{});
    k.transpose = transpose_block;
    k.flatten_dy = flatten_dy;
    k.gather_runs = gather_runs;
    k.wino2_split = wino_split<4>;
    k.wino2_in = wino2_input;
    k.wino2_out = wino2_output;
    k.wino5_split = wino_split<6>;
    k.wino5_in = wino5_input;
    k.wino5_out = wino5_output;
    k.wino2_dw_in = wino2_dw_input;
    k.wino2_dw_grad = wino2_dw_grad;
    k.wino2_dw_out = wino2_dw_output;
    k.wino5_dw_in = wino5_dw_input;
    k.wino5_dw_grad = wino5_dw_grad;
    k.wino5_dw_out = wino5_dw_output;
    return k;
}
