// conv_dw_flat.cpp: the stride-1 weight gradient for few input and at most 16
// output channels per group (LeNet C1), with masked vectors over positions
// flattened along the padded width (AVX-512).
//
// Not here: other dw algorithms (conv_dw_direct.cpp, conv_dw_kvec.cpp,
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
        active_isa() != Isa::avx512)
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

// Partials per chunk are (K, Cg, kh, kw), summed elementwise in chunk order.
class DwFlat final : public DwPlan {
   public:
    explicit DwFlat(const Conv2dShape& s) : s_(s), d_(input_geom(s)), off_(static_cast<size_t>(d_.R())) {
        direct_offsets(d_, off_.data());
        part_size = s.K * d_.R();
    }
    void chunk(const float* dy, const float* x, int64_t n0, int64_t n1, float* part, int) const override {
        flat_dw_chunk(s_, d_, off_.data(), dy, x, n0, n1, part);
    }
    void reduce(const float* parts, int64_t nchunks, float* dw, int threads) const override {
        reduce_chunks(parts, nchunks, part_size, dw, threads);
    }

   private:
    Conv2dShape s_;
    DirectGeom d_;
    std::vector<int64_t> off_;
};

}  // namespace

std::unique_ptr<DwPlan> make_dw_flat(const Conv2dShape& s) {
    if (!flat_dw_ok(s)) return nullptr;
    return std::make_unique<DwFlat>(s);
}

}  // namespace conv
}  // namespace striate
