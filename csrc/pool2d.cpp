// pool2d.cpp: the pooling kernels declared in pool2d.hpp, forward beside
// backward, one (n, c) plane per parallel work item.
//
// Semantics (equal to torch.nn.functional):
// - max: the window starting at oh*sh - ph visits rows ih0, ih0+dh, ... that
//   lie inside the input, in row-major order; a value replaces the running
//   maximum when it is greater or NaN, so the first maximum wins ties and a
//   NaN makes the output NaN. Padding never wins. The index is h*W + w.
// - avg: the window is clipped to the padded input first (that size is the
//   count_include_pad divisor), then to the input (the other divisor).
// - lp: avg (no padding, count_include_pad) of x**p, times kh*kw, to the 1/p;
//   gradient dy * y**(1-p) * (kh*kw/count) * x**(p-1), zero where y == 0.
// - adaptive avg: window [floor(i*H/OH), ceil((i+1)*H/OH)), sum / kh / kw.
//
// Not here: argument validation (bind_pool.cpp), threads (parallel.hpp).
#include "pool2d.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "parallel.hpp"

namespace striate {

namespace {

// First row (or column) of a window that lies inside the input: start,
// start + step, ... (start may be negative because of padding).
inline int64_t first_inside(int64_t start, int64_t step) {
    if (start >= 0) return start;
    return start + ((-start + step - 1) / step) * step;
}

// x**e with the exponents that PyTorch evaluates exactly made exact here too.
inline float pow_exact(float x, double e) {
    if (e == 0.0) return 1.f;
    if (e == 1.0) return x;
    if (e == 2.0) return x * x;
    return static_cast<float>(std::pow(static_cast<double>(x), e));
}

// ---------------------------------------------------------------------------
// Max pooling, the generic (reference) plane kernels: any kernel, stride,
// padding, dilation.

// x is (H, W), y and ind are (OH, OW).
void max_plane_forward_generic(const float* x, float* y, int64_t* ind, const PoolGeom& g) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t hs = oh * g.sh - g.ph;
        const int64_t h1 = std::min(hs + (g.kh - 1) * g.dh + 1, g.H);
        const int64_t h0 = first_inside(hs, g.dh);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t ws = ow * g.sw - g.pw;
            const int64_t w1 = std::min(ws + (g.kw - 1) * g.dw + 1, g.W);
            const int64_t w0 = first_inside(ws, g.dw);
            float best = neg_inf;
            int64_t best_i = h0 * g.W + w0;
            for (int64_t ih = h0; ih < h1; ih += g.dh) {
                for (int64_t iw = w0; iw < w1; iw += g.dw) {
                    const int64_t i = ih * g.W + iw;
                    const float v = x[i];
                    if (v > best || std::isnan(v)) {
                        best = v;
                        best_i = i;
                    }
                }
            }
            y[oh * g.OW + ow] = best;
            ind[oh * g.OW + ow] = best_i;
        }
    }
}

[[noreturn]] void throw_bad_index(int64_t plane, int64_t pos, int64_t value, int64_t hw) {
    throw std::invalid_argument("`indices` holds " + std::to_string(value) + " at plane " +
                                std::to_string(plane) + ", position " + std::to_string(pos) +
                                ", outside the valid range [0, H*W = " + std::to_string(hw) + ")");
}

// dy and ind are (OH, OW), dx is (H, W): zero-fill, then scatter in output order.
void max_plane_backward_generic(const float* dy, const int64_t* ind, float* dx, const PoolGeom& g,
                                int64_t plane) {
    const int64_t hw = g.H * g.W;
    const int64_t n = g.OH * g.OW;
    std::memset(dx, 0, static_cast<size_t>(hw) * sizeof(float));
    for (int64_t o = 0; o < n; ++o) {
        const int64_t i = ind[o];
        if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(hw)) throw_bad_index(plane, o, i, hw);
        dx[i] += dy[o];
    }
}

// ---------------------------------------------------------------------------
// Average-style windows (no dilation).

struct AvgWindow {
    int64_t h0, h1, w0, w1;  // clipped to the input
    int64_t padded_count;    // clipped to the padded input only
    int64_t count() const { return (h1 - h0) * (w1 - w0); }
};

inline AvgWindow avg_window(const PoolGeom& g, int64_t oh, int64_t ow) {
    AvgWindow win;
    int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
    int64_t h1 = std::min(h0 + g.kh, g.H + g.ph), w1 = std::min(w0 + g.kw, g.W + g.pw);
    win.padded_count = (h1 - h0) * (w1 - w0);
    win.h0 = std::max<int64_t>(h0, 0);
    win.w0 = std::max<int64_t>(w0, 0);
    win.h1 = std::min(h1, g.H);
    win.w1 = std::min(w1, g.W);
    return win;
}

inline bool window_empty(const AvgWindow& w) { return w.h0 >= w.h1 || w.w0 >= w.w1; }

void avg_plane_forward(const float* x, float* y, const PoolGeom& g, bool count_include_pad) {
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const AvgWindow win = avg_window(g, oh, ow);
            if (window_empty(win)) {
                y[oh * g.OW + ow] = 0.f;
                continue;
            }
            float sum = 0.f;
            for (int64_t ih = win.h0; ih < win.h1; ++ih)
                for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += x[ih * g.W + iw];
            const int64_t div = count_include_pad ? win.padded_count : win.count();
            y[oh * g.OW + ow] = sum / static_cast<float>(div);
        }
    }
}

void avg_plane_backward(const float* dy, float* dx, const PoolGeom& g, bool count_include_pad) {
    std::memset(dx, 0, static_cast<size_t>(g.H * g.W) * sizeof(float));
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const AvgWindow win = avg_window(g, oh, ow);
            if (window_empty(win)) continue;
            const int64_t div = count_include_pad ? win.padded_count : win.count();
            const float d = dy[oh * g.OW + ow] / static_cast<float>(div);
            for (int64_t ih = win.h0; ih < win.h1; ++ih)
                for (int64_t iw = win.w0; iw < win.w1; ++iw) dx[ih * g.W + iw] += d;
        }
    }
}

// ---------------------------------------------------------------------------
// Power-average pooling (padding 0, so the count_include_pad divisor is the
// window clipped to the input, exactly as torch's avg_pool2d of x**p gives).

void lp_plane_forward(const float* x, float* y, double p, const PoolGeom& g) {
    const float area = static_cast<float>(g.kh * g.kw);
    const double inv_p = 1.0 / p;
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const AvgWindow win = avg_window(g, oh, ow);
            float sum = 0.f;
            for (int64_t ih = win.h0; ih < win.h1; ++ih)
                for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += pow_exact(x[ih * g.W + iw], p);
            const float mean = sum / static_cast<float>(win.padded_count);
            const float s = mean * area;
            y[oh * g.OW + ow] = pow_exact(s, inv_p);
        }
    }
}

void lp_plane_backward(const float* dy, const float* x, const float* y, float* dx, double p,
                       const PoolGeom& g) {
    std::memset(dx, 0, static_cast<size_t>(g.H * g.W) * sizeof(float));
    const double area = static_cast<double>(g.kh * g.kw);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const float yv = y[oh * g.OW + ow];
            if (yv == 0.f) continue;
            const AvgWindow win = avg_window(g, oh, ow);
            const double scale = area / static_cast<double>(win.padded_count);
            const float d = static_cast<float>(static_cast<double>(dy[oh * g.OW + ow]) *
                                               static_cast<double>(pow_exact(yv, 1.0 - p)) * scale);
            for (int64_t ih = win.h0; ih < win.h1; ++ih)
                for (int64_t iw = win.w0; iw < win.w1; ++iw)
                    dx[ih * g.W + iw] += d * pow_exact(x[ih * g.W + iw], p - 1.0);
        }
    }
}

// ---------------------------------------------------------------------------
// Adaptive average pooling.

inline int64_t adaptive_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
inline int64_t adaptive_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

void adaptive_plane_forward(const float* x, float* y, const PoolGeom& g) {
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
            float sum = 0.f;
            for (int64_t ih = h0; ih < h1; ++ih)
                for (int64_t iw = w0; iw < w1; ++iw) sum += x[ih * g.W + iw];
            y[oh * g.OW + ow] = sum / static_cast<float>(h1 - h0) / static_cast<float>(w1 - w0);
        }
    }
}

void adaptive_plane_backward(const float* dy, float* dx, const PoolGeom& g) {
    std::memset(dx, 0, static_cast<size_t>(g.H * g.W) * sizeof(float));
    for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
            const float d = dy[oh * g.OW + ow] / static_cast<float>(h1 - h0) / static_cast<float>(w1 - w0);
            for (int64_t ih = h0; ih < h1; ++ih)
                for (int64_t iw = w0; iw < w1; ++iw) dx[ih * g.W + iw] += d;
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points: one plane per work item.

void max_pool2d_forward(const float* x, float* y, int64_t* indices, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    parallel_for(g.planes, [&](int64_t p) {
        max_plane_forward_generic(x + p * in_sz, y + p * out_sz, indices + p * out_sz, g);
    });
}

void max_pool2d_backward(const float* dy, const int64_t* indices, float* dx, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    parallel_for(g.planes, [&](int64_t p) {
        max_plane_backward_generic(dy + p * out_sz, indices + p * out_sz, dx + p * in_sz, g, p);
    });
}

void avg_pool2d_forward(const float* x, float* y, const PoolGeom& g, bool count_include_pad) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    parallel_for(g.planes,
                 [&](int64_t p) { avg_plane_forward(x + p * in_sz, y + p * out_sz, g, count_include_pad); });
}

void avg_pool2d_backward(const float* dy, float* dx, const PoolGeom& g, bool count_include_pad) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    parallel_for(g.planes,
                 [&](int64_t p) { avg_plane_backward(dy + p * out_sz, dx + p * in_sz, g, count_include_pad); });
}

void lp_pool2d_forward(const float* x, float* y, double p, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    parallel_for(g.planes, [&](int64_t q) { lp_plane_forward(x + q * in_sz, y + q * out_sz, p, g); });
}

void lp_pool2d_backward(const float* dy, const float* x, const float* y, float* dx, double p,
                        const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    parallel_for(g.planes, [&](int64_t q) {
        lp_plane_backward(dy + q * out_sz, x + q * in_sz, y + q * out_sz, dx + q * in_sz, p, g);
    });
}

void adaptive_avg_pool2d_forward(const float* x, float* y, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    parallel_for(g.planes, [&](int64_t p) { adaptive_plane_forward(x + p * in_sz, y + p * out_sz, g); });
}

void adaptive_avg_pool2d_backward(const float* dy, float* dx, const PoolGeom& g) {
    const int64_t in_sz = g.H * g.W, out_sz = g.OH * g.OW;
    parallel_for(g.planes, [&](int64_t p) { adaptive_plane_backward(dy + p * out_sz, dx + p * in_sz, g); });
}

}  // namespace striate
