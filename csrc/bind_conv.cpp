// bind_conv.cpp: pybind11 bindings for the conv kernels in conv2d.hpp.
//
// Argument checks (ndim, channels vs groups, bias and dy shapes), then the
// pattern of bind_util.hpp: outputs allocated with the GIL held, the kernel
// called without it.
// Not here: any numeric code, and the user-level argument handling (ints or
// pairs, "same"/"valid") that striate.functional does.
#include <pybind11/stl.h>

#include <optional>

#include "bind_ops.hpp"
#include "bind_util.hpp"
#include "conv2d.hpp"

namespace striate {

namespace {

// Shape checks shared by forward and backward; returns the validated geometry.
Conv2dShape conv_shape(const farray& x, const farray& w, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                       int64_t pad_bottom, int64_t pad_left, int64_t pad_right, int64_t dil_h, int64_t dil_w,
                       int64_t groups) {
    require_ndim(x, 4, "x");
    require_ndim(w, 4, "w");
    if (groups <= 0) throw std::invalid_argument("`groups` must be positive, got " + std::to_string(groups));
    const auto xs = shape_of(x), ws = shape_of(w);
    if (xs[1] != checked_mul(ws[1], groups, "w.shape[1] * groups")) {
        throw std::invalid_argument("channel mismatch: `x` of shape " + shape_str(xs) + " has " +
                                    std::to_string(xs[1]) + " channels, but `w` of shape " + shape_str(ws) +
                                    " with `groups`=" + std::to_string(groups) + " expects " +
                                    std::to_string(ws[1] * groups));
    }
    if (ws[0] % groups != 0) {
        throw std::invalid_argument("`w` of shape " + shape_str(ws) + " has " + std::to_string(ws[0]) +
                                    " output channels, not divisible by `groups`=" + std::to_string(groups));
    }
    return make_conv2d_shape(xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], stride_h, stride_w, pad_top,
                             pad_bottom, pad_left, pad_right, dil_h, dil_w, groups);
}

// (dx|None, dw|None, db|None), each computed only when asked.
py::tuple conv2d_backward_py(const py::object& dy_obj, const py::object& x_obj, const py::object& w_obj,
                             int64_t stride_h,
                             int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                             int64_t pad_right, int64_t dil_h, int64_t dil_w, int64_t groups, bool need_dx,
                             bool need_dw, bool need_db) {
    const farray dy = arg<float>(dy_obj, "dy");
    const farray x = arg<float>(x_obj, "x");
    const farray w = arg<float>(w_obj, "w");
    const Conv2dShape s =
        conv_shape(x, w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, dil_h, dil_w, groups);
    require_ndim(dy, 4, "dy");
    require_shape(dy, {s.N, s.K, s.OH, s.OW}, "dy");
    std::optional<farray> dx, dw, db;
    if (need_dx) dx = new_array<float>({s.N, s.C, s.H, s.W}, "conv2d_backward", "dx");
    if (need_dw) dw = new_array<float>({s.K, s.C / s.groups, s.kh, s.kw}, "conv2d_backward", "dw");
    if (need_db) db = new_array<float>({s.K}, "conv2d_backward", "db");
    call_without_gil("conv2d_backward", conv2d_backward, s, in(dy), in(x), in(w), out(dx), out(dw), out(db), 0);
    auto or_none = [](std::optional<farray>& a) -> py::object { return a ? py::object(*a) : py::none(); };
    return py::make_tuple(or_none(dx), or_none(dw), or_none(db));
}

// {"forward": name, "dx": name, "dw": name}: the algorithms conv2d_forward and conv2d_backward take for this shape.
py::dict conv2d_algorithms_py(const py::object& x_obj, const py::object& w_obj, int64_t stride_h, int64_t stride_w,
                              int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right, int64_t dil_h,
                              int64_t dil_w, int64_t groups) {
    const farray x = arg<float>(x_obj, "x");
    const farray w = arg<float>(w_obj, "w");
    const Conv2dShape s =
        conv_shape(x, w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, dil_h, dil_w, groups);
    const Conv2dAlgorithms a = conv2d_algorithms(s);
    py::dict d;
    d["forward"] = a.forward;
    d["dx"] = a.dx;
    d["dw"] = a.dw;
    return d;
}

}  // namespace

// y = conv2d(x, w) + b; x (N, C, H, W), w (K, C/groups, kh, kw), b (K,) or None -> y (N, K, OH, OW).
farray conv2d_forward_py(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj, int64_t stride_h,
                         int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                         int64_t pad_right, int64_t dil_h, int64_t dil_w, int64_t groups) {
    const farray x = arg<float>(x_obj, "x");
    const farray w = arg<float>(w_obj, "w");
    const std::optional<farray> b = opt_arg<float>(b_obj, "b");
    const Conv2dShape s =
        conv_shape(x, w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, dil_h, dil_w, groups);
    if (b) {
        require_ndim(*b, 1, "b");
        require_shape(*b, {s.K}, "b");
    }
    farray y = new_array<float>({s.N, s.K, s.OH, s.OW}, "conv2d_forward", "y");
    call_without_gil("conv2d_forward", conv2d_forward, s, in(x), in(w), in(b), out(y), 0);
    return y;
}

void bind_conv(py::module_& m) {
    m.def(
        "conv2d_set_winograd", [](const std::string& mode) { conv2d_set_winograd(mode.c_str()); }, py::arg("mode"),
        "Winograd use: 'auto' (where measured faster), 'off' or 'force' (every shape it supports); for tests and "
        "benchmarks.");
    m.def("conv2d_get_winograd", [] { return std::string(conv2d_get_winograd()); });
    m.def(
        "conv2d_winograd_cache",
        [](bool clear) {
            const WinogradCacheStats st = winograd_cache_stats();
            if (clear) winograd_cache_clear();
            py::dict d;
            d["hits"] = st.hits;
            d["misses"] = st.misses;
            d["entries"] = st.entries;
            d["bytes"] = st.bytes;
            return d;
        },
        py::arg("clear") = false,
        "Counters of the Winograd forward's prepared-weight cache (calls with few tiles): hits, misses, entries, "
        "bytes; clear=True then empties it. For tests and benchmarks.");
    m.def("conv2d_forward", &conv2d_forward_py, py::arg("x"), py::arg("w"),
          py::arg("b").none(true), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"),
          py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"), py::arg("dil_h"), py::arg("dil_w"),
          py::arg("groups"),
          "y = conv2d(x, w) + b for float32 NCHW arrays; x (N, C, H, W), w (K, C/groups, kh, kw), b (K,) or None.");
    m.def("conv2d_backward", &conv2d_backward_py, py::arg("dy"), py::arg("x"),
          py::arg("w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"),
          py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"), py::arg("dil_h"), py::arg("dil_w"),
          py::arg("groups"), py::arg("need_dx"), py::arg("need_dw"), py::arg("need_db"),
          "Gradients (dx, dw, db) of conv2d_forward; an entry is None when not asked for.");
    m.def("conv2d_algorithms", &conv2d_algorithms_py, py::arg("x"), py::arg("w"), py::arg("stride_h"),
          py::arg("stride_w"), py::arg("pad_top"), py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"),
          py::arg("dil_h"), py::arg("dil_w"), py::arg("groups"),
          "The algorithms ({'forward': ..., 'dx': ..., 'dw': ...}) conv2d_forward and conv2d_backward take for these arrays' "
          "shapes on the active ISA path.");
}

}  // namespace striate
