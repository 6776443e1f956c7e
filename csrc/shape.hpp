// shape.hpp: output-size arithmetic shared by convolution and pooling, and
// checked int64 products for every element count.
//
// All sizes are int64. A product that would overflow, or a geometry with no
// valid output, throws std::invalid_argument (ValueError in Python) before
// anything is allocated. "padding" always means padding per side.
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace striate {

inline int64_t checked_mul(int64_t a, int64_t b, const char* what = "size") {
    if (a < 0 || b < 0) throw std::invalid_argument(std::string(what) + " must be non-negative");
    if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) {
        throw std::invalid_argument(std::string(what) + " overflows int64: " + std::to_string(a) +
                                    " * " + std::to_string(b));
    }
    return a * b;
}

inline int64_t checked_numel(std::initializer_list<int64_t> dims, const char* what = "tensor size") {
    int64_t n = 1;
    for (int64_t d : dims) n = checked_mul(n, d, what);
    return n;
}

// Convolution output size along one axis (PyTorch's formula, floor division):
//   out = (in + pad_lo + pad_hi - dilation*(k-1) - 1) / stride + 1
// Throws when the (dilated) kernel is larger than the padded input.
inline int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad_lo, int64_t pad_hi,
                             int64_t dilation, const char* axis = "") {
    const int64_t eff = dilation * (k - 1) + 1;
    const int64_t padded = in + pad_lo + pad_hi;
    if (eff > padded) {
        throw std::invalid_argument(std::string("kernel (effective size ") + std::to_string(eff) +
                                    ") is larger than the padded input (" + std::to_string(padded) +
                                    ") along " + axis);
    }
    return (padded - eff) / stride + 1;
}

// Pooling output size along one axis, PyTorch's rule including ceil_mode:
// with ceil_mode the last window must start inside the input or the left padding.
inline int64_t pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation,
                             bool ceil_mode, const char* axis = "") {
    const int64_t eff = dilation * (k - 1) + 1;
    const int64_t padded = in + 2 * pad;
    if (eff > padded) {
        throw std::invalid_argument(std::string("pooling window (effective size ") + std::to_string(eff) +
                                    ") is larger than the padded input (" + std::to_string(padded) +
                                    ") along " + axis);
    }
    int64_t out = (padded - eff + (ceil_mode ? stride - 1 : 0)) / stride + 1;
    if (ceil_mode && (out - 1) * stride >= in + pad) --out;
    return out;
}

}  // namespace striate
