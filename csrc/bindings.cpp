// bindings.cpp: the striate._core module. Each op family registers its own
// functions from its bind_*.cpp file; this file assembles them and binds the
// process-wide settings (thread count, ISA path, the C allocator's reuse of
// freed memory), the translation of
// OutOfMemory into MemoryError, and the output-size formulas
// of shape.hpp, which striate._args calls so that Python and C++ share one
// definition. Not here: any kernel or its argument checks.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "cpu.hpp"
#include "memory.hpp"
#include "parallel.hpp"
#include "shape.hpp"

namespace py = pybind11;

namespace striate {
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_norm(py::module_& m);
void bind_gemm(py::module_& m);
void bind_augment(py::module_& m);
void bind_elementwise(py::module_& m);
void bind_program(py::module_& m);
void bind_optim(py::module_& m);
}  // namespace striate

namespace {

// Keep freed activations in the heap instead of handing them back to the
// kernel. A training step frees and reallocates the same few-MB arrays
// (outputs, gradients) every step; glibc's defaults return the top of the heap
// to the kernel once 2x the largest freed block lies free there, so the next
// step page-faults the same memory in again: 1,500 minor faults and about 3 ms
// of system time per ResNet-20 step (batch 64, Zen 4), against 200 with these
// settings. Blocks up to 32 MB (glibc's largest mmap threshold) come from the
// heap, and up to 512 MB of free heap top is kept for reuse. Setting either
// value turns off glibc's own adjustment of the other, so both are set.
// Returns whether the allocator accepted them (other C libraries: false).
bool tune_allocator() {
#if defined(__GLIBC__)
    return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 512 << 20) == 1;
#else
    return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "striate C++/OpenMP kernels (use striate.functional, which validates arguments)";
    // OutOfMemory (memory.hpp) keeps its message: the op, the buffer and its bytes.
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const striate::OutOfMemory& e) {
            PyErr_SetString(PyExc_MemoryError, e.what());
        }
    });
    m.def(
        "set_num_threads",
        [](const py::object& n) {
            // Any Python int reaches the range check, however large.
            if (!PyLong_Check(n.ptr()) || PyBool_Check(n.ptr())) {
                throw py::type_error("`n` must be an int, got " +
                                     std::string(py::str(py::type::of(n).attr("__name__"))));
            }
            int overflow = 0;
            const long long v = PyLong_AsLongLongAndOverflow(n.ptr(), &overflow);
            if (overflow != 0) {
                throw std::invalid_argument("`n` (number of threads) must be between 1 and " +
                                            std::to_string(striate::kMaxThreads) + ", got " + std::string(py::str(n)));
            }
            striate::set_num_threads(static_cast<int64_t>(v));
        },
        py::arg("n"),
        "Set the thread count of every kernel, 1 <= n <= max_threads. ValueError outside that range, "
        "RuntimeError when the process cannot create that many threads (the count is then unchanged).");
    m.def("get_num_threads", &striate::get_num_threads,
          "Threads every kernel uses (1 in a process forked after a parallel region ran).");
    m.def("openmp_usable", &striate::openmp_usable,
          "False in a process forked after a parallel region ran: kernels there run on one thread.");
    m.attr("max_threads") = striate::kMaxThreads;
#ifdef STRIATE_HAVE_OPENMP
    m.attr("_has_openmp") = true;
#else
    m.attr("_has_openmp") = false;  // a build without OpenMP: every kernel on the calling thread
#endif
    m.def(
        "_parallel_claims",
        [](int64_t n, int64_t stall_ms) {
            // For tests of parallel_for's schedule: which thread ran each of n
            // items, when the worker that starts on the last range first sleeps
            // stall_ms (a worker that starts late or shares its core).
            if (n < 0 || n > 1'000'000) throw std::invalid_argument("`n` must be in [0, 1000000]");
            if (stall_ms < 0 || stall_ms > 10'000) throw std::invalid_argument("`stall_ms` must be in [0, 10000]");
            std::vector<int> ran(static_cast<size_t>(n), -1);
            std::vector<int> runs(static_cast<size_t>(n), 0);
            const int nt = static_cast<int>(std::min<int64_t>(n, striate::get_num_threads()));
            const int64_t last_start = nt > 0 ? striate::range_begin(nt - 1, n, nt) : 0;
            {
                py::gil_scoped_release release;
                striate::parallel_for(n, [&](int64_t i) {
                    if (i == last_start && stall_ms > 0)
                        std::this_thread::sleep_for(std::chrono::milliseconds(stall_ms));
                    ran[static_cast<size_t>(i)] = striate::thread_index();
                    runs[static_cast<size_t>(i)] += 1;
                });
            }
            return py::make_tuple(ran, runs);
        },
        py::arg("n"), py::arg("stall_ms"));
    m.def("set_isa", [](const std::string& name) { striate::set_isa(striate::parse_isa(name)); }, py::arg("name"));
    m.def("get_isa", [] { return std::string(striate::isa_name(striate::active_isa())); });
    m.def("detected_isa", [] { return std::string(striate::isa_name(striate::detected_isa())); });
    m.def(
        "conv_out_size",
        [](int64_t n, int64_t k, int64_t stride, int64_t pad_lo, int64_t pad_hi, int64_t dilation) {
            return striate::conv_out_size(n, k, stride, pad_lo, pad_hi, dilation, "the axis");
        },
        py::arg("n"), py::arg("k"), py::arg("stride"), py::arg("pad_lo"), py::arg("pad_hi"), py::arg("dilation"),
        "Convolution output size along one axis (shape.hpp); ValueError when the window does not fit.");
    m.def(
        "pool_out_size",
        [](int64_t n, int64_t k, int64_t stride, int64_t pad, int64_t dilation, bool ceil_mode) {
            return striate::pool_out_size(n, k, stride, pad, dilation, ceil_mode, "the axis");
        },
        py::arg("n"), py::arg("k"), py::arg("stride"), py::arg("pad"), py::arg("dilation"), py::arg("ceil_mode"),
        "Pooling output size along one axis, ceil_mode included (shape.hpp); ValueError when the window does not "
        "fit.");
    m.attr("allocator_tuned") = tune_allocator();
#ifdef STRIATE_HAVE_OPENMP
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
    striate::bind_conv(m);
    striate::bind_pool(m);
    striate::bind_norm(m);
    striate::bind_gemm(m);
    striate::bind_augment(m);
    striate::bind_elementwise(m);
    striate::bind_program(m);
    striate::bind_optim(m);
}
