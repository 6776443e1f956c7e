// bind_gemm.cpp: Python access to sgemm (used by the fully-connected layer),
// plus the full BLAS-style entry points `_sgemm` / `_sgemm_naive` for tests and
// benchmarks, whose `isa` argument ("auto" follows st.set_isa) reaches every
// kernel family the CPU runs. Not here: any arithmetic.
#include "bind_ops.hpp"
#include "bind_util.hpp"
#include "gemm.hpp"
#include "parallel.hpp"

namespace striate {

// out = op(a) @ op(b), fresh array. a, b: 2-D float32, C-contiguous.
farray matmul(const py::object& a_obj, const py::object& b_obj, bool trans_a, bool trans_b, bool row_invariant) {
    const farray a = arg<float>(a_obj, "a");
    const farray b = arg<float>(b_obj, "b");
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
    farray c = new_array<float>({M, N}, "matmul", "c");
    const int64_t lda = a.shape(1), ldb = b.shape(1);
    call_without_gil("matmul", row_invariant ? sgemm_row_invariant : sgemm, trans_a, trans_b, M, N, Ka, 1.f, in(a), lda,
                     in(b), ldb, 0.f, out(c), N, 0);
    return c;
}

namespace {
// "auto" is the process-wide path (active_isa()); the other names pick a family.
Isa parse_gemm_isa(const std::string& isa) {
    if (isa == "auto") return active_isa();
    if (isa == "generic" || isa == "avx2" || isa == "avx512") return parse_isa(isa);
    throw std::invalid_argument("`isa` must be one of 'auto', 'generic', 'avx2', 'avx512', got '" + isa + "'");
}

// An explicit thread count for the testing entry points: <= 0 means the default.
void require_threads(int threads) {
    if (threads > kMaxThreads) {
        throw std::invalid_argument("`threads` must be at most " + std::to_string(kMaxThreads) + ", got " +
                                    std::to_string(threads));
    }
}

// The flat buffer `arr` must hold a rows x cols matrix with leading dimension ld.
void require_extent(const farray& arr, int64_t rows, int64_t cols, int64_t ld, const char* name) {
    if (rows <= 0 || cols <= 0) return;
    if (ld < cols) {
        throw std::invalid_argument(std::string("`ld") + name + "` must be >= " + std::to_string(cols) + ", got " +
                                    std::to_string(ld));
    }
    const int64_t need =
        checked_add(checked_mul(rows - 1, ld, "buffer extent"), cols, (std::string("`") + name + "` extent").c_str());
    if (static_cast<int64_t>(arr.size()) < need) {
        throw std::invalid_argument(std::string("`") + name + "` must hold at least " + std::to_string(need) +
                                    " floats, got " + std::to_string(arr.size()));
    }
}

// C = alpha * op(A) op(B) + beta * C in place on flat float32 buffers, BLAS style.
void sgemm_py(const py::object& a_obj, const py::object& b_obj, const py::object& c_obj, bool trans_a, bool trans_b,
              int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, float alpha, float beta,
              int threads, const std::string& isa, bool naive, bool row_invariant = false) {
    const farray a = arg<float>(a_obj, "a");
    const farray b = arg<float>(b_obj, "b");
    farray c = out_arg<float>(c_obj, "c");
    if (m < 0 || n < 0 || k < 0) {
        throw std::invalid_argument("`m`, `n`, `k` must be >= 0, got " + std::to_string(m) + ", " +
                                    std::to_string(n) + ", " + std::to_string(k));
    }
    require_threads(threads);
    const Isa which = parse_gemm_isa(isa);
    require_extent(a, trans_a ? k : m, trans_a ? m : k, lda, "a");
    require_extent(b, trans_b ? n : k, trans_b ? k : n, ldb, "b");
    require_extent(c, m, n, ldc, "c");
    if (row_invariant) {
        if (isa != "auto") {
            throw std::invalid_argument("`isa` must be 'auto' with row_invariant=True (it runs on st.get_isa())");
        }
        call_without_gil("_sgemm", sgemm_row_invariant, trans_a, trans_b, m, n, k, alpha, in(a), lda, in(b), ldb,
                         beta, out(c), ldc, threads);
    } else if (naive) {
        call_without_gil("_sgemm_naive", sgemm_naive, trans_a, trans_b, m, n, k, alpha, in(a), lda, in(b), ldb, beta,
                         out(c), ldc);
    } else {
        call_without_gil("_sgemm", sgemm_isa, which, trans_a, trans_b, m, n, k, alpha, in(a), lda, in(b), ldb, beta,
                         out(c), ldc, threads);
    }
}
}  // namespace

void bind_gemm(py::module_& m) {
    m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("trans_a") = false,
          py::arg("trans_b") = false, py::arg("row_invariant") = false,
          "op(a) @ op(b) with striate's deterministic SGEMM; row_invariant=True computes each row of the "
          "result exactly as it would be computed alone (results independent of the batch size)");
    m.def(
        "_sgemm",
        [](const py::object& a, const py::object& b, const py::object& c, bool trans_a, bool trans_b, int64_t m,
           int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, float alpha, float beta, int threads,
           const std::string& isa, bool row_invariant) {
            sgemm_py(a, b, c, trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta, threads, isa, false,
                     row_invariant);
        },
        py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a"),
        py::arg("trans_b"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("lda"), py::arg("ldb"),
        py::arg("ldc"), py::arg("alpha") = 1.f, py::arg("beta") = 0.f, py::arg("threads") = 0,
        py::arg("isa") = "auto", py::arg("row_invariant") = false,
        "C = alpha * op(A) op(B) + beta * C on flat C-contiguous float32 buffers, in place (testing entry point); "
        "row_invariant=True takes the fully-connected layers' product (on st.get_isa()'s path)");
    m.def(
        "_sgemm_naive",
        [](const py::object& a, const py::object& b, const py::object& c, bool trans_a, bool trans_b, int64_t m,
           int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, float alpha, float beta) {
            sgemm_py(a, b, c, trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta, 1, "auto", true);
        },
        py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a"),
        py::arg("trans_b"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("lda"), py::arg("ldb"),
        py::arg("ldc"), py::arg("alpha") = 1.f, py::arg("beta") = 0.f, "The naive oracle with _sgemm's arguments");
    m.def(
        "_sgemm_task_count",
        [](bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int threads, const std::string& isa) {
            require_threads(threads);
            return sgemm_task_count(parse_gemm_isa(isa), trans_a, trans_b, m, n, k, threads);
        },
        py::arg("trans_a"), py::arg("trans_b"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("threads") = 0,
        py::arg("isa") = "auto", "Number of C tiles _sgemm would hand to the thread pool (testing entry point)");
    m.def(
        "_gemm_isa",
        [](const std::string& isa) -> py::object {
            const Isa which = parse_gemm_isa(isa);
            if (static_cast<int>(which) > static_cast<int>(detected_isa())) return py::none();
            return py::str(isa_name(which));
        },
        py::arg("isa") = "auto",
        "Name of the kernel family `isa` selects here ('auto': the one st.get_isa() names), or None if this CPU "
        "cannot run it");
}

}  // namespace striate
