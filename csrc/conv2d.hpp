// conv2d.hpp: 2-D convolution kernels (float32, NCHW), forward beside backward.
//
// Geometry follows torch.nn.functional.conv2d: per-side padding (top, bottom,
// left, right may differ), stride, dilation, groups; weight is
// (K, C/groups, kh, kw). Results are bit-identical for any thread count:
// threads split independent outputs only (images, and within an image channel
// blocks or kernel taps), each output is summed in one fixed order, and the
// batch reduction for dw/db runs over fixed-size chunks of images whose
// partials are summed in index order. The algorithm (conv2d.cpp) depends on
// the shape and the ISA path (cpu.hpp).
//
// Not here: argument checking against Python objects (bind_conv.cpp), float64,
// other layouts (NHWC), transposed convolution.
#pragma once

#include <cstdint>

namespace striate {

// Every size of one convolution call. Build it with make_conv2d_shape(), which
// validates the geometry and computes OH, OW with checked int64 arithmetic.
struct Conv2dShape {
    int64_t N, C, H, W;      // input x is (N, C, H, W)
    int64_t K, kh, kw;       // weight w is (K, C / groups, kh, kw)
    int64_t sh, sw;          // stride
    int64_t pt, pb, pl, pr;  // padding per side: top, bottom, left, right
    int64_t dh, dw;          // dilation
    int64_t groups;
    int64_t OH, OW;  // output y is (N, K, OH, OW)
};

// Throws std::invalid_argument (naming the argument) for non-positive
// stride/dilation/groups/kernel, negative padding or sizes, C or K not
// divisible by groups, a kernel larger than the padded input, or element
// counts that overflow int64.
Conv2dShape make_conv2d_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t kh, int64_t kw,
                              int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                              int64_t dh, int64_t dw, int64_t groups);

// The names of the algorithms conv2d_forward ("winograd", "direct", "strided",
// "gemm"), the dx of conv2d_backward (the same or "scatter") and its dw
// ("winograd", "direct", "kvec", "flat" or "gemm") take for s on the active
// ISA path (for tests and benchmarks).
struct Conv2dAlgorithms {
    const char* forward;
    const char* dx;
    const char* dw;
};
Conv2dAlgorithms conv2d_algorithms(const Conv2dShape& s);

// y = conv(x, w) + b.
// x is (N, C, H, W), w is (K, C/groups, kh, kw), b is (K,) or nullptr, y is (N, K, OH, OW).
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    int threads = 0);

// Gradients of conv2d_forward; each output is computed only when its pointer is non-null.
// dy is (N, K, OH, OW), x is (N, C, H, W), w is (K, C/groups, kh, kw);
// dx is (N, C, H, W), dw is (K, C/groups, kh, kw), db is (K,).
void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w, float* dx,
                     float* dw, float* db, int threads = 0);

// Winograd use, for tests and benchmarks: "auto" (the default: where it was
// measured faster), "off" (never) or "force" (every shape it supports:
// 3x3, stride 1, dilation 1, groups 1; for dx also padding <= 2). Process-wide.
void conv2d_set_winograd(const char* mode);
const char* conv2d_get_winograd();

// The Winograd forward's cache of prepared (transformed, packed) weights for
// calls with few tiles (conv_winograd.cpp): counters since the last clear, the
// entries kept and their bytes. For tests and benchmarks.
struct WinogradCacheStats {
    int64_t hits, misses, entries, bytes;
};
WinogradCacheStats winograd_cache_stats();
void winograd_cache_clear();

}  // namespace striate
