// bind_gemm.cpp: Python access to sgemm (used by the fully-connected layer).
#include "bind_util.hpp"
#include "gemm.hpp"

namespace striate {

namespace {
// out = op(a) @ op(b), fresh array. a, b: 2-D float32, C-contiguous.
farray matmul(const farray& a, const farray& b, bool trans_a, bool trans_b) {
    require_ndim(a, 2, "a");
    require_ndim(b, 2, "b");
    const int64_t M = trans_a ? a.shape(1) : a.shape(0);
    const int64_t Ka = trans_a ? a.shape(0) : a.shape(1);
    const int64_t Kb = trans_b ? b.shape(1) : b.shape(0);
    const int64_t N = trans_b ? b.shape(0) : b.shape(1);
    if (Ka != Kb) {
        throw std::invalid_argument("matmul: inner dimensions differ: `a` gives " + std::to_string(Ka) +
                                    ", `b` gives " + std::to_string(Kb));
    }
    farray out = new_array<float>({M, N});
    const float* pa = a.data();
    const float* pb = b.data();
    float* pc = out.mutable_data();
    const int64_t lda = a.shape(1), ldb = b.shape(1);
    {
        py::gil_scoped_release release;
        sgemm(trans_a, trans_b, M, N, Ka, 1.f, pa, lda, pb, ldb, 0.f, pc, N);
    }
    return out;
}
}  // namespace

void bind_gemm(py::module_& m) {
    m.def("matmul", &matmul, py::arg("a").noconvert(), py::arg("b").noconvert(), py::arg("trans_a") = false,
          py::arg("trans_b") = false, "op(a) @ op(b) with striate's deterministic SGEMM");
}

}  // namespace striate
