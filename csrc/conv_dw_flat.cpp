// conv_dw_flat.cpp: the stride-1 weight gradient for few input and at most 16
// output channels per group (LeNet C1), with masked vectors over positions
// flattened along the padded width, on the kernels of the active ISA path.
//
// Not here: other dw algorithms (conv_dw_direct.cpp, conv_dw_kvec.cpp,
// conv_gemm.cpp), the batch-chunk loop that calls it (conv2d.cpp).
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

// ---- flat dw, for Cg < 16 and stride 1 ---------------------------------------
//
// With stride 1, output position (oh, ow) flattened over the padded input width
// as q = oh*Wp + ow reads xp[off[r] + q] for reduction row r = (c, i, j). With
// dy laid out the same way (dyf[k][q], zero where ow >= OW),
// dw[k][r] = sum_n sum_q dyf[n][k][q] * xp[n][off[r] + q]: both operands are
// contiguous in q, so a register tile of MK output channels x NR rows keeps
// 16 lane accumulators per (k, r) (one or two vectors), runs over every q-vector of every image
// of one batch chunk in order, and is reduced across lanes once at the end
// (a fixed instruction sequence). The FMAs are masked to the real output
// positions, so lanes with ow >= OW leave their accumulators alone and a
// non-finite x that no window of tap (i, j) covers never reaches dw[.][.][i][j]. No im2col matrix,
// no transposes; the result depends on the chunk only, never on the tiling,
// the thread count or the ISA path.

// Flat dw for this geometry? Stride 1, fewer than 16 input channels per group
// (wider groups use the channels-last direct dw), at most 16 output channels
// per group (for 3->32 k3 on 32x32 it measured 0.98x to 1.07x the GEMM, so the
// GEMM keeps those), not pointwise, and at least half of the flattened lanes
// are real output positions.
bool flat_dw_ok(const Conv2dShape& s, const ConvKit* kit) {
    if (!kit || s.sh != 1 || s.sw != 1 || s.C / s.groups >= 16 || s.K / s.groups > 16 || is_pointwise(s))
        return false;
    const int64_t Wp = s.W + s.pl + s.pr, Q = (s.OH - 1) * Wp + s.OW;
    return 2 * s.OH * s.OW >= round_up(Q, kFlatLanes);
}

// dw partial of one batch chunk [n0, n1): part (K, Cg, kh, kw) = sum over the
// chunk's images, in order, through the kit's flat dw tiles.
void flat_dw_chunk(const ConvKit& kit, const Conv2dShape& s, const DirectGeom& d, const int64_t* off, const float* dy, const float* x,
                   int64_t n0, int64_t n1, float* part) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, R = d.R();
    const int64_t L = kFlatLanes, Q = d.Q(), qv = ceil_div_nonneg(Q, L), ldq = qv * L;
    const int64_t nimg = n1 - n0, xstride = d.padded_size(), dystride = Kg * ldq;
    float* xp = tl_pad.get(nimg * xstride);
    float* dyf = tl_dyT.get(nimg * dystride);
    const int64_t mkb = kit.flat_mk(Kg), nrb = kit.flat_acc / mkb;
    // masks[v] bit l: q = L*v + l is a real output position (q < Q and q % Wp < OW).
    std::vector<uint16_t> masks(static_cast<size_t>(qv), 0);
    for (int64_t h = 0; h < s.OH; ++h)
        for (int64_t q = h * d.Wp; q < h * d.Wp + s.OW; ++q)
            masks[static_cast<size_t>(q / L)] |= static_cast<uint16_t>(1u << (q % L));
    for (int64_t g = 0; g < s.groups; ++g) {
        for (int64_t n = n0; n < n1; ++n) {
            pad_image(d, x + (n * s.C + g * Cg) * s.H * s.W, xp + (n - n0) * xstride);
            kit.flatten_dy(Kg, s.OH, s.OW, d.Wp, ldq, dy + (n * s.K + g * Kg) * s.OH * s.OW, dyf + (n - n0) * dystride);
        }
        float* pg = part + g * Kg * R;  // (Kg, R)
        for (int64_t k0 = 0; k0 < Kg; k0 += mkb) {
            const int64_t mk = std::min(mkb, Kg - k0);
            // Rows split evenly over the tiles: no narrow tail tile waiting on FMA latency.
            const int64_t ntiles = (R + nrb - 1) / nrb;
            for (int64_t t = 0; t < ntiles; ++t) {
                const int64_t r0 = t * R / ntiles, nr = (t + 1) * R / ntiles - r0;
                kit.flat[mk][static_cast<size_t>(nr)](
                    xp, xstride, dyf + k0 * ldq, ldq, dystride, nimg, off + r0, masks.data(), qv, pg + k0 * R + r0, R);
            }
        }
    }
}

// Partials per chunk are (K, Cg, kh, kw), summed elementwise in chunk order.
class DwFlat final : public DwPlan {
   public:
    const char* name() const override { return "flat"; }
    DwFlat(const ConvKit& kit, const Conv2dShape& s) : kit_(kit), s_(s), d_(input_geom(s)), off_(static_cast<size_t>(d_.R())) {
        direct_offsets(d_, off_.data());
        part_size = s.K * d_.R();
    }
    void chunk(const float* dy, const float* x, int64_t n0, int64_t n1, float* part, int) const override {
        flat_dw_chunk(kit_, s_, d_, off_.data(), dy, x, n0, n1, part);
    }
    void reduce(const float* parts, int64_t nchunks, float* dw, int threads) const override {
        reduce_chunks(parts, nchunks, part_size, dw, threads);
    }

   private:
    const ConvKit& kit_;
    Conv2dShape s_;
    DirectGeom d_;
    std::vector<int64_t> off_;
};

}  // namespace

std::unique_ptr<DwPlan> make_dw_flat(const Conv2dShape& s, const ConvKit* kit) {
    if (!flat_dw_ok(s, kit)) return nullptr;
    return std::make_unique<DwFlat>(*kit, s);
}

}  // namespace conv
}  // namespace striate
