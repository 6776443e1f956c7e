// conv_strided.cpp: convolution forward and input gradient for strides > 1 on
// the direct kernels of the active ISA path (conv_direct.cpp's driver and
// conv_tiles.hpp), without an im2col matrix.
//
// Forward: small outputs with column stride 1 or 2 run on the channel-vector
// tiles reading the zero-padded image at the stride; otherwise the padded
// image is split into stride phases, so that the strided convolution becomes
// a stride-1 one and runs on the stride-1 direct driver unchanged (vectors
// over positions, or over output channels for small outputs). dx: the input positions of one phase (ih + pt = i*sh + a,
// iw + pl = j*sw + b) receive only the kernel taps of that phase, so dx splits
// into sh*sw independent stride-1 convolutions of the padded dy with
// sub-kernels, each a direct convolution.
//
// Not here: stride 1 (conv_direct.cpp, conv_dx_scatter.cpp), dx with dilation
// and a stride (conv_gemm.cpp), dw (conv_dw_*.cpp), the choice of path
// (conv2d.cpp).
#include <algorithm>
#include <cstring>
#include <vector>

#include "conv_internal.hpp"
#include "parallel.hpp"

namespace striate {
namespace conv {

namespace {

// The geometry direct_segments_of and the driver read: an output of
// (Hout, Wout) positions whose rows lie Wp floats apart in the image.
DirectGeom output_geom(int64_t Cin, int64_t Hout, int64_t Wout, int64_t Wp) {
    DirectGeom d = make_direct_geom(Cin, Hout, Wout, 0, 0, 0, Wp - Wout, 1, 1, 1, 1);
    d.Wout = Wout;
    return d;
}

// ---- forward: the image split into stride phases ------------------------------
//
// With the padded image xp (Hp, Wp), output (oh, ow) reads xp[oh*sh + i*dh][ow*sw
// + j*dw] for tap (i, j). Write i*dh = qi*sh + a and j*dw = qj*sw + b: the
// element is row oh + qi, column ow + qj of the phase plane (a, b), the plane of
// xp[u*sh + a][v*sw + b]. So with the phase planes of every channel laid out one
// after the other, tap r = (c, i, j) reads the planes at the fixed offset
// off[r] = plane(c, a, b) + qi*Wq + qj plus oh*Wq + ow: a stride-1 direct
// convolution with the same reduction rows in the same order. Only the phases
// some tap reads are built (a 1x1 stride-2 kernel reads one in four pixels).

// Strides up to kMaxPhaseStride per direction: the split and the dx plan walk
// every phase, so a huge stride (legal: it just gives one output row) takes
// im2col + SGEMM instead.
constexpr int64_t kMaxPhaseStride = 16;

struct PhaseSplit {
    std::vector<int64_t> rows, cols;  // the row phases a and column phases b some tap reads
    int64_t Hq = 0, Wq = 0;           // rows and columns of a phase plane
    int64_t plane() const { return Hq * Wq; }
    int64_t planes_per_channel() const { return static_cast<int64_t>(rows.size() * cols.size()); }
};

PhaseSplit phase_split(const Conv2dShape& s) {
    PhaseSplit p;
    std::vector<char> ra(static_cast<size_t>(s.sh), 0), cb(static_cast<size_t>(s.sw), 0);
    for (int64_t i = 0; i < s.kh; ++i) ra[static_cast<size_t>(i * s.dh % s.sh)] = 1;
    for (int64_t j = 0; j < s.kw; ++j) cb[static_cast<size_t>(j * s.dw % s.sw)] = 1;
    for (int64_t a = 0; a < s.sh; ++a)
        if (ra[static_cast<size_t>(a)]) p.rows.push_back(a);
    for (int64_t b = 0; b < s.sw; ++b)
        if (cb[static_cast<size_t>(b)]) p.cols.push_back(b);
    // The last row read is (OH - 1) + (kh - 1)*dh / sh, likewise for columns.
    p.Hq = s.OH + (s.kh - 1) * s.dh / s.sh;
    p.Wq = s.OW + (s.kw - 1) * s.dw / s.sw;
    return p;
}

// buf = the phase planes of src (Cg, H, W): plane (c, a, b) at
// ((c*|rows| + ia)*|cols| + ib)*Hq*Wq holds xp[u*sh + a][v*sw + b], zero in the
// padding; then kDirectSlack zeros.
void split_phases(const Conv2dShape& s, const PhaseSplit& p, int64_t Cg, const float* src, float* buf) {
    const int64_t na = static_cast<int64_t>(p.rows.size()), nb = static_cast<int64_t>(p.cols.size());
    const int64_t plane = p.plane(), total = Cg * na * nb * plane;
    // Zeros everywhere first (one pass), then each image row once into the
    // rows of the phases that read it: short per-row loops, no per-row fills.
    std::fill(buf, buf + total + kDirectSlack, 0.f);
    // Columns v of phase b with 0 <= v*sw + b - pl < W: [vlo, vhi), the same on every row.
    int64_t vlo[kMaxPhaseStride], vhi[kMaxPhaseStride];
    for (int64_t ib = 0; ib < nb; ++ib) {
        const int64_t b = p.cols[static_cast<size_t>(ib)];
        vlo[ib] = std::min(p.Wq, ceil_div_nonneg(s.pl - b, s.sw));
        vhi[ib] = std::max(vlo[ib], std::min(p.Wq, ceil_div_nonneg(s.W + s.pl - b, s.sw)));
    }
    // Phase row (a, u) of image row h = u*sh + a - pt; a = -1 where no phase reads h.
    int64_t ia_of[kMaxPhaseStride];
    std::fill(ia_of, ia_of + kMaxPhaseStride, int64_t(-1));
    for (int64_t ia = 0; ia < na; ++ia) ia_of[p.rows[static_cast<size_t>(ia)]] = ia;
    // The image rows in order (a stream the prefetchers follow; phase by phase
    // they were read every other line, from L3 at its latency).
    for (int64_t c = 0; c < Cg; ++c) {
        const float* sc = src + c * s.H * s.W;
        // (a, u) = ((h + pt) % sh, (h + pt) / sh), stepped without a division per row.
        int64_t a = s.pt % s.sh, u = s.pt / s.sh;
        for (int64_t h = 0; h < s.H; ++h, a = a + 1 == s.sh ? 0 : a + 1, u += a == 0) {
            const int64_t ia = ia_of[a];
            if (ia < 0 || u >= p.Hq) continue;
            const float* row = sc + h * s.W - s.pl;
            float* const first = buf + (c * na + ia) * nb * plane + u * p.Wq;  // row u of plane (c, a, cols[0])
            for (int64_t ib = 0; ib < nb; ++ib) {
                float* dst = first + ib * plane;
                const float* rb = row + p.cols[static_cast<size_t>(ib)];  // dst[v] = rb[v*sw]
                if (s.sw == 2) {
                    for (int64_t v = vlo[ib]; v < vhi[ib]; ++v) dst[v] = rb[2 * v];
                } else {
                    for (int64_t v = vlo[ib]; v < vhi[ib]; ++v) dst[v] = rb[v * s.sw];
                }
            }
        }
    }
}

// ---- dx: one stride-1 convolution per phase ----------------------------------
//
// dx at padded position (hp, wp) = (i*sh + a, j*sw + b) is
//     sum_k sum_m sum_n w[k][c][a + m*sh][b + n*sw] * dy[k][i - m][j - n]
// over the taps of phase (a, b): m < mh = ceil((kh - a) / sh), n < mw. With
// dy zero-padded by (Mh - 1, Mw - 1) in front (Mh = ceil(kh / sh), the most
// taps of any phase) and enough behind, that is a stride-1 direct convolution
// of the padded dy with the flipped sub-kernel: reduction rows r = (k, m', n')
// in order, m = mh-1-m', n = mw-1-n'. Phase (a, b) covers the dx rows i in
// [i0, i1) with i*sh + a in [pt, pt + H), and likewise columns; its output is
// computed into a buffer and dealt into dx. Each dx element is one phase's sum
// in one fixed order, whatever the tiles or threads.

struct DxPhase {
    int64_t a, b, mh, mw;  // phase and its taps per direction
    int64_t i0, nI, j0, nJ;
    DirectGeom out;     // Hout = nI, Wout = nJ, Wp = the padded dy's row stride
    bool kvec = false;  // vectors over channels (kvec_conv_run) instead of positions
    bool rows = false;  // positions: rows mode, buffer planes of nI*nJ; flat mode: of out.Q(), rows Wp apart
    std::vector<Seg> segs;
    std::vector<int64_t> off;
    // Packed weights: channel block mb (kvec: ldw channels, one block), padded
    // channels, floats per group and offset of the phase's weights.
    int64_t mb = 0, Mpad = 0, wofs = 0;
    int64_t R() const { return static_cast<int64_t>(off.size()); }
    int64_t ldo() const { return rows || kvec ? nI * nJ : out.Q(); }
    int64_t row_stride() const { return rows || kvec ? nJ : out.Wp; }
};

struct DxPlan {
    DirectGeom dyp;  // dy padded
    std::vector<DxPhase> phases;
    int64_t wp_size = 0, out_size = 0, outT_size = 0;
};

DxPlan dx_plan(const ConvKit& kit, const Conv2dShape& s) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int64_t Mh = (s.kh + s.sh - 1) / s.sh, Mw = (s.kw + s.sw - 1) / s.sw;
    auto first = [](int64_t pad, int64_t a, int64_t st) { return ceil_div_nonneg(pad - a, st); };
    int64_t i1max = 0, j1max = 0;
    for (int64_t a = 0; a < s.sh; ++a) i1max = std::max(i1max, first(s.pt + s.H, a, s.sh));
    for (int64_t b = 0; b < s.sw; ++b) j1max = std::max(j1max, first(s.pl + s.W, b, s.sw));
    DxPlan plan;
    // Rows read: i + PH - mh + 1 + m' for i < i1 <= i1max, so i1max + PH rows in all.
    plan.dyp = make_direct_geom(Kg, s.OH, s.OW, Mh - 1, std::max<int64_t>(0, i1max - s.OH), Mw - 1,
                                std::max<int64_t>(0, j1max - s.OW), 1, 1, 1, 1);
    const int64_t Wq = plan.dyp.Wp, plane = plan.dyp.Hp * plan.dyp.Wp;
    for (int64_t a = 0; a < s.sh; ++a)
        for (int64_t b = 0; b < s.sw; ++b) {
            DxPhase ph;
            ph.a = a;
            ph.b = b;
            ph.mh = a < s.kh ? (s.kh - a + s.sh - 1) / s.sh : 0;
            ph.mw = b < s.kw ? (s.kw - b + s.sw - 1) / s.sw : 0;
            ph.i0 = first(s.pt, a, s.sh);
            ph.nI = std::max<int64_t>(0, first(s.pt + s.H, a, s.sh) - ph.i0);
            ph.j0 = first(s.pl, b, s.sw);
            ph.nJ = std::max<int64_t>(0, first(s.pl + s.W, b, s.sw) - ph.j0);
            if (ph.nI == 0 || ph.nJ == 0) continue;  // no dx element in this phase
            ph.out = output_geom(Kg, ph.nI, ph.nJ, Wq);
            if (ph.mh > 0 && ph.mw > 0) {
                ph.segs = direct_segments_of(ph.out, kit.W, &ph.rows);
                ph.kvec = kvec_better(kit, Cg, ph.nI, ph.nJ, ph.segs);
                ph.mb = ph.kvec ? round_up(Cg, kit.W) : direct_block(kit, Cg, ph.segs);
                ph.Mpad = round_up(Cg, ph.mb);
                ph.off.resize(static_cast<size_t>(Kg * ph.mh * ph.mw));
                for (int64_t k = 0; k < Kg; ++k)
                    for (int64_t m = 0; m < ph.mh; ++m)
                        for (int64_t n = 0; n < ph.mw; ++n)
                            ph.off[static_cast<size_t>((k * ph.mh + m) * ph.mw + n)] =
                                k * plane + (Mh - ph.mh + m + ph.i0) * Wq + (Mw - ph.mw + n + ph.j0);
                ph.wofs = plan.wp_size;
                plan.wp_size += s.groups * ph.Mpad * ph.R();
                plan.out_size = std::max(plan.out_size, Cg * ph.ldo());
                if (ph.kvec) plan.outT_size = std::max(plan.outT_size, (ph.nI * ph.nJ + kit.W) * 2 * kit.W);
            }
            plan.phases.push_back(std::move(ph));
        }
    return plan;
}

}  // namespace

// Strided forward on the phase split: any stride > 1 and dilation on a vector ISA path.
bool strided_forward_ok(const Conv2dShape& s, const ConvKit* kit) {
    return kit && (s.sh > 1 || s.sw > 1) && s.sh <= kMaxPhaseStride && s.sw <= kMaxPhaseStride;
}

// Strided dx by phases: stride > 1 without dilation (with it a phase's taps
// are no longer every sh-th row) on a vector ISA path.
bool strided_dx_ok(const Conv2dShape& s, const ConvKit* kit) {
    return strided_forward_ok(s, kit) && s.dh == 1 && s.dw == 1;
}

void forward_strided(const ConvKit& kit, const Conv2dShape& s, const float* x, const float* w, const float* b,
                     float* y, int threads) {
    const int64_t Cg = s.C / s.groups;
    const PhaseSplit p = phase_split(s);
    const int64_t nb = static_cast<int64_t>(p.cols.size()), per_c = p.planes_per_channel();
    std::vector<int64_t> off(static_cast<size_t>(Cg * s.kh * s.kw));
    // The geometry the driver reads: output (OH, OW) at row stride Wq.
    const DirectGeom d = output_geom(Cg * per_c, s.OH, s.OW, p.Wq);
    bool rows = false;
    // 3x3 stride 2 with 8 or more input channels: the channel-vector tiles beat
    // the phase split on both ISA paths even at equal lanes (batch 16-128,
    // interleaved, AVX2 / AVX-512: 64->128 on 16x16 1.06 / 1.06x, 16->32 on
    // 32x32 1.10 / 1.22x, 32->32 on 28x28 1.31 / 1.19x, 64->128 on 56x56
    // 1.07 / 1.07x, 8->16 on 32x32 1.14 / 1.37x); not so for 1x1 (AVX2
    // 0.70x), 5x5 (0.82x) or 3 input channels (0.95x).
    const bool s2_3x3 = s.kh == 3 && s.kw == 3 && s.sh == 2 && s.sw == 2 && s.dh == 1 && s.dw == 1 && Cg >= 8 &&
                        s.K / s.groups >= kit.W;
    if (s.sw <= 2 && (s2_3x3 || kvec_better(kit, s.K / s.groups, s.OH, s.OW, direct_segments_of(d, kit.W, &rows)))) {
        // Small outputs go to the channel-vector kernel, whose tiles broadcast
        // one input value per position: they read the zero-padded image itself
        // at the stride (rows sh*Wp apart, positions sw apart), with no phase
        // split, whose gathers took about 12% of the 64->128 stride-2 forward
        // where the padding's plain row copies take little. Same taps, same
        // order, same bits.
        DirectGeom g = make_direct_geom(Cg, s.H, s.W, s.pt, s.pb, s.pl, s.pr, s.kh, s.kw, s.dh, s.dw);
        g.Hout = s.OH;
        g.Wout = s.OW;
        g.sh = s.sh;
        g.sw = s.sw;
        direct_offsets(g, off.data());
        forward_direct_prepared(kit, s, g, off, g.padded_size(),
                                [&g](const float* src, float* xp) { pad_image(g, src, xp); }, x, w, b, y, threads);
        return;
    }
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t i = 0; i < s.kh; ++i)
            for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t ia = std::find(p.rows.begin(), p.rows.end(), i * s.dh % s.sh) - p.rows.begin();
                const int64_t ib = std::find(p.cols.begin(), p.cols.end(), j * s.dw % s.sw) - p.cols.begin();
                off[static_cast<size_t>((c * s.kh + i) * s.kw + j)] =
                    (c * per_c + ia * nb + ib) * p.plane() + (i * s.dh / s.sh) * p.Wq + j * s.dw / s.sw;
            }
    forward_direct_prepared(kit, s, d, off, Cg * per_c * p.plane() + kDirectSlack,
                            [&](const float* src, float* buf) { split_phases(s, p, Cg, src, buf); }, x, w, b, y,
                            threads);
}

void backward_dx_strided(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx,
                         int threads) {
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, khw = s.kh * s.kw;
    const DxPlan plan = dx_plan(kit, s);
    // wp of phase ph, group g: wofs + g*Mpad*R, blocks of mb channels:
    // [c / mb][r = (k, m', n')][c % mb] = w[g*Kg + k][c][a + (mh-1-m')*sh][b + (mw-1-n')*sw], zero past Cg.
    float* wp = tl_wpack.get(std::max<int64_t>(plan.wp_size, 1));
    for (const DxPhase& ph : plan.phases) {
        if (ph.off.empty()) continue;
        const int64_t R = ph.R(), mb = ph.mb;
        parallel_for(
            s.groups * ph.Mpad,
            [&](int64_t gc) {
                const auto [g, c] = split_index(gc, ph.Mpad);
                float* dst = wp + ph.wofs + (g * ph.Mpad + c / mb * mb) * R + c % mb;
                for (int64_t k = 0; k < Kg; ++k)
                    for (int64_t m = 0; m < ph.mh; ++m)
                        for (int64_t n = 0; n < ph.mw; ++n) {
                            const int64_t r = (k * ph.mh + m) * ph.mw + n;
                            const int64_t i = ph.a + (ph.mh - 1 - m) * s.sh, j = ph.b + (ph.mw - 1 - n) * s.sw;
                            dst[r * mb] = c < Cg ? w[((g * Kg + k) * Cg + c) * khw + i * s.kw + j] : 0.f;
                        }
            },
            pack_threads(plan.wp_size, threads));
    }
    parallel_for(
        s.N,
        [&](int64_t n) {
            float* dyp = tl_pad.get(plan.dyp.padded_size());
            float* out = tl_out.get(std::max<int64_t>(plan.out_size, 1));
            float* outT = plan.outT_size ? tl_dyT.get(plan.outT_size) : nullptr;
            for (int64_t g = 0; g < s.groups; ++g) {
                pad_image(plan.dyp, dy + (n * s.K + g * Kg) * s.OH * s.OW, dyp);
                float* dxg = dx + (n * s.C + g * Cg) * s.H * s.W;  // (Cg, H, W)
                for (const DxPhase& ph : plan.phases) {
                    // dx[c][(i0 + u)*sh + a - pt][(j0 + v)*sw + b - pl] for u < nI, v < nJ.
                    float* base = dxg + (ph.i0 * s.sh + ph.a - s.pt) * s.W + ph.j0 * s.sw + ph.b - s.pl;
                    const int64_t rstep = s.sh * s.W;
                    if (ph.off.empty()) {  // no tap reaches this phase
                        for (int64_t c = 0; c < Cg; ++c)
                            for (int64_t u = 0; u < ph.nI; ++u) {
                                float* d = base + c * s.H * s.W + u * rstep;
                                for (int64_t v = 0; v < ph.nJ; ++v) d[v * s.sw] = 0.f;
                            }
                        continue;
                    }
                    const int64_t ldo = ph.ldo(), ls = ph.row_stride();
                    auto deal = [&](int64_t m0, int64_t m1) {  // out -> the phase's dx elements
                        for (int64_t c = m0; c < m1; ++c)
                            for (int64_t u = 0; u < ph.nI; ++u) {
                                float* d = base + c * s.H * s.W + u * rstep;
                                const float* o = out + c * ldo + u * ls;
                                if (s.sw == 2) {
                                    for (int64_t v = 0; v < ph.nJ; ++v) d[2 * v] = o[v];
                                } else {
                                    for (int64_t v = 0; v < ph.nJ; ++v) d[v * s.sw] = o[v];
                                }
                            }
                    };
                    const float* wg = wp + ph.wofs + g * ph.Mpad * ph.R();
                    if (ph.kvec) {
                        kvec_conv_run(kit, ph.out, ph.off.data(), ph.R(), dyp, wg, ph.Mpad, Cg, outT, out, threads);
                        deal(0, Cg);
                    } else {
                        direct_conv_run(kit, dyp, ph.off.data(), ph.R(), wg, Cg, ph.segs, out, ldo, nullptr, threads,
                                        deal);
                    }
                }
            }
        },
        threads);
}

}  // namespace conv
}  // namespace striate
