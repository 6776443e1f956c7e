// bind_norm.cpp: pybind11 bindings for the batch normalisation kernels of
// batchnorm.hpp.
//
// Each function checks its arguments (x 4-D, every per-channel array of shape
// (C,), dy the shape of x, eps positive and finite, a non-empty batch for the
// training forward), then follows the pattern of bind_util.hpp: outputs
// allocated with the GIL held, the kernel called without it. Not here: any
// numeric code, the running statistics or the choice between batch and given
// statistics (python/striate/layers/normalization.py).
#include <cmath>
#include <string>

#include "batchnorm.hpp"
#include "bind_util.hpp"

namespace striate {

namespace {

using Shape = std::vector<int64_t>;
using darray = py::array_t<double, py::array::c_style>;

// The geometry of an (N, C, H, W) array; H*W and the element count checked.
BnGeom nchw_geom(const farray& x, const char* name) {
    require_ndim(x, 4, name);
    const Shape s = shape_of(x);
    BnGeom g;
    g.N = s[0];
    g.C = s[1];
    g.HW = checked_mul(s[2], s[3], "H*W");
    checked_numel({g.N, g.C, g.HW}, "N*C*H*W");
    return g;
}

farray channel_arg(const py::object& obj, const char* name, int64_t C) {
    farray a = arg<float>(obj, name);
    require_shape(a, {C}, name);
    return a;
}

py::tuple batch_norm_forward_train_py(const py::object& x_obj, const py::object& weight_obj,
                                      const py::object& bias_obj, double eps) {
    const farray x = arg<float>(x_obj, "x");
    const BnGeom g = nchw_geom(x, "x");
    const farray w = channel_arg(weight_obj, "weight", g.C);
    const farray b = channel_arg(bias_obj, "bias", g.C);
    if (!std::isfinite(eps) || eps <= 0.0) {
        throw std::invalid_argument("`eps` must be positive and finite, got " + std::to_string(eps));
    }
    if (g.N * g.HW < 1) {
        throw std::invalid_argument("`x` must hold at least one value per channel for batch statistics, got shape " +
                                    shape_str(shape_of(x)));
    }
    farray y = new_array<float>(shape_of(x), "batch_norm_forward_train", "y");
    darray mean = new_array<double>({g.C}, "batch_norm_forward_train", "mean");
    darray var = new_array<double>({g.C}, "batch_norm_forward_train", "var");
    farray invstd = new_array<float>({g.C}, "batch_norm_forward_train", "invstd");
    call_without_gil("batch_norm_forward_train", batch_norm_forward_train, in(x), in(w), in(b), eps, out(y),
                     out(mean), out(var), out(invstd), g);
    return py::make_tuple(y, mean, var, invstd);
}

farray batch_norm_forward_apply_py(const py::object& x_obj, const py::object& mean_obj, const py::object& scale_obj,
                                   const py::object& shift_obj) {
    const farray x = arg<float>(x_obj, "x");
    const BnGeom g = nchw_geom(x, "x");
    const farray mean = channel_arg(mean_obj, "mean", g.C);
    const farray scale = channel_arg(scale_obj, "scale", g.C);
    const farray shift = channel_arg(shift_obj, "shift", g.C);
    farray y = new_array<float>(shape_of(x), "batch_norm_forward_apply", "y");
    call_without_gil("batch_norm_forward_apply", batch_norm_forward_apply, in(x), in(mean), in(scale), in(shift),
                     out(y), g);
    return y;
}

py::tuple batch_norm_backward_py(const py::object& dy_obj, const py::object& x_obj, const py::object& mean_obj,
                                 const py::object& invstd_obj, const py::object& weight_obj, bool batch_stats,
                                 bool need_dx, bool need_dweight, bool need_dbias) {
    const farray dy = arg<float>(dy_obj, "dy");
    const farray x = arg<float>(x_obj, "x");
    const BnGeom g = nchw_geom(x, "x");
    require_shape(dy, shape_of(x), "dy");
    const farray mean = channel_arg(mean_obj, "mean", g.C);
    const farray invstd = channel_arg(invstd_obj, "invstd", g.C);
    const farray w = channel_arg(weight_obj, "weight", g.C);
    std::optional<farray> dx, dw, db;
    if (need_dx) dx = new_array<float>(shape_of(x), "batch_norm_backward", "dx");
    if (need_dweight) dw = new_array<float>({g.C}, "batch_norm_backward", "dweight");
    if (need_dbias) db = new_array<float>({g.C}, "batch_norm_backward", "dbias");
    call_without_gil("batch_norm_backward", batch_norm_backward, in(dy), in(x), in(mean), in(invstd), in(w),
                     batch_stats, out(dx), out(dw), out(db), g);
    auto or_none = [](std::optional<farray>& a) -> py::object { return a ? py::object(*a) : py::none(); };
    return py::make_tuple(or_none(dx), or_none(dw), or_none(db));
}

}  // namespace

void bind_norm(py::module_& m) {
    m.def("batch_norm_forward_train", &batch_norm_forward_train_py, py::arg("x"), py::arg("weight"),
          py::arg("bias"), py::arg("eps"),
          "Batch-norm training forward on (N, C, H, W): returns (y, mean, var, invstd); mean and the biased var "
          "are float64 (C,), invstd float32 (C,).");
    m.def("batch_norm_forward_apply", &batch_norm_forward_apply_py, py::arg("x"), py::arg("mean"),
          py::arg("scale"), py::arg("shift"),
          "y = (x - mean[c]) * scale[c] + shift[c] on (N, C, H, W): batch norm with given statistics.");
    m.def("batch_norm_backward", &batch_norm_backward_py, py::arg("dy"), py::arg("x"), py::arg("mean"),
          py::arg("invstd"), py::arg("weight"), py::arg("batch_stats"), py::arg("need_dx"),
          py::arg("need_dweight"), py::arg("need_dbias"),
          "Gradient of batch norm: returns (dx, dweight, dbias), None for each not asked for. batch_stats: the "
          "forward used the batch's own mean and invstd (dx then includes their gradient).");
}

}  // namespace striate
