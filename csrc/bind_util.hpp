// bind_util.hpp: the pattern every bind_*.cpp file follows, written once
// (pybind11 only).
//
// A binding takes its arrays as plain Python objects and checks them itself
// with arg() (ndarray, exact dtype, C-contiguous, aligned: each refusal a
// TypeError naming the argument), checks shapes (require_ndim,
// require_shape), allocates its outputs with new_array(), then hands the
// kernel raw pointers with the GIL released:
//
//     const farray x = arg<float>(x_obj, "x");
//     farray y = new_array<float>({n, k}, "linear", "y");
//     call_without_gil("linear", kernel, in(x), out(y), n, k);
//
// Misaligned buffers (a float32 array starting at an odd byte, as
// np.frombuffer(b, np.float32, offset=1) makes) are refused rather than read:
// every kernel, vector or scalar, dereferences float pointers, and a misaligned
// one is undefined behaviour in C++. Non-contiguous and negative-stride arrays
// are refused too; the Python layer (striate.functional) makes the copies.
//
// Sizes: new_array() checks the element count and the byte count in int64
// (ValueError naming the op before anything is allocated) and turns numpy's
// MemoryError into an OutOfMemory naming the op, the array and its bytes;
// call_without_gil() prefixes the op's name to an OutOfMemory from a workspace
// (memory.hpp) and names the op on any other std::bad_alloc.
//
// in() and out() take the data pointers (an empty std::optional gives
// nullptr); they run, like every other argument, before call_without_gil releases
// the GIL, because reading an array's buffer needs it.
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

#include "memory.hpp"
#include "shape.hpp"

namespace striate {
namespace py = pybind11;

// Arrays as the kernels receive them: C-contiguous, of exactly this dtype.
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

inline std::string type_name(const py::handle& obj) {
    return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

// `obj` as a C-contiguous, aligned array of T, without a copy; TypeError
// naming `name` otherwise. Size-0 arrays skip the alignment check (no element
// is ever read).
template <class T>
inline py::array_t<T, py::array::c_style> arg(const py::handle& obj, const char* name) {
    // The messages are built on failure only: a binding call checks several
    // arguments, and a batch-of-one forward is a few microseconds.
    const auto n = [name] { return std::string("`") + name + "`"; };
    if (!py::isinstance<py::array>(obj)) throw py::type_error(n() + " must be a numpy array, got " + type_name(obj));
    auto a = py::reinterpret_borrow<py::array>(obj);
    const py::dtype want = py::dtype::of<T>();
    if (!py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), want.ptr())) {
        throw py::type_error(n() + " must be a " + std::string(py::str(want)) + " array, got dtype " +
                             std::string(py::str(a.dtype())));
    }
    if (!(a.flags() & py::array::c_style)) {
        std::vector<int64_t> strides(static_cast<size_t>(a.ndim()));
        for (py::ssize_t i = 0; i < a.ndim(); ++i) strides[static_cast<size_t>(i)] = a.strides(i);
        throw py::type_error(n() + " must be C-contiguous, got strides " + shape_str(strides) + " for shape " +
                             shape_str(shape_of(a)) + "; pass np.ascontiguousarray(" + name + ")");
    }
    const auto addr = reinterpret_cast<uintptr_t>(a.data());
    if (a.size() > 0 && addr % alignof(T) != 0) {
        throw py::type_error(n() + " must be aligned to " + std::to_string(alignof(T)) +
                             " bytes, but its data starts " + std::to_string(addr % alignof(T)) +
                             " bytes past an aligned address; pass a copy (" + name + ".copy())");
    }
    return py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(a);
}

// arg() for an argument that may be None (an empty optional).
template <class T>
inline std::optional<py::array_t<T, py::array::c_style>> opt_arg(const py::handle& obj, const char* name) {
    if (obj.is_none()) return std::nullopt;
    return arg<T>(obj, name);
}

// arg() for an array the kernel writes into: it must also be writable (ValueError).
template <class T>
inline py::array_t<T, py::array::c_style> out_arg(const py::handle& obj, const char* name) {
    auto a = arg<T>(obj, name);
    if (!a.writeable()) {
        throw std::invalid_argument(std::string("`") + name + "` must be writable, got a read-only array");
    }
    return a;
}

// A new C-contiguous array of the given shape, output `name` of `op`. Its
// element count and byte count are checked first (ValueError naming the op);
// a failed allocation is an OutOfMemory naming the op, the array and the bytes.
template <class T>
inline py::array_t<T, py::array::c_style> new_array(const std::vector<int64_t>& shape, const char* op,
                                                    const char* name) {
    const auto prefix = [op] { return std::string("`") + op + "`: "; };
    const auto desc = [&] { return std::string("output `") + name + "` of shape " + shape_str(shape); };
    int64_t n = 1, bytes = 0;
    bool ok = true;  // the counts in int64, checked without building messages; on failure, again with them
    for (int64_t d : shape) ok = ok && d >= 0 && !__builtin_mul_overflow(n, d, &n);
    ok = ok && !__builtin_mul_overflow(n, static_cast<int64_t>(sizeof(T)), &bytes);
    if (!ok) {
        n = 1;
        for (int64_t d : shape) n = checked_mul(n, d, (prefix() + desc() + ": its element count").c_str());
        bytes = checked_bytes(n, sizeof(T), (prefix() + desc()).c_str());
    }
    std::vector<py::ssize_t> s(shape.begin(), shape.end());
    try {
        return py::array_t<T, py::array::c_style>(s);
    } catch (py::error_already_set& e) {
        if (!e.matches(PyExc_MemoryError)) throw;
        throw OutOfMemory(prefix() + out_of_memory_message(desc(), bytes));
    }
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

// f(args...) with the GIL released, so other Python threads run meanwhile; an
// allocation failure inside is reported as an OutOfMemory naming `op`. The
// arguments are evaluated by the caller, with the GIL held; they must be plain
// values and pointers, never Python objects.
template <class F, class... Args>
inline void call_without_gil(const char* op, F&& f, Args&&... args) {
    try {
        py::gil_scoped_release release;
        std::forward<F>(f)(std::forward<Args>(args)...);
    } catch (const OutOfMemory& e) {
        throw OutOfMemory(std::string("`") + op + "`: " + e.what());
    } catch (const std::bad_alloc&) {
        throw OutOfMemory(std::string("`") + op + "`: out of memory: a workspace allocation failed");
    }
}

}  // namespace striate
