// bind_util.hpp: helpers shared by the bind_*.cpp files (pybind11 only).
//
// Kernels receive C-contiguous float32 arrays whose dtype and layout the
// Python layer (striate.functional) has already checked; these helpers check
// again so that a direct call into striate._core can never crash the process.
// Outputs are allocated here, with the GIL held, before it is released.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "shape.hpp"

namespace striate {
namespace py = pybind11;

// A float32 array taken without conversion (bind with .noconvert()).
using farray = py::array_t<float, py::array::c_style>;
using larray = py::array_t<int64_t, py::array::c_style>;

template <class Arr>
inline void require_ndim(const Arr& a, py::ssize_t ndim, const char* name) {
    if (a.ndim() != ndim) {
        throw std::invalid_argument(std::string("`") + name + "` must have " + std::to_string(ndim) +
                                    " dimensions, got " + std::to_string(a.ndim()));
    }
}

template <class Arr>
inline std::vector<int64_t> shape_of(const Arr& a) {
    std::vector<int64_t> s(static_cast<size_t>(a.ndim()));
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s[static_cast<size_t>(i)] = static_cast<int64_t>(a.shape(i));
    return s;
}

inline std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(s[i]);
    }
    if (s.size() == 1) out += ",";
    return out + ")";
}

template <class Arr>
inline void require_shape(const Arr& a, const std::vector<int64_t>& expected, const char* name) {
    auto s = shape_of(a);
    if (s != expected) {
        throw std::invalid_argument(std::string("`") + name + "` must have shape " + shape_str(expected) +
                                    ", got " + shape_str(s));
    }
}

// A new C-contiguous array of the given shape; the element count is checked first.
template <class T>
inline py::array_t<T, py::array::c_style> new_array(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n = checked_mul(n, d, "output size");
    (void)n;
    std::vector<py::ssize_t> s(shape.begin(), shape.end());
    return py::array_t<T, py::array::c_style>(s);
}

}  // namespace striate
