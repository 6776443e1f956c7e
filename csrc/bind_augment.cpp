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

farray affine(const farray& x, const darray& angle, const darray& tx, const darray& ty, const darray& scale,
              float fill) {
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
    farray y = new_array<float>({d.n, d.c, d.h, d.w});
    call_without_gil(affine_forward, in(x), out(y), d.n, d.c, d.h, d.w, in(angle), in(tx), in(ty), in(scale), fill,
                     0);
    return y;
}

farray hflip(const farray& x, const py::object& flags_obj) {
    const Dims d = batch_dims(x);
    std::optional<u8array> flags;
    if (!flags_obj.is_none()) {
        if (!py::isinstance<u8array>(flags_obj)) throw std::invalid_argument("`flags` must be a uint8 array");
        flags = flags_obj.cast<u8array>();
        require_len(*flags, d.n, "flags");
    }
    farray y = new_array<float>({d.n, d.c, d.h, d.w});
    call_without_gil(hflip_forward, in(x), out(y), d.n, d.c, d.h, d.w, in(flags), 0);
    return y;
}

farray crop(const farray& x, const larray& top, const larray& left, int64_t out_h, int64_t out_w, int64_t padding,
            float fill) {
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
    farray y = new_array<float>({d.n, d.c, out_h, out_w});
    call_without_gil(crop_forward, in(x), out(y), d.n, d.c, d.h, d.w, in(top), in(left), out_h, out_w, padding, fill,
                     0);
    return y;
}

farray grayscale(const farray& x, int64_t num_output_channels) {
    const Dims d = batch_dims(x);
    if (d.c != 1 && d.c != 3) {
        throw std::invalid_argument("`x` must have 1 or 3 channels, got " + std::to_string(d.c));
    }
    if (num_output_channels != 1 && num_output_channels != 3) {
        throw std::invalid_argument("`num_output_channels` must be 1 or 3, got " + std::to_string(num_output_channels));
    }
    farray y = new_array<float>({d.n, num_output_channels, d.h, d.w});
    call_without_gil(grayscale_forward, in(x), out(y), d.n, d.c, d.h, d.w, num_output_channels, 0);
    return y;
}

darray uniform(uint64_t key, int64_t start, int64_t n, int64_t k) {
    if (start < 0 || n < 0 || k < 0) {
        throw std::invalid_argument("`start`, `n` and `k` must be non-negative, got " + std::to_string(start) + ", " +
                                    std::to_string(n) + ", " + std::to_string(k));
    }
    darray u = new_array<double>({n, k});
    call_without_gil(uniform_stream, key, start, n, k, out(u));
    return u;
}

}  // namespace

void bind_augment(py::module_& m) {
    m.def("augment_affine", &affine, py::arg("x").noconvert(), py::arg("angle").noconvert(),
          py::arg("tx").noconvert(), py::arg("ty").noconvert(), py::arg("scale").noconvert(), py::arg("fill"),
          "Bilinear affine warp of an (N, C, H, W) float32 batch with per-sample parameters.");
    m.def("augment_hflip", &hflip, py::arg("x").noconvert(), py::arg("flags") = py::none(),
          "Left-right mirror of the samples whose uint8 flag is set (all when flags is None).");
    m.def("augment_crop", &crop, py::arg("x").noconvert(), py::arg("top").noconvert(), py::arg("left").noconvert(),
          py::arg("out_h"), py::arg("out_w"), py::arg("padding"), py::arg("fill"),
          "Per-sample crop from the batch padded with fill.");
    m.def("augment_grayscale", &grayscale, py::arg("x").noconvert(), py::arg("num_output_channels"),
          "Luma 0.299 R + 0.587 G + 0.114 B, repeated to num_output_channels.");
    m.def("augment_uniform", &uniform, py::arg("key"), py::arg("start"), py::arg("n"), py::arg("k"),
          "Counter-based uniforms in [0, 1): (n, k) array, row i for sample start + i.");
}

}  // namespace striate
