// bind_ops.hpp: the checked array-level ops of bind_conv.cpp, bind_pool.cpp
// and bind_gemm.cpp that the planned forward (bind_program.cpp) calls
// directly: the same argument checks, errors and output arrays as the
// Python-facing functions of the same names, without Python's call overhead.
//
// Not here: the kernels, the bindings themselves.
#pragma once

#include "bind_util.hpp"

namespace striate {

// _core.conv2d_forward: y = conv2d(x, w) + b, a fresh array.
farray conv2d_forward_py(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj, int64_t stride_h,
                         int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                         int64_t pad_right, int64_t dil_h, int64_t dil_w, int64_t groups);

// _core.max_pool2d_forward's y alone (the indices go to per-thread scratch):
// what an inference forward needs.
farray max_pool2d_values_py(const py::object& x_obj, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                            int64_t pw, int64_t dh, int64_t dw, bool ceil_mode);

// _core.matmul: op(a) @ op(b), a fresh array.
farray matmul(const py::object& a_obj, const py::object& b_obj, bool trans_a, bool trans_b, bool row_invariant);

}  // namespace striate
