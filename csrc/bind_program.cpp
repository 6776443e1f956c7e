// bind_program.cpp: the planned inference forward as one C++ call.
//
// striate/_plan.py turns a chain of layers, once per input shape, into a
// Program: a list of steps, each either a checked op of bind_ops.hpp
// (convolution with its bias and an optional ReLU, the fully-connected
// product with its bias and ReLU, max pooling without indices, flatten, ReLU
// in place, a contiguous copy) or a Python callable for everything else
// (BatchNorm, residual blocks, nested plans, layers the planner does not
// know). Program.run(x) walks the steps here: per step a few attribute reads
// and checks, and no Python frame or argument parsing; the GIL is released
// around each kernel, as in every binding. Weights are read from the layers'
// Parameter objects (`.data`) on every run, so a program never holds stale
// weights, and a Dropout's mode is read on every run too. Each op is the same
// kernel, with the same checks and errors, as the Python-facing function of
// the same name, so the outputs have the bits of the layers' own forward.
//
// Not here: which layers become which steps (striate/_plan.py), the kernels.
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "bind_ops.hpp"
#include "bind_util.hpp"
#include "elementwise.hpp"

namespace striate {

// Raised by Program.run when the layers no longer match the plan (as _core.StalePlan).
class StalePlan : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

namespace {

// A C-contiguous, aligned ndarray (NumPy's flags).
bool contiguous_array(const py::handle& v) {
    if (!py::isinstance<py::array>(v)) return false;
    constexpr int need = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
    return (py::reinterpret_borrow<py::array>(v).flags() & need) == need;
}

// ... of float32: what the element-wise kernels take.
bool flat_float32(const py::handle& v) { return contiguous_array(v) && py::isinstance<py::array_t<float>>(v); }

// y = max(y, 0) in place on a fresh float32 array.
void relu_inplace(farray& y) {
    float* p = out(y);
    call_without_gil("relu", relu_forward, p, p, static_cast<int64_t>(y.size()));
}

class Program {
   public:
    Program() : numpy_(py::module_::import("numpy")) {}

    // Conv2d: weight and bias are Parameter objects (bias may be None); args
    // are conv2d_forward's nine geometry arguments.
    void conv(py::object weight, py::object bias, const std::vector<int64_t>& args, bool relu) {
        if (args.size() != 9) throw std::invalid_argument("`args` must hold 9 conv2d_forward arguments");
        Step s{Kind::conv, std::move(weight), std::move(bias), {}, relu};
        std::copy(args.begin(), args.end(), s.args.begin());
        steps_.push_back(std::move(s));
    }
    // Linear: x @ weight.T (row-invariant) + bias, then the ReLU.
    void linear(py::object weight, py::object bias, bool relu) {
        steps_.push_back(Step{Kind::linear, std::move(weight), std::move(bias), {}, relu});
    }
    // MaxPool2d: args are (kh, kw, sh, sw, ph, pw, dh, dw).
    void max_pool(const std::vector<int64_t>& args, bool ceil_mode) {
        if (args.size() != 8) throw std::invalid_argument("`args` must hold 8 max_pool2d_forward arguments");
        Step s{Kind::max_pool, py::none(), py::none(), {}, ceil_mode};
        std::copy(args.begin(), args.end(), s.args.begin());
        steps_.push_back(std::move(s));
    }
    // v.reshape(rows, -1).
    void flatten(int64_t rows) {
        Step s{Kind::flatten, py::none(), py::none(), {}, false};
        s.args[0] = rows;
        steps_.push_back(std::move(s));
    }
    // v = max(v, 0) in place (v is the plan's own array).
    void relu() { steps_.push_back(Step{Kind::relu, py::none(), py::none(), {}, false}); }
    // v, or np.ascontiguousarray(v) when it is not C-contiguous and aligned.
    void contiguous() { steps_.push_back(Step{Kind::contiguous, py::none(), py::none(), {}, false}); }
    // layer.forward(v) when layer.training, else v.
    void dropout(py::object layer) { steps_.push_back(Step{Kind::dropout, std::move(layer), py::none(), {}, false}); }
    // v = fn(v).
    void call(py::object fn) { steps_.push_back(Step{Kind::call, std::move(fn), py::none(), {}, false}); }

    size_t size() const { return steps_.size(); }

    // The steps' kinds in order ("conv", "linear", ..., "call" for a Python step).
    std::vector<std::string> kinds() const {
        static const char* const names[] = {"conv", "linear", "max_pool", "flatten", "relu", "contiguous", "dropout",
                                            "call"};
        std::vector<std::string> out;
        for (const Step& s : steps_) out.emplace_back(names[static_cast<int>(s.kind)]);
        return out;
    }

    py::object run(py::object v) const {
        for (const Step& s : steps_) v = step(s, std::move(v));
        return v;
    }

   private:
    enum class Kind { conv, linear, max_pool, flatten, relu, contiguous, dropout, call };
    struct Step {
        Kind kind;
        py::object a, b;  // the parameters, the layer or the callable
        std::array<int64_t, 9> args;
        bool flag;  // ReLU after (conv, linear); ceil_mode (max_pool)
    };

    // param.data (None for no parameter). A parameter that is no longer a
    // C-contiguous float32 array (the layer was cast or given other data after
    // planning) makes the program stale: StalePlan, and the caller plans again.
    static py::object data_of(const py::object& param) {
        if (param.is_none()) return py::none();
        py::object data = param.attr("data");
        if (!flat_float32(data)) throw StalePlan("a parameter is no longer a C-contiguous float32 array");
        return data;
    }

    py::object step(const Step& s, py::object v) const {
        const auto& a = s.args;
        switch (s.kind) {
            case Kind::conv: {
                farray y = conv2d_forward_py(v, data_of(s.a), data_of(s.b), a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                                             a[7], a[8]);
                if (s.flag) relu_inplace(y);
                return std::move(y);
            }
            case Kind::linear: {
                farray y = matmul(v, data_of(s.a), false, true, true);
                if (!s.b.is_none()) add_bias(y, arg<float>(data_of(s.b), "bias"));
                if (s.flag) relu_inplace(y);
                return std::move(y);
            }
            case Kind::max_pool:
                return max_pool2d_values_py(v, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], s.flag);
            case Kind::flatten:
                return v.attr("reshape")(a[0], -1);
            case Kind::relu:
                if (flat_float32(v)) {
                    farray y = py::reinterpret_borrow<farray>(v);
                    relu_inplace(y);
                    return v;
                }
                return numpy_.attr("maximum")(v, 0, py::arg("out") = v);
            case Kind::contiguous:
                return contiguous_array(v) ? v : numpy_.attr("ascontiguousarray")(v);
            case Kind::dropout:
                return py::bool_(s.a.attr("training")) ? py::object(s.a.attr("forward")(v)) : v;
            case Kind::call:
                return s.a(v);
        }
        return v;
    }

    // y (rows, n) += b (n,), as NumPy's broadcast add.
    static void add_bias(farray& y, const farray& b) {
        require_ndim(b, 1, "bias");
        const int64_t rows = y.shape(0), n = y.shape(1);
        require_shape(b, {n}, "bias");
        float* py_ = out(y);
        const float* pb = in(b);
        call_without_gil("linear", [=] {
            for (int64_t i = 0; i < rows; ++i)
                for (int64_t j = 0; j < n; ++j) py_[i * n + j] += pb[j];
        });
    }

    py::module_ numpy_;
    std::vector<Step> steps_;
};

}  // namespace

void bind_program(py::module_& m) {
    py::register_exception<StalePlan>(m, "StalePlan", PyExc_RuntimeError);
    py::class_<Program>(m, "Program",
                        "A planned inference forward (striate._plan): steps appended once, then run(x) walks "
                        "them in one call. Parameters are read live on every run.")
        .def(py::init<>())
        .def("conv", &Program::conv, py::arg("weight"), py::arg("bias").none(true), py::arg("args"),
             py::arg("relu"))
        .def("linear", &Program::linear, py::arg("weight"), py::arg("bias").none(true), py::arg("relu"))
        .def("max_pool", &Program::max_pool, py::arg("args"), py::arg("ceil_mode"))
        .def("flatten", &Program::flatten, py::arg("rows"))
        .def("relu", &Program::relu)
        .def("contiguous", &Program::contiguous)
        .def("dropout", &Program::dropout, py::arg("layer"))
        .def("call", &Program::call, py::arg("fn"))
        .def("__len__", &Program::size)
        .def("kinds", &Program::kinds, "The steps' kinds in order; 'call' is a Python step.")
        .def("run", &Program::run, py::arg("x"));
}

}  // namespace striate
