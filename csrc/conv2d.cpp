// conv2d.cpp: 2-D convolution forward and backward (float32, NCHW): argument
// geometry and the choice of algorithm per shape and ISA path.
//
// Paths, chosen from the shape and the ISA path only (never the thread count;
// active_isa() is read once per call). Every specialised path exists for
// AVX-512 and for AVX2 (the same kernels, conv_tiles.hpp, with tiles sized per
// ISA, and the same choices, so both give the same bits); the generic path
// takes im2col + SGEMM for every shape.
//   forward, 3x3 or 5x5, stride 1, dilation 1, ungrouped, >= 16 input and
//       output channels: Winograd F(2x2, 3x3) or F(2x2, 5x5)
//       (conv_winograd.cpp); dx the same on dy with the rotated, transposed
//       weights, when the padding is at most 2 (3x3) or 4 (5x5).
//   forward, stride 1, not pointwise: direct kernel on the padded
//       image (conv_direct.cpp), vectors over positions or, for small outputs,
//       over output channels; bias fused.
//   forward, stride > 1: the direct kernel on the image split into stride
//       phases (conv_strided.cpp); dx without dilation, one stride-1 direct
//       convolution per phase of dx.
//   dx, stride 1, not pointwise: scatter dx by bands of kernel rows
//       (conv_dx_scatter.cpp) when it needs fewer FMAs or the padding is wider
//       than the dilated kernel, else the direct kernel on the padded dy.
//   dw, first that applies:
//       3x3, stride 1, dilation 1, ungrouped, >= 16 input and output
//           channels: Winograd F(3x3, 2x2); 5x5 likewise with >= 16 input
//           and >= 32 output channels and output planes of at least 8 x 8:
//           F(5x5, 2x2) (conv_dw_winograd.cpp);
//       >= 16 input channels per group, any stride: outer products on
//           channels-last copies (conv_dw_direct.cpp);
//       < 16 input and 12..16 output channels per group (on AVX2 also
//           17..32 for at most 3 inputs and width 5), stride 1, kernel width 3 or 5:
//           vectors over output channels (conv_dw_kvec.cpp);
//       < 16 input and <= 16 output channels per group, stride 1, output rows
//           filling half the padded width: flat dw (conv_dw_flat.cpp).
//   everything else (stride-1 pointwise, dilated strided dx, dw with few input
//   and many output channels, the generic ISA path): im2col + SGEMM
//   (conv_gemm.cpp).
//   db[k] = sum_n sum_p dy[n,k,p] always in fixed-order lanes (sum_fixed).
//
// Threads split the batch (or independent rows of packed weights); when the
// batch alone cannot keep them busy (one image, one dw chunk) the direct
// forward and dx also split channel blocks, scatter dx channel pairs, direct
// dw kernel taps and Winograd dw transform points, each output still computed
// by one thread in the same order
// (a nested parallel_for runs serially inside a batch task). dw and db are
// reduced over fixed chunks of kBatchChunk images: each chunk accumulates its
// images in index order into its own partial, and the partials are summed in
// chunk order, so every output bit is the same for any thread count. Scratch
// buffers live in per-thread arenas kept across calls (conv_internal.hpp).
//
// Not here: argument checks against Python objects (bind_conv.cpp), the
// algorithms (conv_*.cpp), the SIMD layer (simd.hpp), the GEMM (gemm.cpp).
#include "conv2d.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "conv_internal.hpp"
#include "parallel.hpp"
#include "shape.hpp"

namespace striate {

namespace {

void require_positive(int64_t v, const char* name) {
    if (v <= 0) throw std::invalid_argument(std::string("`") + name + "` must be positive, got " + std::to_string(v));
}
void require_nonnegative(int64_t v, const char* name) {
    if (v < 0) {
        throw std::invalid_argument(std::string("`") + name + "` must be non-negative, got " + std::to_string(v));
    }
}

}  // namespace

using conv::kBatchChunk;

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

namespace {

// 0 auto, 1 off, 2 force (conv2d_set_winograd).
std::atomic<int> g_winograd{0};

enum class Algo { winograd, direct, strided, scatter, gemm };

const char* algo_name(Algo a) {
    switch (a) {
        case Algo::winograd: return "winograd";
        case Algo::direct: return "direct";
        case Algo::strided: return "strided";
        case Algo::scatter: return "scatter";
        default: return "gemm";
    }
}

bool take_winograd(bool ok, bool better) {
    const int mode = g_winograd.load(std::memory_order_relaxed);
    return ok && mode != 1 && (mode == 2 || better);
}

// The forward and dx algorithms for s (see the list at the top of this file).
Algo forward_algo(const Conv2dShape& s, const conv::ConvKit* kit) {
    const bool pointwise = conv::is_pointwise(s);
    if (!pointwise && take_winograd(conv::winograd_forward_ok(s, kit), conv::winograd_forward_better(s)))
        return Algo::winograd;
    if (!pointwise && conv::direct_forward_ok(s, kit)) return Algo::direct;
    if (conv::strided_forward_ok(s, kit)) return Algo::strided;
    return Algo::gemm;
}

Algo dx_algo(const Conv2dShape& s, const conv::ConvKit* kit) {
    const bool pointwise = conv::is_pointwise(s);
    if (!pointwise && take_winograd(conv::winograd_dx_ok(s, kit), conv::winograd_dx_better(s))) return Algo::winograd;
    if (!pointwise && conv::scatter_dx_better(s, kit)) return Algo::scatter;
    if (!pointwise && conv::direct_dx_ok(s, kit)) return Algo::direct;
    if (conv::strided_dx_ok(s, kit)) return Algo::strided;
    return Algo::gemm;
}

// The dw algorithm for s (see the list at the top of this file).
std::unique_ptr<conv::DwPlan> choose_dw(const Conv2dShape& s, const conv::ConvKit* kit) {
    if (take_winograd(conv::winograd_dw_ok(s, kit), conv::winograd_dw_better(s))) return conv::make_dw_winograd(s, kit);
    if (auto p = conv::make_dw_direct(s, kit)) return p;
    if (auto p = conv::make_dw_kvec(s, kit)) return p;
    if (auto p = conv::make_dw_flat(s, kit)) return p;
    return conv::make_dw_gemm(s, kit);
}

}  // namespace

Conv2dAlgorithms conv2d_algorithms(const Conv2dShape& s) {
    const conv::ConvKit* kit = conv::conv_kit();
    return {algo_name(forward_algo(s, kit)), algo_name(dx_algo(s, kit)), choose_dw(s, kit)->name()};
}

void conv2d_set_winograd(const char* mode) {
    const std::string m(mode ? mode : "");
    if (m == "auto") {
        g_winograd = 0;
    } else if (m == "off") {
        g_winograd = 1;
    } else if (m == "force") {
        g_winograd = 2;
    } else {
        throw std::invalid_argument("`mode` must be 'auto', 'off' or 'force', got '" + m + "'");
    }
}

const char* conv2d_get_winograd() {
    const int mode = g_winograd.load(std::memory_order_relaxed);
    return mode == 0 ? "auto" : mode == 1 ? "off" : "force";
}

// Below this many multiply-adds (times 2) a forward runs on the calling
// thread: waking the others cost more than they saved. One image, 2 threads of
// a shared Zen 4, 1 -> 2 threads: 1 -> 6 on 28x28, 5x5 (0.24 MFLOP) 5.2 ->
// 6.3 us; 6 -> 16 on 14x14 (0.48) 9.9 -> 11.1 us; 3 -> 16 on 32x32 (0.88)
// 14.2 -> 15.2 us; but 16 -> 16 on 16x16 (1.18) 17.8 -> 11.7 us. Results
// are the same for any thread count, so this changes time only.
constexpr double kSerialForwardFlops = 1e6;

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    int threads) {
    // x is (N, C, H, W), w is (K, Cg, kh, kw), b is (K,) or null, y is (N, K, OH, OW)
    const conv::ConvKit* kit = conv::conv_kit();  // one ISA path for the whole call
    const double flops = 2.0 * double(s.N) * double(s.K) * double(s.C / s.groups) * double(s.kh * s.kw) *
                         double(s.OH * s.OW);
    if (flops < kSerialForwardFlops) threads = 1;
    switch (forward_algo(s, kit)) {
        case Algo::winograd: conv::forward_winograd(*kit, s, x, w, b, y, threads); break;
        case Algo::direct: conv::forward_direct(*kit, s, x, w, b, y, threads); break;
        case Algo::strided: conv::forward_strided(*kit, s, x, w, b, y, threads); break;
        default: conv::forward_gemm(s, x, w, b, y, threads); break;
    }
}


void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w, float* dx,
                     float* dw, float* db, int threads) {
    // dy is (N, K, OH, OW), x is (N, C, H, W), w is (K, Cg, kh, kw)
    // dx is (N, C, H, W), dw is (K, Cg, kh, kw), db is (K,)
    const int64_t P = s.OH * s.OW;
    const conv::ConvKit* kit = conv::conv_kit();  // one ISA path for the whole call
    bool dx_gemm = false;
    if (dx) {
        switch (dx_algo(s, kit)) {
            case Algo::winograd: conv::backward_dx_winograd(*kit, s, dy, w, dx, threads); break;
            case Algo::scatter: conv::backward_dx_scatter(*kit, s, dy, w, dx, threads); break;
            case Algo::direct: conv::backward_dx_direct(*kit, s, dy, w, dx, threads); break;
            case Algo::strided: conv::backward_dx_strided(*kit, s, dy, w, dx, threads); break;
            default: dx_gemm = true; break;  // per image, inside the chunk tasks below
        }
    }
    const std::unique_ptr<conv::DwPlan> plan = dw ? choose_dw(s, kit) : nullptr;

    // Partials: chunk c owns dw_parts[c] (plan->part_size floats) and db_parts[c] (K,).
    const int64_t nchunks = (s.N + kBatchChunk - 1) / kBatchChunk;
    const int64_t dw_part_size = plan ? plan->part_size : 0, db_part_size = db ? s.K : 0;
    float* parts = (dw || db) ? conv::tl_parts.get(nchunks * (dw_part_size + db_part_size)) : nullptr;
    float* dw_parts = parts;
    float* db_parts = db ? parts + nchunks * dw_part_size : nullptr;
    parallel_for(
        nchunks,
        [&](int64_t c) {
            const int64_t n0 = c * kBatchChunk, n1 = std::min(s.N, n0 + kBatchChunk);
            if (plan) plan->chunk(dy, x, n0, n1, dw_parts + c * dw_part_size, threads);
            if (dx_gemm) conv::backward_dx_gemm(s, dy, w, dx, n0, n1, threads);
            if (db) {
                float* dbc = db_parts + c * s.K;
                for (int64_t n = n0; n < n1; ++n)
                    for (int64_t k = 0; k < s.K; ++k) {
                        const float t = conv::sum_fixed(dy + (n * s.K + k) * P, P);
                        dbc[k] = n == n0 ? t : dbc[k] + t;
                    }
            }
        },
        threads);
    if (plan) plan->reduce(dw_parts, nchunks, dw, threads);
    if (db) conv::reduce_chunks(db_parts, nchunks, s.K, db, threads);
}

}  // namespace striate
