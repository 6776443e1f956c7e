// bind_util.hpp: the pattern every bind_*.cpp file follows, written once
// (pybind11 only).
//
// A binding checks its arrays (require_ndim, require_shape), allocates its
// outputs with new_array(), then hands the kernel raw pointers with the GIL
// released:
//
//     farray y = new_array<float>({n, k});
//     call_without_gil(kernel, in(x), in(b), out(y), n, k);
//
// in() and out() take the data pointers (an empty std::optional gives
// nullptr); they run, like every other argument, before call_without_gil
// releases the GIL, because reading an array's buffer needs it. Kernels receive
// C-contiguous arrays whose dtype and layout the Python layer
// (striate.functional) has already checked; these helpers check again so that
// a direct call into striate._core can never crash the process.
//
// Not here: any kernel, any argument rule specific to one op family.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
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

// Read-only data pointer of an array (nullptr for an empty optional).
template <class T>
inline const T* in(const py::array_t<T, py::array::c_style>& a) {
    return a.data();
}
template <class T>
inline const T* in(const std::optional<py::array_t<T, py::array::c_style>>& a) {
    return a ? a->data() : nullptr;
}
// Data pointer of an untyped array whose dtype the caller has checked to be T.
template <class T>
inline const T* in_as(const py::array& a) {
    return static_cast<const T*>(a.data());
}
// Writable data pointer of an array (nullptr for an empty optional); a
// read-only array raises ValueError here, before the kernel runs.
template <class T>
inline T* out(py::array_t<T, py::array::c_style>& a) {
    return a.mutable_data();
}
template <class T>
inline T* out(std::optional<py::array_t<T, py::array::c_style>>& a) {
    return a ? a->mutable_data() : nullptr;
}

// f(args...) with the GIL released, so other Python threads run meanwhile.
// The arguments are evaluated by the caller, with the GIL held; they must be
// plain values and pointers, never Python objects.
template <class F, class... Args>
inline void call_without_gil(F&& f, Args&&... args) {
    py::gil_scoped_release release;
    std::forward<F>(f)(std::forward<Args>(args)...);
}

}  // namespace striate
