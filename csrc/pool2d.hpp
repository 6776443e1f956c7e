// pool2d.hpp: 2-D pooling kernels on NCHW float32 planes: max (with int64
// argmax indices), average, power-average (lp) and adaptive average, each
// forward next to its backward.
//
// Semantics are PyTorch's (torch.nn.functional) and are spelled out in
// pool2d.cpp. Work is split over (n, c) planes only; inside a plane every
// accumulation runs in one fixed order, so results are bit-identical for any
// thread count. The vector code follows active_isa() (cpu.hpp) and gives the
// same bits on every path.
//
// Not here: argument checking, shape arithmetic and allocation (the caller,
// bind_pool.cpp, does those with shape.hpp before calling in), any Python.
#pragma once

#include <cstdint>

namespace striate {

// Geometry of one pooling call. `planes` is N*C; every array is a stack of
// `planes` planes, x/dx of (H, W) and y/dy/indices of (OH, OW). Padding is per
// side; OH/OW come from pool_out_size() (shape.hpp).
struct PoolGeom {
    int64_t planes, H, W, OH, OW;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// x is (planes, H, W); y and indices are (planes, OH, OW). indices hold the
// flat position h*W + w of each window's maximum inside its own plane.
void max_pool2d_forward(const float* x, float* y, int64_t* indices, const PoolGeom& g);
// dy and indices are (planes, OH, OW); dx is (planes, H, W), overwritten.
// An index outside [0, H*W) throws std::invalid_argument; nothing is written
// outside dx.
void max_pool2d_backward(const float* dy, const int64_t* indices, float* dx, const PoolGeom& g);

// x is (planes, H, W), y is (planes, OH, OW). g.dh == g.dw == 1.
void avg_pool2d_forward(const float* x, float* y, const PoolGeom& g, bool count_include_pad);
// dy is (planes, OH, OW), dx is (planes, H, W), overwritten.
void avg_pool2d_backward(const float* dy, float* dx, const PoolGeom& g, bool count_include_pad);

// Power-average pooling, torch.nn.functional.lp_pool2d. No padding, no
// dilation (g.ph == g.pw == 0, g.dh == g.dw == 1). p is finite and non-zero.
void lp_pool2d_forward(const float* x, float* y, double p, const PoolGeom& g);
// dy and y are (planes, OH, OW), x and dx are (planes, H, W); dx overwritten.
void lp_pool2d_backward(const float* dy, const float* x, const float* y, float* dx, double p,
                        const PoolGeom& g);

// Adaptive average pooling; only planes, H, W, OH, OW of g are used.
void adaptive_avg_pool2d_forward(const float* x, float* y, const PoolGeom& g);
void adaptive_avg_pool2d_backward(const float* dy, float* dx, const PoolGeom& g);

}  // namespace striate
