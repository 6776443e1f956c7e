// bind_augment.cpp: pybind11 bindings for the augmentation kernels: argument
// checks, then the pattern of bind_util.hpp (outputs allocated with the GIL
// held, the kernel called without it); nothing else.
//
// striate/augment.py validates and converts first; these checks repeat the ones
// that protect memory so that a direct call into striate._core cannot crash.
#include <climits>
#include <cmath>

#include "augment.hpp"
#include "bind_util.hpp"

namespace striate {

namespace {

using darray = py::array_t<double, py::array::c_style>;
using u8array = py::array_t<uint8_t, py::array::c_style>;

struct Dims {
    int64_t n, c, h, w;
};

Dims batch_dims(const farray& x) {
    require_ndim(x, 4, "x");
    auto s = shape_of(x);
    return {s[0], s[1], s[2], s[3]};
}

template <class Arr>
void require_len(const Arr& a, int64_t n, const char* name) {
    require_shape(a, {n}, name);
}

void require_finite(const darray& a, const char* name) {
    const double* p = a.data();
    for (py::ssize_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(p[i])) {
            throw std::invalid_argument(std::string("`") + name + "` must be finite, got " + std::to_string(p[i]) +
                                        " at index " + std::to_string(i));
        }
    }
}

farray affine(const py::object& x_obj, const py::object& angle_obj, const py::object& tx_obj,
              const py::object& ty_obj, const py::object& scale_obj, float fill) {
    const farray x = arg<float>(x_obj, "x");
    const darray angle = arg<double>(angle_obj, "angle");
    const darray tx = arg<double>(tx_obj, "tx");
    const darray ty = arg<double>(ty_obj, "ty");
    const darray scale = arg<double>(scale_obj, "scale");
    const Dims d = batch_dims(x);
    require_len(angle, d.n, "angle");
    require_len(tx, d.n, "tx");
    require_len(ty, d.n, "ty");
    require_len(scale, d.n, "scale");
    require_finite(angle, "angle");
    require_finite(tx, "tx");
    require_finite(ty, "ty");
    require_finite(scale, "scale");
    for (py::ssize_t i = 0; i < scale.size(); ++i) {
        if (!(scale.data()[i] > 0.0)) {
            throw std::invalid_argument("`scale` must be positive, got " + std::to_string(scale.data()[i]));
        }
    }
    if (!std::isfinite(fill)) throw std::invalid_argument("`fill` must be finite");
    // The kernel indexes a bordered plane of (H + 5) x (W + 5) pixels with int32.
    if (checked_mul(d.h + 5, d.w + 5, "image size") > INT32_MAX) {
        throw std::invalid_argument("`x` images are too large for affine: " + std::to_string(d.h) + "x" +
                                    std::to_string(d.w));
    }
    farray y = new_array<float>({d.n, d.c, d.h, d.w}, "augment_affine", "y");
    call_without_gil("augment_affine", affine_forward, in(x), out(y), d.n, d.c, d.h, d.w, in(angle), in(tx), in(ty),
                     in(scale), fill, 0);
    return y;
}

farray hflip(const py::object& x_obj, const py::object& flags_obj) {
    const farray x = arg<float>(x_obj, "x");
    const Dims d = batch_dims(x);
    // A flags array of another dtype has always been a ValueError here.
    if (py::isinstance<py::array>(flags_obj) &&
        !py::reinterpret_borrow<py::array>(flags_obj).dtype().is(py::dtype::of<uint8_t>())) {
        throw std::invalid_argument("`flags` must be a uint8 array, got dtype " +
                                    std::string(py::str(py::reinterpret_borrow<py::array>(flags_obj).dtype())));
    }
    const std::optional<u8array> flags = opt_arg<uint8_t>(flags_obj, "flags");
    if (flags) require_len(*flags, d.n, "flags");
    farray y = new_array<float>({d.n, d.c, d.h, d.w}, "augment_hflip", "y");
    call_without_gil("augment_hflip", hflip_forward, in(x), out(y), d.n, d.c, d.h, d.w, in(flags), 0);
    return y;
}

farray crop(const py::object& x_obj, const py::object& top_obj, const py::object& left_obj, int64_t out_h,
            int64_t out_w, int64_t padding, float fill) {
    const farray x = arg<float>(x_obj, "x");
    const larray top = arg<int64_t>(top_obj, "top");
    const larray left = arg<int64_t>(left_obj, "left");
    const Dims d = batch_dims(x);
    require_len(top, d.n, "top");
    require_len(left, d.n, "left");
    if (padding < 0 || padding > (int64_t{1} << 30)) {
        throw std::invalid_argument("`padding` must be in [0, 2**30], got " + std::to_string(padding));
    }
    if (out_h < 1 || out_w < 1) {
        throw std::invalid_argument("`size` must be positive, got (" + std::to_string(out_h) + ", " +
                                    std::to_string(out_w) + ")");
    }
    const int64_t ph = d.h + 2 * padding, pw = d.w + 2 * padding;
    if (out_h > ph || out_w > pw) {
        throw std::invalid_argument("`size` (" + std::to_string(out_h) + ", " + std::to_string(out_w) +
                                    ") is larger than the padded image (" + std::to_string(ph) + ", " +
                                    std::to_string(pw) + ")");
    }
    for (int64_t i = 0; i < d.n; ++i) {
        const int64_t t = top.data()[i], l = left.data()[i];
        if (t < 0 || t > ph - out_h) {
            throw std::invalid_argument("`top` must be in [0, " + std::to_string(ph - out_h) + "], got " +
                                        std::to_string(t) + " at index " + std::to_string(i));
        }
        if (l < 0 || l > pw - out_w) {
            throw std::invalid_argument("`left` must be in [0, " + std::to_string(pw - out_w) + "], got " +
                                        std::to_string(l) + " at index " + std::to_string(i));
        }
    }
    farray y = new_array<float>({d.n, d.c, out_h, out_w}, "augment_crop", "y");
    call_without_gil("augment_crop", crop_forward, in(x), out(y), d.n, d.c, d.h, d.w, in(top), in(left), out_h, out_w,
                     padding, fill, 0);
    return y;
}

farray grayscale(const py::object& x_obj, int64_t num_output_channels) {
    const farray x = arg<float>(x_obj, "x");
    const Dims d = batch_dims(x);
    if (d.c != 1 && d.c != 3) {
        throw std::invalid_argument("`x` must have 1 or 3 channels, got " + std::to_string(d.c));
    }
    if (num_output_channels != 1 && num_output_channels != 3) {
        throw std::invalid_argument("`num_output_channels` must be 1 or 3, got " + std::to_string(num_output_channels));
    }
    farray y = new_array<float>({d.n, num_output_channels, d.h, d.w}, "augment_grayscale", "y");
    call_without_gil("augment_grayscale", grayscale_forward, in(x), out(y), d.n, d.c, d.h, d.w, num_output_channels, 0);
    return y;
}

darray uniform(uint64_t key, int64_t start, int64_t n, int64_t k) {
    if (start < 0 || n < 0 || k < 0) {
        throw std::invalid_argument("`start`, `n` and `k` must be non-negative, got " + std::to_string(start) + ", " +
                                    std::to_string(n) + ", " + std::to_string(k));
    }
    checked_add(start, n, "`start` + `n`");
    darray u = new_array<double>({n, k}, "augment_uniform", "u");
    call_without_gil("augment_uniform", uniform_stream, key, start, n, k, out(u));
    return u;
}

// A flat (n,) keep mask of float32 (or float64 with `double_precision`) values scale and 0.
py::array dropout_mask_array(uint64_t key, int64_t n, uint64_t threshold, double scale, bool double_precision) {
    if (n < 0) throw std::invalid_argument("`n` must be non-negative, got " + std::to_string(n));
    if (threshold > (uint64_t(1) << 32)) {
        throw std::invalid_argument("`threshold` must be in [0, 2**32], got " + std::to_string(threshold));
    }
    if (!std::isfinite(scale)) throw std::invalid_argument("`scale` must be finite, got " + std::to_string(scale));
    if (double_precision) {
        darray m = new_array<double>({n}, "dropout_mask", "mask");
        call_without_gil("dropout_mask", [&](double* o) { dropout_mask(key, n, threshold, scale, o, 0); }, out(m));
        return std::move(m);
    }
    const float s32 = static_cast<float>(scale);
    if (!std::isfinite(s32)) throw std::invalid_argument("`scale` must be finite in float32, got " + std::to_string(scale));
    farray m = new_array<float>({n}, "dropout_mask", "mask");
    call_without_gil("dropout_mask", [&](float* o) { dropout_mask(key, n, threshold, s32, o, 0); }, out(m));
    return std::move(m);
}

}  // namespace

void bind_augment(py::module_& m) {
    m.def("augment_affine", &affine, py::arg("x"), py::arg("angle"),
          py::arg("tx"), py::arg("ty"), py::arg("scale"), py::arg("fill"),
          "Bilinear affine warp of an (N, C, H, W) float32 batch with per-sample parameters.");
    m.def("augment_hflip", &hflip, py::arg("x"), py::arg("flags") = py::none(),
          "Left-right mirror of the samples whose uint8 flag is set (all when flags is None).");
    m.def("augment_crop", &crop, py::arg("x"), py::arg("top"), py::arg("left"),
          py::arg("out_h"), py::arg("out_w"), py::arg("padding"), py::arg("fill"),
          "Per-sample crop from the batch padded with fill.");
    m.def("augment_grayscale", &grayscale, py::arg("x"), py::arg("num_output_channels"),
          "Luma 0.299 R + 0.587 G + 0.114 B, repeated to num_output_channels.");
    m.def("augment_uniform", &uniform, py::arg("key"), py::arg("start"), py::arg("n"), py::arg("k"),
          "Counter-based uniforms in [0, 1): (n, k) array, row i for sample start + i.");
    m.def("dropout_mask", &dropout_mask_array, py::arg("key"), py::arg("n"), py::arg("threshold"), py::arg("scale"),
          py::arg("double_precision") = false,
          "Dropout's counter-based keep mask: (n,) values scale (kept) and 0 (dropped).");
}

}  // namespace striate
