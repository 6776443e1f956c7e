// bindings.cpp: the striate._core module. Each op family registers its own
// functions from its bind_*.cpp file; this file only assembles them and binds
// the thread count.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "cpu.hpp"
#include "parallel.hpp"

namespace py = pybind11;

namespace striate {
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_gemm(py::module_& m);
void bind_augment(py::module_& m);
}  // namespace striate

PYBIND11_MODULE(_core, m) {
    m.doc() = "striate C++/OpenMP kernels (use striate.functional, which validates arguments)";
    m.def("set_num_threads", &striate::set_num_threads, py::arg("n"));
    m.def("get_num_threads", &striate::get_num_threads);
    m.def("set_isa", [](const std::string& name) { striate::set_isa(striate::parse_isa(name)); }, py::arg("name"));
    m.def("get_isa", [] { return std::string(striate::isa_name(striate::active_isa())); });
    m.def("detected_isa", [] { return std::string(striate::isa_name(striate::detected_isa())); });
#ifdef STRIATE_HAVE_OPENMP
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
    striate::bind_conv(m);
    striate::bind_pool(m);
    striate::bind_gemm(m);
    striate::bind_augment(m);
}
