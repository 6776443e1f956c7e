// conv_internal.hpp: what the convolution files (conv2d.cpp and conv_*.cpp)
// share: the tile contract every conv micro-kernel family follows, the
// per-thread scratch arenas, the padded-image geometry of the direct kernels,
// small index helpers, and the entry points of each algorithm for the
// dispatcher in conv2d.cpp.
//
// Not here: the public API (conv2d.hpp), the micro-kernels themselves
// (conv_tiles.hpp), the vector layer (simd.hpp), anything that talks to Python.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <vector>

#include "conv2d.hpp"
#include "cpu.hpp"

namespace striate {
namespace conv {

// ---------------------------------------------------------------------------
// Tile contract (every conv micro-kernel family follows it)
//
// A family is a function template over compile-time tile dimensions (A, B),
// written once over the vector type V of simd.hpp and instantiated per ISA
// path (conv_tiles_avx512.cpp, conv_tiles_avx2.cpp), one instantiation per
// tile shape, collected in the ConvKit table indexed by the tile's actual
// dimensions (so edge tiles are simply smaller tiles). One call computes one
// register tile: A x B accumulators of one vector of W lanes each (W = 16 on
// AVX-512, sized for 32 registers: A*B <= 28; W = 8 on AVX2, sized for 16
// registers: A*B <= 12 with the operands of one step in the other 4 and at
// least 10 accumulators where possible, to hide the 4-cycle FMA latency).
//   init:   every accumulator starts from zero, from the bias, or (dw families
//           that accumulate image after image) from the partial already in
//           memory, as the family's `first`-style argument says;
//   step:   for each reduction index t = 0, 1, ... in increasing order (never
//           reordered, never split across threads), load one operand as
//           vectors, broadcast the other, and acc = fma(x, y, acc): one
//           rounding per term. A reduction split across calls (dw over images)
//           resumes from the exact partial, so the order is unchanged;
//   store:  each output lane is written exactly once, plain stores for whole
//           vectors and masked stores at the edges; operands are zero-padded
//           (or masked) instead of branching, so the step loop has no edge
//           branches. Full-vector loads may touch up to kDirectSlack floats
//           past a padded buffer; the buffers are allocated with that slack.
// A kernel takes raw pointers, leading dimensions and counts only: it knows
// nothing of Conv2dShape, allocates nothing and never opens a parallel region.
//
// Consequences. Each output element is the same sum in the same order for any
// tile shape and any thread count, so results are bit-identical across
// thread counts. The order per element does not depend on W either: flat dw,
// the one family that keeps per-lane partial sums, uses 16 logical lanes on
// every ISA and one fixed tree to add them, and the dispatcher's choices that
// change the order (scatter or direct dx) are made with the same cost model on
// both paths. So AVX2 and AVX-512 give the same bits; the generic path
// (im2col + GEMM) does not.
//
// Families (conv_tiles.hpp, with their tile sizes per ISA): direct (MR
// channels x NV position vectors), kvec (ROWS x NT positions x KV channel
// vectors), dw outer product (NR output channels x MV input-channel vectors),
// flat dw (MK output channels x NR reduction rows, lane-summed once), kvec dw
// (NI kernel rows x KW taps), scatter dx (NR input channels x NV band vectors).
// ---------------------------------------------------------------------------

// Images per dw/db partial. Fixed (never derived from the thread count) so that
// the reduction order, and therefore every bit of dw and db, is the same for
// any number of threads.
constexpr int64_t kBatchChunk = 4;
// Floats past a padded image that full-vector loads may touch.
constexpr int64_t kDirectSlack = 32;

// Threads for repacking `floats` floats of weights: the calling thread alone
// below kPackParallelFloats. Such a pack takes a few microseconds, less than a
// parallel region's fork and join, which another process holding the second
// core stretches to tens (one image of 1 -> 32 channels, 5x5 on 28x28: 2
// threads took 2.2x the time of one on a loaded Zen 4, with two regions a call).
constexpr int64_t kPackParallelFloats = int64_t(1) << 14;
inline int pack_threads(int64_t floats, int threads) { return floats < kPackParallelFloats ? 1 : threads; }

// A per-thread scratch buffer that grows on demand and is kept across calls,
// so steady-state training allocates nothing here. Buffers start on a
// 64-byte boundary, so rows whose stride is a multiple of 16 floats are read
// with whole-cache-line vector loads.
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

extern thread_local Arena tl_cols;   // im2col output
extern thread_local Arena tl_dcols;  // input-gradient columns before col2im
extern thread_local Arena tl_parts;  // dw/db partials (used by the calling thread only)
extern thread_local Arena tl_pad;    // zero-padded image (direct paths)
extern thread_local Arena tl_out;    // direct-path output before dropping the padded columns
extern thread_local Arena tl_wpack;  // packed weights (calling thread only)
extern thread_local Arena tl_dyT;    // transposed or flattened dy
extern thread_local Arena tl_wino;   // Winograd V and M of one tile block, and the input rows

// i = hi * n + lo, decoded: `const auto [g, r] = split_index(gr, R);`.
struct IndexPair {
    int64_t hi, lo;
};
inline IndexPair split_index(int64_t i, int64_t n) { return {i / n, i % n}; }

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
inline int64_t ceil_div_nonneg(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

inline bool is_pointwise(const Conv2dShape& s) {
    return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.pt == 0 && s.pb == 0 && s.pl == 0 && s.pr == 0;
}

// Geometry of one direct convolution: a (Cin, Hin, Win) input padded by
// (top, bottom, left, right) into (Cin, Hp, Wp), kernel (kh, kw) with
// dilation (dh, dw), stride 1, output (Hout, Wout) flattened with row stride Wp.
struct DirectGeom {
    int64_t Cin, Hin, Win, top, bottom, left, right, kh, kw, dh, dw;
    int64_t Hp, Wp, Hout, Wout;
    // Output (oh, ow) reads the image at oh*sh rows and ow*sw columns from its
    // taps: 1 except for the strided forward on the channel-vector kernel.
    int64_t sh = 1, sw = 1;
    int64_t Q() const { return (Hout - 1) * Wp + Wout; }  // flattened output positions
    int64_t R() const { return Cin * kh * kw; }
    int64_t padded_size() const { return Cin * Hp * Wp + kDirectSlack; }
};

DirectGeom make_direct_geom(int64_t Cin, int64_t Hin, int64_t Win, int64_t top, int64_t bottom, int64_t left,
                            int64_t right, int64_t kh, int64_t kw, int64_t dh, int64_t dw);
// The geometry of x itself: (Cg, H, W) padded as the forward pads it.
DirectGeom input_geom(const Conv2dShape& s);
// The geometry of dx as a convolution of dy padded by the dilated kernel
// extent minus the forward padding (each side must be >= 0).
DirectGeom dx_geom(const Conv2dShape& s);
// off[r] for r = (c, i, j): c*Hp*Wp + i*dh*Wp + j*dw.
void direct_offsets(const DirectGeom& d, int64_t* off);
// xp = zero-padded src. src is (Cin, Hin, Win); xp holds d.padded_size() floats.
void pad_image(const DirectGeom& d, const float* src, float* xp);
// Sum of n floats in a fixed order (16 interleaved lanes, then the lanes in order).
float sum_fixed(const float* p, int64_t n);

// ---- the micro-kernels of one ISA path ---------------------------------------

// One vector of output positions of the direct kernel: input at
// xp[off[r] + src + l], output at out[m*ldo + dst + l], for the lanes l set in
// mask. Loads always read all W lanes (the padded buffer has kDirectSlack
// floats of slack); stores are masked.
struct Seg {
    int64_t src, dst;
    uint32_t mask;
};

using direct_tile_fn = void (*)(const float* xp, const int64_t* off, int64_t R, const float* wb, const Seg* sg,
                                float* out, int64_t ldo, const float* bias);
using kvec_tile_fn = void (*)(const float* xp, const int64_t* off, int64_t R, const float* wT, int64_t ldw,
                              int64_t src0, int64_t rstep, const float* bias, int64_t nlast, float* out0,
                              float* out1, int64_t ldt);
using dw_tile_fn = void (*)(const float* xT, int64_t ldc, const int64_t* src, const int64_t* ranges,
                            int64_t nranges, const float* dyT, int64_t ldk, float* part, bool first);
using flat_dw_fn = void (*)(const float* xp, int64_t xstride, const float* dyf, int64_t ldq, int64_t dystride,
                            int64_t nimg, const int64_t* off, const uint16_t* masks, int64_t qv, float* dst,
                            int64_t ldd);
using kvec_dw_fn = void (*)(const float* xp, int64_t xstride, const float* dyT, int64_t ldk, int64_t dystride,
                            int64_t nimg, const int64_t* pair_off, int64_t OH, int64_t OW, int64_t Wp, float* dst);
using scatter_dx_fn = void (*)(const float* dyf, int64_t ldq, int64_t Kg, int64_t kw, int64_t dil,
                               const float* const* wrow, float* const* dst, const uint16_t* masks);
using transpose_fn = void (*)(const float* src, int64_t lds, int64_t nrows, int64_t ncols, float* dst, int64_t ldd,
                              bool store_valid_only);
using flatten_fn = void (*)(int64_t Kg, int64_t OH, int64_t OW, int64_t Wp, int64_t ldq, const float* dy,
                            float* dyf);
using gather_runs_fn = void (*)(const float* src, const int64_t* roff, int64_t nq, int64_t len, const int64_t* poff,
                                int64_t np, float* dst, int64_t ldd);
using wino_in_fn = void (*)(const float* const* src, int64_t P, float* v, int64_t lda);
using wino_split_fn = void (*)(const float* plane, int64_t h, int64_t w, int64_t top, int64_t left, int64_t r0,
                               int64_t r1, int64_t th0, int64_t nt, float* a, int64_t arr);
using wino_out_fn = void (*)(const float* m, int64_t lda, int64_t P, float bias, float* y0, float* y1);
using wino_dw_fn = void (*)(const float* src, int64_t ldr, int64_t lds, int64_t n, int64_t nt, float* dst,
                            int64_t ldd, int64_t lda);
using wino_dw_out_fn = void (*)(const float* m, int64_t lda, int64_t n, float* d, int64_t ldd);

// Logical lanes of the flat dw on every ISA (see flat_dw_tile).
constexpr int64_t kFlatLanes = 16;
constexpr int kMaxDirectMR = 8, kMaxKvecNT = 12, kFlatMax = 6, kMaxKdwNI = 8, kMaxSdxNR = 2, kMaxSdxNV = 9;

// The dispatch tables of every family for one ISA path (conv_tiles.hpp,
// instantiated by conv_tiles_avx512.cpp and conv_tiles_avx2.cpp). Each table
// is indexed by a tile's actual dimensions, entry 0 unused.
struct ConvKit {
    Isa isa;
    int W;  // lanes per vector
    // direct: two tile shapes of equal register count; fn[m] computes m <= mr channels x nv vectors.
    struct DirectShape {
        int mr, nv;
        direct_tile_fn fn[kMaxDirectMR + 1];
    } direct[2];
    // kvec: at most kvec_nt[KV-1] positions per row; kvec[KV-1][ROWS-1][NT].
    int kvec_nt[2];
    std::array<kvec_tile_fn, kMaxKvecNT + 1> kvec[2][2];
    // The same tiles with positions two columns apart (stride-2 forward).
    std::array<kvec_tile_fn, kMaxKvecNT + 1> kvec_s2[2][2];
    // dw outer product: up to six variants of mv vectors x nr output channels (mv == 0 ends the list).
    struct DwVariant {
        int mv, nr;
        dw_tile_fn fn;
    };
    std::array<DwVariant, 6> dw;
    // flat dw: flat[mk][nr]; flat_mk(Kg) output channels per tile and flat_acc / that rows.
    int flat_acc;
    int64_t (*flat_mk)(int64_t Kg);
    std::array<flat_dw_fn, kFlatMax + 1> flat[kFlatMax + 1];
    // kvec dw: kdw[kw == 5][ni] for ni <= kdw_ni[kw == 5] kernel rows.
    int kdw_ni[2];
    std::array<kvec_dw_fn, kMaxKdwNI + 1> kdw[2];
    // scatter dx: sdx[nr][nv] for nr <= sdx_nr channels and nv <= sdx_nv band vectors.
    int sdx_nr, sdx_nv;
    std::array<scatter_dx_fn, kMaxSdxNV + 1> sdx[kMaxSdxNR + 1];
    transpose_fn transpose;  // W x W blocks
    flatten_fn flatten_dy;
    gather_runs_fn gather_runs;  // im2col by positions (conv_gemm.cpp's dw)
    // Winograd F(2x2, 3x3): input and output transforms of a run of tiles.
    wino_split_fn wino2_split;
    wino_in_fn wino2_in;
    wino_out_fn wino2_out;
    // ... of F(2x2, 5x5): the split into 6 column phases, B^T d B of 6 x 6
    // tiles (36 points), A^T m A + bias.
    wino_split_fn wino5_split;
    wino_in_fn wino5_in;
    wino_out_fn wino5_out;
    // ... and of the weight gradient, on channels-last rows: B^T d B of the
    // input tiles and A e A^T of the output-gradient tiles of one tile row,
    // and G^T M G of the 16 sums M; the same for 5 x 5 (36 sums).
    wino_dw_fn wino2_dw_in, wino2_dw_grad;
    wino_dw_out_fn wino2_dw_out;
    wino_dw_fn wino5_dw_in, wino5_dw_grad;
    wino_dw_out_fn wino5_dw_out;
};

// The kits of the vector paths; null when this build or CPU has none.
const ConvKit* kit_avx512();
const ConvKit* kit_avx2();
// The kit for active_isa(), read once per call by the dispatcher: null on the
// generic path, which takes im2col + GEMM everywhere.
const ConvKit* conv_kit();

// xT (Hp*Wp, ldc) = zero-padded channels-last copy of x (Cg, H, W); ldc is a multiple of kit.W.
// Hp and Wp may exceed the padded size: the rows and columns past it are zero.
void pad_transpose(const ConvKit& kit, const Conv2dShape& s, int64_t Cg, int64_t Wp, int64_t Hp, int64_t ldc,
                   const float* x, float* xT);
// The same for the padded rows [hp0, hp1) only: xT ((hp1 - hp0)*Wp, ldc).
void pad_transpose_rows(const ConvKit& kit, const Conv2dShape& s, int64_t Cg, int64_t Wp, int64_t hp0, int64_t hp1,
                        int64_t ldc, const float* x, float* xT);
// The kit's dw outer-product tile with the least padded work for Cg input and
// Kg output channels (conv_common.cpp).
const ConvKit::DwVariant& choose_dw_variant(const ConvKit& kit, int64_t Cg, int64_t Kg);
// dyT (P, ldk) = transpose of dy (Kg, P); ldk is a multiple of kit.W, columns past Kg zero.
void transpose_dy(const ConvKit& kit, int64_t Kg, int64_t P, int64_t ldk, const float* dy, float* dyT);

// ---- the algorithms (one file each) ---------------------------------------

// Every vector algorithm takes the kit of the ISA path the call started on;
// its *_ok / *_better / make_* functions answer false or null without one.

// conv_direct.cpp: stride-1 forward and dx read straight from the padded image.
bool direct_forward_ok(const Conv2dShape& s, const ConvKit* kit);
bool direct_dx_ok(const Conv2dShape& s, const ConvKit* kit);
void forward_direct(const ConvKit& kit, const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    int threads);
void backward_dx_direct(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx,
                        int threads);
// Estimated vector FMAs of backward_dx_direct (for the scatter-dx choice).
double direct_dx_cost(const ConvKit& kit, const Conv2dShape& s);
// The direct driver on a prepared image, shared with conv_strided.cpp.
// prepare(src, buf) builds the image of one group of one input (Cg, H, W) in
// buf (image_size floats, kDirectSlack of them slack); the output is
// (d.Hout, d.Wout) read at row stride d.Wp; reduction row r = (c, i, j) of the
// weights reads the image at off[r], in order.
using PrepareFn = std::function<void(const float* src, float* buf)>;
void forward_direct_prepared(const ConvKit& kit, const Conv2dShape& s, const DirectGeom& d,
                             const std::vector<int64_t>& off, int64_t image_size, const PrepareFn& prepare,
                             const float* x, const float* w, const float* b, float* y, int threads);
// The output segments of d (rows or flat mode, *rows says which), the channel
// block of the tile shape direct_conv_run takes for M channels on them, and
// direct_conv_run: out[m*ldo + seg.dst + l] = bias[m] + sum_r wp(r, m) *
// xp[off[r] + seg.src + l], wp packed in blocks of direct_block() channels
// (wp[m / mb][r][m % mb], zero past M); after(m0, m1) runs once a task has
// written channels [m0, m1). Channel blocks are split over the threads when
// the caller is outside a parallel region.
std::vector<Seg> direct_segments_of(const DirectGeom& d, int64_t W, bool* rows);
int64_t direct_block(const ConvKit& kit, int64_t M, const std::vector<Seg>& segs);
void direct_conv_run(const ConvKit& kit, const float* xp, const int64_t* off, int64_t R, const float* wp, int64_t M,
                     const std::vector<Seg>& segs, float* out, int64_t ldo, const float* bias, int threads,
                     const std::function<void(int64_t, int64_t)>& after);
// For small outputs the kernels vectorised over channels instead (kvec):
// kvec_better says whether they need clearly fewer lanes than direct_conv_run
// on segs; kvec_conv_run writes y (M, d.Hout*d.Wout) = the convolution of xp
// (output rows d.Wp apart) with wT (R, ldw), ldw a multiple of kit.W and zero
// past M, through outT ((d.Hout*d.Wout + W) * 2W floats); its pairs of output
// rows spread over `threads` when the caller is outside a parallel region.
bool kvec_better(const ConvKit& kit, int64_t M, int64_t Hout, int64_t Wout, const std::vector<Seg>& segs);
void kvec_conv_run(const ConvKit& kit, const DirectGeom& d, const int64_t* off, int64_t R, const float* xp,
                   const float* wT, int64_t ldw, int64_t M, float* outT, float* y, int threads);

// conv_strided.cpp: stride > 1 forward (the direct driver on the image split
// into stride phases) and dx (one stride-1 direct convolution per phase of dx).
bool strided_forward_ok(const Conv2dShape& s, const ConvKit* kit);
bool strided_dx_ok(const Conv2dShape& s, const ConvKit* kit);
void forward_strided(const ConvKit& kit, const Conv2dShape& s, const float* x, const float* w, const float* b,
                     float* y, int threads);
void backward_dx_strided(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx,
                         int threads);

// conv_dx_scatter.cpp: stride-1 dx by bands of kernel rows.
bool scatter_dx_better(const Conv2dShape& s, const ConvKit* kit);
void backward_dx_scatter(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx,
                         int threads);

// A dw algorithm: chunk() writes the partial of images [n0, n1) into part
// (part_size floats), reduce() sums nchunks partials in chunk order into dw
// (K, Cg, kh, kw). chunk() runs inside a chunk task, reduce() on the caller.
// name() is what conv2d_algorithms reports for it.
struct DwPlan {
    int64_t part_size = 0;
    virtual ~DwPlan() = default;
    virtual const char* name() const = 0;
    virtual void chunk(const float* dy, const float* x, int64_t n0, int64_t n1, float* part, int threads) const = 0;
    virtual void reduce(const float* parts, int64_t nchunks, float* dw, int threads) const = 0;
};

// conv_dw_direct.cpp, conv_dw_kvec.cpp, conv_dw_flat.cpp, conv_gemm.cpp:
// each returns null when its algorithm does not apply to s.
std::unique_ptr<DwPlan> make_dw_direct(const Conv2dShape& s, const ConvKit* kit);
std::unique_ptr<DwPlan> make_dw_kvec(const Conv2dShape& s, const ConvKit* kit);
std::unique_ptr<DwPlan> make_dw_flat(const Conv2dShape& s, const ConvKit* kit);
std::unique_ptr<DwPlan> make_dw_gemm(const Conv2dShape& s, const ConvKit* kit);

// conv_dw_winograd.cpp: 3x3 stride-1 dw through Winograd F(3x3, 2x2).
// winograd_dw_ok: the shapes it supports; winograd_dw_better: where it is
// faster than the direct dw (measured; shape only, requires winograd_dw_ok);
// make_dw_winograd returns null unless winograd_dw_ok.
bool winograd_dw_ok(const Conv2dShape& s, const ConvKit* kit);
bool winograd_dw_better(const Conv2dShape& s);
std::unique_ptr<DwPlan> make_dw_winograd(const Conv2dShape& s, const ConvKit* kit);

// conv_winograd.cpp: 3x3 and 5x5 stride-1 forward and dx through Winograd
// F(2x2, 3x3) and F(2x2, 5x5).
bool winograd_forward_ok(const Conv2dShape& s, const ConvKit* kit);
bool winograd_dx_ok(const Conv2dShape& s, const ConvKit* kit);
// Where Winograd is faster than the direct kernels (measured; shape only, the
// same answer on every vector ISA path). Requires the matching *_ok.
bool winograd_forward_better(const Conv2dShape& s);
bool winograd_dx_better(const Conv2dShape& s);
void forward_winograd(const ConvKit& kit, const Conv2dShape& s, const float* x, const float* w, const float* b,
                      float* y, int threads);
void backward_dx_winograd(const ConvKit& kit, const Conv2dShape& s, const float* dy, const float* w, float* dx,
                          int threads);

// conv_gemm.cpp: im2col + SGEMM, the path for every shape and CPU.
void forward_gemm(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, int threads);
// dx of images [n0, n1) through W^T . dy and col2im.
void backward_dx_gemm(const Conv2dShape& s, const float* dy, const float* w, float* dx, int64_t n0, int64_t n1,
                      int threads);
// Partials summed in chunk order: dst[i] = sum_c src[c*len + i].
void reduce_chunks(const float* src, int64_t nchunks, int64_t len, float* dst, int threads);

}  // namespace conv
}  // namespace striate
