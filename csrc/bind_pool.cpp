// bind_pool.cpp: pybind11 bindings for the pooling kernels of pool2d.hpp.
//
// Each function checks its arguments (ndim, positive kernel/stride/dilation,
// PyTorch's pad <= kernel/2 rule, window against padded input, dy and indices
// shapes), then follows the pattern of bind_util.hpp: outputs allocated with
// the GIL held, the kernel called without it. The vector code the kernels
// pick follows st.set_isa (cpu.hpp). Not here: any numeric code, any
// user-level argument normalisation (ints or pairs, defaults), which
// striate.functional does.
#include <cmath>
#include <string>

#include "bind_ops.hpp"
#include "bind_util.hpp"
#include "pool2d.hpp"

namespace striate {

namespace {

using Shape = std::vector<int64_t>;

void require_positive(int64_t v, const char* name) {
    if (v <= 0) throw std::invalid_argument(std::string("`") + name + "` must be positive, got " + std::to_string(v));
}

// PyTorch's rule: padding is non-negative and at most half the kernel.
void require_pad(int64_t pad, int64_t k, const char* pad_name, const char* k_name) {
    if (pad < 0 || pad > k / 2) {
        throw std::invalid_argument(std::string("`") + pad_name + "` must be between 0 and " + k_name +
                                    "/2 = " + std::to_string(k / 2) + ", got " + std::to_string(pad));
    }
}

// An (N, C, H, W) input with non-empty planes (N may be 0).
template <class Arr>
Shape require_nchw(const Arr& a, const char* name) {
    require_ndim(a, 4, name);
    Shape s = shape_of(a);
    if (s[1] == 0 || s[2] == 0 || s[3] == 0) {
        throw std::invalid_argument(std::string("`") + name + "` must have non-zero C, H and W, got shape " +
                                    shape_str(s));
    }
    return s;
}

// Planes of (H, W) pooled to the (OH, OW) of an (N, C, OH, OW) shape, for the
// kernels that take no window arguments (max backward, adaptive).
PoolGeom planes_geom(const Shape& out, int64_t H, int64_t W) {
    require_positive(H, "H");
    require_positive(W, "W");
    checked_mul(H, W, "H*W");
    PoolGeom g{};
    g.planes = checked_mul(out[0], out[1], "N*C");
    g.H = H;
    g.W = W;
    g.OH = out[2];
    g.OW = out[3];
    return g;
}

// Checks the window arguments and fills OH/OW (pad 0 and dilation 1 for avg/lp).
PoolGeom make_geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                   int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool ceil_mode) {
    require_positive(kh, "kh");
    require_positive(kw, "kw");
    require_positive(sh, "sh");
    require_positive(sw, "sw");
    require_positive(dh, "dh");
    require_positive(dw, "dw");
    require_pad(ph, kh, "ph", "kh");
    require_pad(pw, kw, "pw", "kw");
    PoolGeom g;
    g.planes = checked_mul(N, C, "N*C");
    g.H = H;
    g.W = W;
    g.kh = kh;
    g.kw = kw;
    g.sh = sh;
    g.sw = sw;
    g.ph = ph;
    g.pw = pw;
    g.dh = dh;
    g.dw = dw;
    g.OH = pool_out_size(H, kh, sh, ph, dh, ceil_mode, "the height (kh, sh, ph, dh)");
    g.OW = pool_out_size(W, kw, sw, pw, dw, ceil_mode, "the width (kw, sw, pw, dw)");
    return g;
}

py::tuple max_pool2d_forward_py(const py::object& x_obj, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                int64_t pw, int64_t dh, int64_t dw, bool ceil_mode) {
    const farray x = arg<float>(x_obj, "x");
    const Shape s = require_nchw(x, "x");
    const PoolGeom g = make_geom(s[0], s[1], s[2], s[3], kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode);
    const Shape ys = {s[0], s[1], g.OH, g.OW};
    farray y = new_array<float>(ys, "max_pool2d_forward", "y");
    larray ind = new_array<int64_t>(ys, "max_pool2d_forward", "indices");
    call_without_gil("max_pool2d_forward", max_pool2d_forward, in(x), out(y), out(ind), g);
    return py::make_tuple(y, ind);
}

farray max_pool2d_backward_py(const py::object& dy_obj, const py::object& indices_obj, int64_t H, int64_t W) {
    const farray dy = arg<float>(dy_obj, "dy");
    const larray indices = arg<int64_t>(indices_obj, "indices");
    require_ndim(dy, 4, "dy");
    const Shape s = shape_of(dy);
    require_shape(indices, s, "indices");
    const PoolGeom g = planes_geom(s, H, W);
    farray dx = new_array<float>({s[0], s[1], H, W}, "max_pool2d_backward", "dx");
    call_without_gil("max_pool2d_backward", max_pool2d_backward, in(dy), in(indices), out(dx), g);
    return dx;
}

farray avg_pool2d_forward_py(const py::object& x_obj, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                             int64_t pw, bool ceil_mode, bool count_include_pad) {
    const farray x = arg<float>(x_obj, "x");
    const Shape s = require_nchw(x, "x");
    const PoolGeom g = make_geom(s[0], s[1], s[2], s[3], kh, kw, sh, sw, ph, pw, 1, 1, ceil_mode);
    farray y = new_array<float>({s[0], s[1], g.OH, g.OW}, "avg_pool2d_forward", "y");
    call_without_gil("avg_pool2d_forward", avg_pool2d_forward, in(x), out(y), g, count_include_pad);
    return y;
}

farray avg_pool2d_backward_py(const py::object& dy_obj, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh,
                              int64_t sw, int64_t ph, int64_t pw, bool ceil_mode, bool count_include_pad) {
    const farray dy = arg<float>(dy_obj, "dy");
    require_ndim(dy, 4, "dy");
    require_positive(H, "H");
    require_positive(W, "W");
    const Shape s = shape_of(dy);
    const PoolGeom g = make_geom(s[0], s[1], H, W, kh, kw, sh, sw, ph, pw, 1, 1, ceil_mode);
    require_shape(dy, {s[0], s[1], g.OH, g.OW}, "dy");
    farray dx = new_array<float>({s[0], s[1], H, W}, "avg_pool2d_backward", "dx");
    call_without_gil("avg_pool2d_backward", avg_pool2d_backward, in(dy), out(dx), g, count_include_pad);
    return dx;
}

void require_p(double p) {
    if (!std::isfinite(p) || p == 0.0) {
        throw std::invalid_argument("`p` must be finite and non-zero, got " + std::to_string(p));
    }
}

farray lp_pool2d_forward_py(const py::object& x_obj, double p, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                            bool ceil_mode) {
    const farray x = arg<float>(x_obj, "x");
    require_p(p);
    const Shape s = require_nchw(x, "x");
    const PoolGeom g = make_geom(s[0], s[1], s[2], s[3], kh, kw, sh, sw, 0, 0, 1, 1, ceil_mode);
    farray y = new_array<float>({s[0], s[1], g.OH, g.OW}, "lp_pool2d_forward", "y");
    call_without_gil("lp_pool2d_forward", lp_pool2d_forward, in(x), out(y), p, g);
    return y;
}

farray lp_pool2d_backward_py(const py::object& dy_obj, const py::object& x_obj, const py::object& y_obj, double p,
                             int64_t kh, int64_t kw, int64_t sh, int64_t sw, bool ceil_mode) {
    const farray dy = arg<float>(dy_obj, "dy");
    const farray x = arg<float>(x_obj, "x");
    const farray y = arg<float>(y_obj, "y");
    require_p(p);
    const Shape s = require_nchw(x, "x");
    require_ndim(dy, 4, "dy");
    require_ndim(y, 4, "y");
    const PoolGeom g = make_geom(s[0], s[1], s[2], s[3], kh, kw, sh, sw, 0, 0, 1, 1, ceil_mode);
    const Shape ys = {s[0], s[1], g.OH, g.OW};
    require_shape(y, ys, "y");
    require_shape(dy, ys, "dy");
    farray dx = new_array<float>(s, "lp_pool2d_backward", "dx");
    call_without_gil("lp_pool2d_backward", lp_pool2d_backward, in(dy), in(x), in(y), out(dx), p, g);
    return dx;
}

void require_out_size(int64_t v, const char* name) {
    if (v < 0) throw std::invalid_argument(std::string("`") + name + "` must be non-negative, got " + std::to_string(v));
}

farray adaptive_avg_pool2d_forward_py(const py::object& x_obj, int64_t oh, int64_t ow) {
    const farray x = arg<float>(x_obj, "x");
    const Shape s = require_nchw(x, "x");
    require_out_size(oh, "oh");
    require_out_size(ow, "ow");
    const PoolGeom g = planes_geom({s[0], s[1], oh, ow}, s[2], s[3]);
    farray y = new_array<float>({s[0], s[1], oh, ow}, "adaptive_avg_pool2d_forward", "y");
    call_without_gil("adaptive_avg_pool2d_forward", adaptive_avg_pool2d_forward, in(x), out(y), g);
    return y;
}

farray adaptive_avg_pool2d_backward_py(const py::object& dy_obj, int64_t H, int64_t W) {
    const farray dy = arg<float>(dy_obj, "dy");
    require_ndim(dy, 4, "dy");
    const Shape s = shape_of(dy);
    const PoolGeom g = planes_geom(s, H, W);
    farray dx = new_array<float>({s[0], s[1], H, W}, "adaptive_avg_pool2d_backward", "dx");
    call_without_gil("adaptive_avg_pool2d_backward", adaptive_avg_pool2d_backward, in(dy), out(dx), g);
    return dx;
}

}  // namespace

farray max_pool2d_values_py(const py::object& x_obj, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                            int64_t pw, int64_t dh, int64_t dw, bool ceil_mode) {
    const farray x = arg<float>(x_obj, "x");
    const Shape s = require_nchw(x, "x");
    const PoolGeom g = make_geom(s[0], s[1], s[2], s[3], kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode);
    farray y = new_array<float>({s[0], s[1], g.OH, g.OW}, "max_pool2d_forward", "y");
    thread_local std::vector<int64_t> indices;  // written by the kernel, never read
    indices.resize(static_cast<size_t>(checked_mul(g.planes, g.OH * g.OW, "the pooling indices")));
    call_without_gil("max_pool2d_forward", max_pool2d_forward, in(x), out(y), indices.data(), g);
    return y;
}

void bind_pool(py::module_& m) {
    m.def("max_pool2d_forward", &max_pool2d_forward_py, py::arg("x"), py::arg("kh"), py::arg("kw"),
          py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
          py::arg("ceil_mode"), "Max pooling: returns (y, indices), indices int64 flat positions h*W + w.");
    m.def("max_pool2d_backward", &max_pool2d_backward_py, py::arg("dy"),
          py::arg("indices"), py::arg("H"), py::arg("W"),
          "Gradient of max pooling: scatters dy through indices into a fresh (N, C, H, W) dx.");
    m.def("avg_pool2d_forward", &avg_pool2d_forward_py, py::arg("x"), py::arg("kh"), py::arg("kw"),
          py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("ceil_mode"),
          py::arg("count_include_pad"), "Average pooling.");
    m.def("avg_pool2d_backward", &avg_pool2d_backward_py, py::arg("dy"), py::arg("H"), py::arg("W"),
          py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
          py::arg("ceil_mode"), py::arg("count_include_pad"), "Gradient of average pooling.");
    m.def("lp_pool2d_forward", &lp_pool2d_forward_py, py::arg("x"), py::arg("p"), py::arg("kh"),
          py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ceil_mode"),
          "Power-average pooling (torch.nn.functional.lp_pool2d).");
    m.def("lp_pool2d_backward", &lp_pool2d_backward_py, py::arg("dy"), py::arg("x"),
          py::arg("y"), py::arg("p"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
          py::arg("ceil_mode"), "Gradient of power-average pooling.");
    m.def("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward_py, py::arg("x"), py::arg("oh"),
          py::arg("ow"), "Adaptive average pooling to (oh, ow).");
    m.def("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_py, py::arg("dy"),
          py::arg("H"), py::arg("W"), "Gradient of adaptive average pooling.");
}

}  // namespace striate
