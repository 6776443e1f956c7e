// bind_elementwise.cpp: pybind11 bindings for the element-wise kernels of
// elementwise.hpp.
//
// Every function writes into an `out` array the caller passes (so the layers
// decide between a fresh array and one they may overwrite): out must be a
// writable float32 C-contiguous array of the operands' shape, and may be one
// of them. Then the pattern of bind_util.hpp: the kernel runs without the GIL.
// Not here: any numeric code, the choice of when to write in place
// (layers/activation.py, layers/residual.py).
#include "bind_util.hpp"
#include "elementwise.hpp"

namespace striate {

namespace {

// A flat count for arrays that must all have `ref`'s shape.
int64_t same_shape(const farray& ref, const farray& other, const char* name) {
    require_shape(other, shape_of(ref), name);
    return static_cast<int64_t>(ref.size());
}

void relu_py(const py::object& x_obj, const py::object& out_obj) {
    const farray x = arg<float>(x_obj, "x");
    farray o = out_arg<float>(out_obj, "out");
    const int64_t n = same_shape(x, o, "out");
    call_without_gil("relu", relu_forward, in(x), out(o), n);
}

void relu_backward_py(const py::object& dy_obj, const py::object& y_obj, const py::object& out_obj) {
    const farray dy = arg<float>(dy_obj, "dy");
    const farray y = arg<float>(y_obj, "y");
    farray o = out_arg<float>(out_obj, "out");
    same_shape(dy, y, "y");
    const int64_t n = same_shape(dy, o, "out");
    call_without_gil("relu_backward", relu_backward, in(dy), in(y), out(o), n);
}

void add_py(const py::object& a_obj, const py::object& b_obj, const py::object& out_obj, bool relu) {
    const farray a = arg<float>(a_obj, "a");
    const farray b = arg<float>(b_obj, "b");
    farray o = out_arg<float>(out_obj, "out");
    same_shape(a, b, "b");
    const int64_t n = same_shape(a, o, "out");
    call_without_gil("add", add_forward, in(a), in(b), out(o), n, relu);
}

void softmax_rows_py(const py::object& z_obj) {
    farray z = out_arg<float>(z_obj, "z");
    require_ndim(z, 2, "z");
    if (z.shape(1) == 0) throw std::invalid_argument("`z` must have at least one column");
    call_without_gil("softmax_rows", softmax_rows, out(z), static_cast<int64_t>(z.shape(0)),
                     static_cast<int64_t>(z.shape(1)));
}

}  // namespace

void bind_elementwise(py::module_& m) {
    m.def("relu", &relu_py, py::arg("x"), py::arg("out"),
          "out = np.maximum(x, 0) element-wise (NaN passes, -0.0 becomes 0.0); out may be x.");
    m.def("relu_backward", &relu_backward_py, py::arg("dy"), py::arg("y"), py::arg("out"),
          "out = dy * (y > 0) element-wise; out may be dy.");
    m.def("add", &add_py, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("relu") = false,
          "out = a + b element-wise, then np.maximum(., 0) when relu; out may be a or b.");
    m.def("softmax_rows", &softmax_rows_py, py::arg("z"),
          "Each row of the 2-D z replaced by exp(z - max) / sum, in place.");
}

}  // namespace striate
