// bind_optim.cpp: pybind11 bindings for the fused optimizer updates and the
// finite check of optim.hpp.
//
// An update takes the parameter, its gradient and its state arrays, all of
// `param`'s dtype (float32 or float64; TypeError otherwise), C-contiguous,
// aligned and of `param`'s shape (ValueError naming the array otherwise), the
// written ones writable; then the scalars exactly as the NumPy code of
// optim/optimizers.py casts them to the dtype (computed there in Python
// doubles), None for a term that code skips. Arrays that share memory are
// left alone and the call returns False: on overlapping arrays the NumPy
// sequence of whole-array passes gives other values than one pass, and the
// caller runs that sequence instead. Otherwise the kernel runs without the GIL
// and the call returns True.
//
// Not here: any numeric code, the state's creation, the choice between this
// and the NumPy path (optim/optimizers.py).
#include <pybind11/stl.h>

#include <initializer_list>
#include <optional>
#include <string>

#include "bind_util.hpp"
#include "optim.hpp"

namespace striate {

namespace {

template <class T>
using carray = py::array_t<T, py::array::c_style>;

// Whether `obj`, the array that sets the dtype, is float64 (else float32);
// TypeError naming `name` for anything else.
bool is_double(const py::handle& obj, const char* name) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string("`") + name + "` must be a numpy array, got " + type_name(obj));
    }
    const auto a = py::reinterpret_borrow<py::array>(obj);
    auto& api = py::detail::npy_api::get();
    if (api.PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<double>().ptr())) return true;
    if (api.PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<float>().ptr())) return false;
    throw py::type_error(std::string("`") + name + "` must be a float32 or float64 array, got dtype " +
                         std::string(py::str(a.dtype())));
}

// An input of `param`'s dtype and shape.
template <class T>
carray<T> same_in(const py::handle& obj, const char* name, const std::vector<int64_t>& shape) {
    carray<T> a = arg<T>(obj, name);
    require_shape(a, shape, name);
    return a;
}

// A writable state array of `param`'s dtype and shape.
template <class T>
carray<T> same_out(const py::handle& obj, const char* name, const std::vector<int64_t>& shape) {
    carray<T> a = out_arg<T>(obj, name);
    require_shape(a, shape, name);
    return a;
}

template <class T>
std::optional<carray<T>> opt_out(const py::handle& obj, const char* name, const std::vector<int64_t>& shape) {
    if (obj.is_none()) return std::nullopt;
    return same_out<T>(obj, name, shape);
}

// True when no two of the arrays share a byte (empty arrays share none).
template <class T>
bool disjoint(std::initializer_list<const carray<T>*> arrays) {
    const carray<T>* const* v = arrays.begin();
    const size_t k = arrays.size();
    for (size_t i = 0; i < k; ++i) {
        if (v[i] == nullptr || v[i]->size() == 0) continue;
        const auto lo_i = reinterpret_cast<uintptr_t>(v[i]->data());
        const auto hi_i = lo_i + static_cast<uintptr_t>(v[i]->nbytes());
        for (size_t j = i + 1; j < k; ++j) {
            if (v[j] == nullptr || v[j]->size() == 0) continue;
            const auto lo_j = reinterpret_cast<uintptr_t>(v[j]->data());
            const auto hi_j = lo_j + static_cast<uintptr_t>(v[j]->nbytes());
            if (lo_i < hi_j && lo_j < hi_i) return false;
        }
    }
    return true;
}

template <class T>
const carray<T>* ptr(const std::optional<carray<T>>& a) {
    return a ? &*a : nullptr;
}

template <class T>
bool sgd_typed(const py::object& param_obj, const py::object& grad_obj, const py::object& buf_obj, double lr,
               std::optional<double> weight_decay, double momentum, std::optional<double> dampening, bool nesterov,
               bool first) {
    carray<T> p = out_arg<T>(param_obj, "param");
    const auto shape = shape_of(p);
    const carray<T> g = same_in<T>(grad_obj, "grad", shape);
    std::optional<carray<T>> buf = opt_out<T>(buf_obj, "momentum_buffer", shape);
    if (!disjoint<T>({&p, &g, ptr(buf)})) return false;
    SgdScalars s{};
    s.lr = lr;
    s.decay = weight_decay.has_value();
    s.weight_decay = weight_decay.value_or(0.0);
    s.momentum = momentum;
    s.damp = dampening.has_value();
    s.dampening = dampening.value_or(1.0);
    s.nesterov = nesterov;
    s.first = first;
    call_without_gil("sgd_step", sgd_update<T>, out(p), in(g), out(buf), static_cast<int64_t>(p.size()), s);
    return true;
}

bool sgd_py(const py::object& param, const py::object& grad, const py::object& momentum_buffer, double lr,
            std::optional<double> weight_decay, double momentum, std::optional<double> dampening, bool nesterov,
            bool first) {
    if (is_double(param, "param")) {
        return sgd_typed<double>(param, grad, momentum_buffer, lr, weight_decay, momentum, dampening, nesterov, first);
    }
    return sgd_typed<float>(param, grad, momentum_buffer, lr, weight_decay, momentum, dampening, nesterov, first);
}

template <class T>
bool adam_typed(const py::object& param_obj, const py::object& grad_obj, const py::object& m_obj,
                const py::object& v_obj, const AdamScalars& s) {
    carray<T> p = out_arg<T>(param_obj, "param");
    const auto shape = shape_of(p);
    const carray<T> g = same_in<T>(grad_obj, "grad", shape);
    carray<T> m = same_out<T>(m_obj, "exp_avg", shape);
    carray<T> v = same_out<T>(v_obj, "exp_avg_sq", shape);
    if (!disjoint<T>({&p, &g, &m, &v})) return false;
    call_without_gil("adam_step", adam_update<T>, out(p), in(g), out(m), out(v), static_cast<int64_t>(p.size()), s);
    return true;
}

bool adam_py(const py::object& param, const py::object& grad, const py::object& exp_avg, const py::object& exp_avg_sq,
             double step_size, std::optional<double> weight_decay, std::optional<double> decoupled,
             double one_minus_beta1, double beta2, double one_minus_beta2, double bias_correction2, double eps) {
    if (weight_decay && decoupled) {
        throw std::invalid_argument("`weight_decay` (L2, Adam) and `decoupled` (AdamW) exclude each other; "
                                    "pass None for one of them");
    }
    AdamScalars s{};
    s.step_size = step_size;
    s.decay = weight_decay.has_value();
    s.weight_decay = weight_decay.value_or(0.0);
    s.decoupled_decay = decoupled.has_value();
    s.decoupled = decoupled.value_or(1.0);
    s.one_minus_beta1 = one_minus_beta1;
    s.beta2 = beta2;
    s.one_minus_beta2 = one_minus_beta2;
    s.bias_correction2 = bias_correction2;
    s.eps = eps;
    if (is_double(param, "param")) return adam_typed<double>(param, grad, exp_avg, exp_avg_sq, s);
    return adam_typed<float>(param, grad, exp_avg, exp_avg_sq, s);
}

template <class T>
bool rmsprop_typed(const py::object& param_obj, const py::object& grad_obj, const py::object& sq_obj,
                   const py::object& ga_obj, const py::object& buf_obj, const RmspropScalars& s) {
    carray<T> p = out_arg<T>(param_obj, "param");
    const auto shape = shape_of(p);
    const carray<T> g = same_in<T>(grad_obj, "grad", shape);
    carray<T> sq = same_out<T>(sq_obj, "square_avg", shape);
    std::optional<carray<T>> ga = opt_out<T>(ga_obj, "grad_avg", shape);
    std::optional<carray<T>> buf = opt_out<T>(buf_obj, "momentum_buffer", shape);
    if (!disjoint<T>({&p, &g, &sq, ptr(ga), ptr(buf)})) return false;
    call_without_gil("rmsprop_step", rmsprop_update<T>, out(p), in(g), out(sq), out(ga), out(buf),
                     static_cast<int64_t>(p.size()), s);
    return true;
}

bool rmsprop_py(const py::object& param, const py::object& grad, const py::object& square_avg,
                const py::object& grad_avg, const py::object& momentum_buffer, double lr, double alpha,
                double one_minus_alpha, double eps, std::optional<double> weight_decay, double momentum) {
    RmspropScalars s{};
    s.lr = lr;
    s.alpha = alpha;
    s.one_minus_alpha = one_minus_alpha;
    s.eps = eps;
    s.decay = weight_decay.has_value();
    s.weight_decay = weight_decay.value_or(0.0);
    s.momentum = momentum;
    if (is_double(param, "param")) {
        return rmsprop_typed<double>(param, grad, square_avg, grad_avg, momentum_buffer, s);
    }
    return rmsprop_typed<float>(param, grad, square_avg, grad_avg, momentum_buffer, s);
}

template <class T>
bool all_finite_typed(const py::object& a_obj) {
    const carray<T> a = arg<T>(a_obj, "a");
    bool ok = true;
    call_without_gil(
        "all_finite", [&ok](const T* data, int64_t n) { ok = all_finite<T>(data, n); }, in(a),
        static_cast<int64_t>(a.size()));
    return ok;
}

bool all_finite_py(const py::object& a) {
    return is_double(a, "a") ? all_finite_typed<double>(a) : all_finite_typed<float>(a);
}

}  // namespace

void bind_optim(py::module_& m) {
    m.def("sgd_step", &sgd_py, py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::kw_only(),
          py::arg("lr"), py::arg("weight_decay"), py::arg("momentum"), py::arg("dampening"), py::arg("nesterov"),
          py::arg("first"),
          "One SGD step in one pass, as optim.SGD's NumPy code: param and momentum_buffer (None: no momentum) "
          "updated in place. weight_decay: None or the L2 factor; dampening: None or 1 - dampening; first: "
          "the buffer is new (buf = g). False, with nothing written, when two arrays share memory.");
    m.def("adam_step", &adam_py, py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
          py::kw_only(), py::arg("step_size"), py::arg("weight_decay"), py::arg("decoupled"),
          py::arg("one_minus_beta1"), py::arg("beta2"), py::arg("one_minus_beta2"), py::arg("bias_correction2"),
          py::arg("eps"),
          "One Adam/AdamW step in one pass, as optim.Adam's NumPy code: param, exp_avg and exp_avg_sq updated in "
          "place. step_size = lr / (1 - beta1**t), bias_correction2 = sqrt(1 - beta2**t); weight_decay: None or "
          "the L2 factor; decoupled: None or AdamW's 1 - lr * weight_decay. False, with nothing written, when two "
          "arrays share memory.");
    m.def("rmsprop_step", &rmsprop_py, py::arg("param"), py::arg("grad"), py::arg("square_avg"),
          py::arg("grad_avg"), py::arg("momentum_buffer"), py::kw_only(), py::arg("lr"), py::arg("alpha"),
          py::arg("one_minus_alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"),
          "One RMSprop step in one pass, as optim.RMSprop's NumPy code: param and the state updated in place. "
          "grad_avg: None unless centered; momentum_buffer: None unless momentum > 0; weight_decay: None or the "
          "L2 factor. False, with nothing written, when two arrays share memory.");
    m.def("all_finite", &all_finite_py, py::arg("a"),
          "True when the C-contiguous float32 or float64 array a holds no infinity and no NaN (np.isfinite(a).all()).");
}

}  // namespace striate
