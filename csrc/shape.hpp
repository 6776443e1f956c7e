// shape.hpp: output-size arithmetic shared by convolution and pooling, and
// checked int64 products for every element count.
//
// All sizes are int64. A product that would overflow, or a geometry with no
// valid output, throws std::invalid_argument (ValueError in Python) before
// anything is allocated. "padding" always means padding per side.
//
// conv_out_size() and pool_out_size() are the one definition of the output
// size: the kernels' bindings call them, and so does Python (striate._args,
// through _core.conv_out_size / _core.pool_out_size, bound in bindings.cpp).
//
// Not here: any other argument rule (bind_*.cpp, striate._args).
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

inline int64_t checked_add(int64_t a, int64_t b, const char* what = "size") {
    if (a < 0 || b < 0) throw std::invalid_argument(std::string(what) + " must be non-negative");
    if (b > std::numeric_limits<int64_t>::max() - a) {
        throw std::invalid_argument(std::string(what) + " overflows int64: " + std::to_string(a) + " + " +
                                    std::to_string(b));
    }
    return a + b;
}

// dilation * (k - 1) + 1, checked: the extent a (dilated) window covers.
inline int64_t effective_kernel(int64_t k, int64_t dilation, const char* what) {
    if (k < 1 || dilation < 1) throw std::invalid_argument(std::string(what) + " and dilation must be positive");
    return checked_add(checked_mul(dilation, k - 1, what), 1, what);
}

// Convolution output size along one axis (PyTorch's formula, floor division):
//   out = (in + pad_lo + pad_hi - dilation*(k-1) - 1) / stride + 1
// Throws when the (dilated) kernel is larger than the padded input, or when
// the padded extent or the dilated kernel overflows int64.
inline int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad_lo, int64_t pad_hi,
                             int64_t dilation, const char* axis = "") {
    const int64_t eff = effective_kernel(k, dilation, "dilated kernel extent");
    const int64_t padded = checked_add(in, checked_add(pad_lo, pad_hi, "padding"), "padded input extent");
    if (stride < 1) throw std::invalid_argument("stride must be positive, got " + std::to_string(stride));
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
    const int64_t eff = effective_kernel(k, dilation, "dilated window extent");
    const int64_t padded = checked_add(in, checked_mul(2, pad, "padding"), "padded input extent");
    if (stride < 1) throw std::invalid_argument("stride must be positive, got " + std::to_string(stride));
    if (eff > padded) {
        throw std::invalid_argument(std::string("pooling window (effective size ") + std::to_string(eff) +
                                    ") is larger than the padded input (" + std::to_string(padded) +
                                    ") along " + axis);
    }
    // Ceil division without forming padded - eff + stride - 1 (which can overflow).
    const int64_t span = padded - eff;
    int64_t out = span / stride + 1;
    if (ceil_mode && span % stride != 0) ++out;
    if (ceil_mode) {
        // (out - 1) * stride >= in + pad, evaluated without the product:
        // out - 1 >= ceil((in + pad) / stride). in + pad <= padded cannot overflow.
        const int64_t reach = in + pad;
        const int64_t first_outside = reach / stride + (reach % stride != 0 ? 1 : 0);
        if (out - 1 >= first_outside) --out;
    }
    return out;
}

}  // namespace striate
