"""Tests for csrc/gemm.cpp: the packed SGEMM against a float64 NumPy oracle.

Covers every kernel family the CPU supports (AVX-512, AVX2+FMA, portable; the
conftest ``isa`` fixture runs each test once per family, with that path set
through ``st.set_isa``), all four transpose combinations, sizes on and around the micro-tile and block edges,
zero sizes, strided leading dimensions, alpha/beta, NaN in C with beta == 0,
bit-identical results for any thread count, and the argument errors. Not here:
speed (see benchmarks/bench_gemm.py).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from striate import _core


def make_operands(rng, m, n, k, trans_a, trans_b, pad=(0, 0, 0), c_fill=np.nan):
    """Flat buffers for op(A) (m x k), op(B) (k x n), C (m x n), with padded rows.

    The columns past the logical width are NaN canaries in A, B and C.
    """
    ra, ca = (k, m) if trans_a else (m, k)
    rb, cb = (n, k) if trans_b else (k, n)
    lda, ldb, ldc = ca + pad[0], cb + pad[1], n + pad[2]
    a = np.full((ra, lda), np.nan, np.float32)
    b = np.full((rb, ldb), np.nan, np.float32)
    c = np.full((m, ldc), np.nan, np.float32)
    a[:, :ca] = rng.uniform(-1, 1, (ra, ca))
    b[:, :cb] = rng.uniform(-1, 1, (rb, cb))
    c[:, :n] = c_fill if np.isscalar(c_fill) else c_fill
    return a, b, c, max(lda, 1), max(ldb, 1), max(ldc, 1)


def reference(a, b, c, m, n, k, trans_a, trans_b, alpha, beta):
    """alpha * op(A) op(B) + beta * C in float64, and the magnitude for the tolerance."""
    ra, ca = (k, m) if trans_a else (m, k)
    rb, cb = (n, k) if trans_b else (k, n)
    A = a[:ra, :ca].astype(np.float64)
    B = b[:rb, :cb].astype(np.float64)
    A, B = (A.T if trans_a else A), (B.T if trans_b else B)
    C0 = c[:m, :n].astype(np.float64)
    prod = A @ B
    mag = abs(alpha) * (np.abs(A) @ np.abs(B))
    if beta != 0:
        prod = alpha * prod + beta * C0
        mag = mag + abs(beta) * np.abs(C0)
    else:
        prod = alpha * prod
    return prod, mag


def check(m, n, k, trans_a, trans_b, *, alpha=1.0, beta=0.0, pad=(0, 0, 0), isa="auto", threads=1, seed=0):
    rng = np.random.default_rng(seed)
    c_fill = np.nan if beta == 0 else rng.uniform(-1, 1, (m, n))
    a, b, c, lda, ldb, ldc = make_operands(rng, m, n, k, trans_a, trans_b, pad, c_fill)
    ref, mag = reference(a, b, c, m, n, k, trans_a, trans_b, alpha, beta)
    out = c.copy()
    _core._sgemm(a, b, out, trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta, threads, isa)
    got = out[:, :n].astype(np.float64)
    tol = (1e-5 + 1e-4 * mag) * np.sqrt(max(k, 1))
    bad = ~(np.abs(got - ref) <= tol)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        pytest.fail(
            f"isa={isa} m={m} n={n} k={k} trans_a={trans_a} trans_b={trans_b} alpha={alpha} beta={beta} "
            f"pad={pad}: first bad C[{i}, {j}] = {got[i, j]!r}, expected {ref[i, j]!r} (tol {tol[i, j]:.3g})"
        )
    # The columns past n are canaries: never written.
    assert np.isnan(out[:, n:]).all(), "sgemm wrote past column n of C"
    return out


TRANS = list(itertools.product([False, True], repeat=2))

# Sizes on and around MR (4, 6, 14 and the balanced panels), NR (16, 32) and the
# depth block (256), plus 1.
EDGE_SHAPES = [
    (1, 1, 1),
    (1, 33, 7),
    (5, 1, 3),
    (6, 16, 25),
    (7, 17, 2),
    (13, 31, 64),
    (14, 32, 256),
    (15, 33, 257),
    (28, 64, 255),
    (29, 65, 513),
    (3, 100, 150),
    (40, 7, 30),
]


@pytest.mark.parametrize("trans_a,trans_b", TRANS)
@pytest.mark.parametrize("m,n,k", EDGE_SHAPES)
def test_matches_float64_reference(isa, trans_a, trans_b, m, n, k):
    check(m, n, k, trans_a, trans_b, isa=isa)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -0.75), (-2.0, 0.0), (1.0, 2.0), (0.0, 1.0)])
def test_alpha_beta(isa, alpha, beta):
    for trans_a, trans_b in TRANS:
        # 600 > two depth blocks, so beta is applied once and later blocks accumulate.
        check(23, 45, 600, trans_a, trans_b, alpha=alpha, beta=beta, isa=isa)
        check(50, 3, 9, trans_a, trans_b, alpha=alpha, beta=beta, isa=isa)


@pytest.mark.parametrize("trans_a,trans_b", TRANS)
def test_strided_leading_dimensions(isa, trans_a, trans_b):
    check(19, 37, 41, trans_a, trans_b, pad=(3, 5, 7), isa=isa)
    check(33, 5, 70, trans_a, trans_b, pad=(1, 2, 3), beta=0.5, isa=isa)


def test_nan_in_c_is_ignored_when_beta_is_zero(isa):
    out = check(30, 50, 20, False, False, beta=0.0, isa=isa)
    assert np.isfinite(out[:, :50]).all()


@pytest.mark.parametrize(
    "m,n,k,beta",
    [(0, 5, 3, 0.0), (4, 0, 3, 0.0), (0, 0, 0, 1.0), (4, 5, 0, 0.0), (4, 5, 0, 1.0), (4, 5, 0, -3.0)],
)
def test_zero_sizes(isa, m, n, k, beta):
    a = np.ones(max(m * k, 1), np.float32)
    b = np.ones(max(k * n, 1), np.float32)
    c0 = np.arange(max(m * n, 1), dtype=np.float32) if beta != 0 else np.full(max(m * n, 1), np.nan, np.float32)
    c = c0.copy()
    _core._sgemm(a, b, c, False, False, m, n, k, max(k, 1), max(n, 1), max(n, 1), 1.0, beta, 1, isa)
    if m * n == 0:
        np.testing.assert_array_equal(c, c0)  # nothing to write
    elif beta == 0:
        np.testing.assert_array_equal(c, np.zeros_like(c))  # K == 0 with beta 0 gives zeros, NaN or not
    else:
        np.testing.assert_array_equal(c, (beta * c0.astype(np.float64)).astype(np.float32))


def test_agrees_with_naive_oracle(isa):
    rng = np.random.default_rng(5)
    for trans_a, trans_b in TRANS:
        a, b, c, lda, ldb, ldc = make_operands(rng, 17, 35, 44, trans_a, trans_b, (2, 1, 3), 0.25)
        fast, slow = c.copy(), c.copy()
        _core._sgemm(a, b, fast, trans_a, trans_b, 17, 35, 44, lda, ldb, ldc, 1.5, 0.5, 1, isa)
        _core._sgemm_naive(a, b, slow, trans_a, trans_b, 17, 35, 44, lda, ldb, ldc, 1.5, 0.5)
        np.testing.assert_allclose(fast[:, :35], slow[:, :35], rtol=1e-5, atol=1e-5)
        assert np.isnan(fast[:, 35:]).all() and np.isnan(slow[:, 35:]).all()


# Shapes big enough to be split over threads, including a narrow N (computed transposed)
# and conv-like shapes.
THREAD_SHAPES = [(200, 300, 150), (500, 7, 300), (64, 784, 150), (16, 1024, 288), (300, 257, 513)]


@pytest.mark.parametrize("m,n,k", THREAD_SHAPES)
def test_bit_identical_for_any_thread_count(isa, m, n, k):
    rng = np.random.default_rng(7)
    for trans_a, trans_b in TRANS:
        a, b, c, lda, ldb, ldc = make_operands(rng, m, n, k, trans_a, trans_b, (0, 0, 0), 0.5)
        outs = []
        for threads in (1, 2, 3, 8):
            out = c.copy()
            _core._sgemm(a, b, out, trans_a, trans_b, m, n, k, lda, ldb, ldc, 0.75, 1.25, threads, isa)
            outs.append(out)
        for out in outs[1:]:
            np.testing.assert_array_equal(out, outs[0])


@pytest.mark.parametrize("trans_a,trans_b", TRANS)
def test_long_reduction_over_several_depth_blocks(isa, trans_a, trans_b):
    # K spans several depth blocks of every path (packed: 256, in-place dot: 2048).
    check(5, 7, 4100, trans_a, trans_b, alpha=0.5, beta=0.5, isa=isa)


@pytest.mark.parametrize("trans_a,trans_b", TRANS)
def test_default_thread_count_is_used_for_the_split(isa, trans_a, trans_b):
    # threads <= 0 means the global setting: the split must match an explicit count.
    shape = (64, 576, 256)
    assert _core._sgemm_task_count(trans_a, trans_b, *shape, threads=1, isa=isa) == 1
    two = _core._sgemm_task_count(trans_a, trans_b, *shape, threads=2, isa=isa)
    assert two >= 2
    _core.set_num_threads(2)
    assert _core._sgemm_task_count(trans_a, trans_b, *shape, threads=0, isa=isa) == two
    _core.set_num_threads(1)
    assert _core._sgemm_task_count(trans_a, trans_b, *shape, threads=0, isa=isa) == 1
    # Tiny calls stay on one thread; empty ones have nothing to split.
    assert _core._sgemm_task_count(trans_a, trans_b, 4, 4, 4, threads=8, isa=isa) == 1
    assert _core._sgemm_task_count(trans_a, trans_b, 0, 4, 4, threads=8, isa=isa) == 0


@pytest.mark.parametrize("trans_a,trans_b", TRANS)
@pytest.mark.parametrize("shape", [(64, 3136, 1024), (1024, 3136, 64)])
def test_large_calls_leave_tasks_for_a_slow_thread(isa, trans_a, trans_b, shape):
    # Past 2e7 flops the split has at least two tasks per thread, so a thread
    # that finishes early can take over the rest of a slow one's (one task
    # per thread would leave it idle).
    assert _core._sgemm_task_count(trans_a, trans_b, *shape, threads=2, isa=isa) >= 4
    assert _core._sgemm_task_count(trans_a, trans_b, *shape, threads=3, isa=isa) >= 6


def test_large_shapes_match_reference(isa):
    for trans_a, trans_b in TRANS:
        check(130, 540, 700, trans_a, trans_b, threads=2, beta=1.0)


def test_matmul_binding(rng, isa):
    a = rng.standard_normal((37, 60)).astype(np.float32)
    b = rng.standard_normal((60, 45)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(_core.matmul(a, b), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_core.matmul(a.T.copy(), b, trans_a=True), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_core.matmul(a, b.T.copy(), trans_b=True), ref, rtol=1e-4, atol=1e-4)
    # The fully-connected shape x @ W.T.
    x = rng.standard_normal((64, 400)).astype(np.float32)
    w = rng.standard_normal((120, 400)).astype(np.float32)
    np.testing.assert_allclose(
        _core.matmul(x, w, trans_b=True), x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-4, atol=2e-4
    )
    assert _core.matmul(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)).tolist() == [[0.0] * 4] * 3


def test_matmul_errors():
    with pytest.raises(ValueError, match="inner dimensions differ"):
        _core.matmul(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="`a` must have 2 dimensions, got 1"):
        _core.matmul(np.zeros(3, np.float32), np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError):
        _core.matmul(np.zeros((2, 3)), np.zeros((3, 5), np.float32))


def test_sgemm_argument_errors():
    a = np.zeros(12, np.float32)
    b = np.zeros(12, np.float32)
    c = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="`m`, `n`, `k` must be >= 0"):
        _core._sgemm(a, b, c, False, False, -1, 2, 2, 2, 2, 2)
    with pytest.raises(ValueError, match="`lda` must be >= 4, got 3"):
        _core._sgemm(a, b, c, False, False, 2, 2, 4, 3, 2, 2)
    with pytest.raises(ValueError, match="`b` must hold at least 16 floats, got 12"):
        _core._sgemm(a, b, c, False, False, 2, 4, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="`ldc` must be >= 3, got 2"):
        _core._sgemm(a, b, c, False, False, 2, 3, 2, 2, 3, 2)
    with pytest.raises(ValueError, match="`isa` must be one of"):
        _core._sgemm(a, b, c, False, False, 2, 2, 2, 2, 2, 2, isa="sse")
    with pytest.raises(ValueError, match="`isa` must be one of"):
        _core._gemm_isa("neon")
    assert _core._gemm_isa("generic") == "generic"
    assert _core._gemm_isa() in ("avx512", "avx2", "generic")


# (40, 1024, 3136): depth blocks of 242, not a multiple of 8 (a batch of one
# takes the unpacked one-row path, gemv_t, on avx512; on avx2 every depth of
# 128 and more takes the lane-interleaved order, blocks of 784 here);
# (300, 128, 4096) and (40, 21, 2048): rows a multiple of 4 KB apart (gemv_t's
# 8 rows with two depth blocks at a time), 21 with a partial group; (9, 37, 13)
# and (9, 33, 7): rows and columns past whole register blocks; (20, 40, 1029)
# and (9, 17, 131): lane-interleaved blocks of 515 and 131, whose first
# sub-blocks hold one depth more than the others; (100, 260, 5000): on avx512
# the dot route in two depth blocks of 2500 and row blocks of 80 + 20.
@pytest.mark.parametrize("m,n,k", [(200, 120, 400), (200, 10, 84), (300, 128, 4096), (130, 33, 1536), (70, 5, 64),
                                   (40, 1024, 3136), (40, 21, 2048), (9, 37, 13), (9, 33, 7), (20, 40, 1029),
                                   (9, 17, 131), (100, 260, 5000)])
@pytest.mark.parametrize("trans_b", [True, False])
def test_row_invariant_matmul_gives_each_row_its_lone_result(m, n, k, trans_b, isa):
    """row_invariant=True: every row of op(a) @ op(b) is bitwise what that row alone gives (batch independence)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    full = _core.matmul(a, b, False, trans_b, True)
    ref = a.astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    for rows in (1, 3, 17, 64, 65, m - 1):
        assert np.array_equal(full[:rows], _core.matmul(a[:rows], b, False, trans_b, True)), rows
    assert np.array_equal(full[m - 1 :], _core.matmul(a[m - 1 :], b, False, trans_b, True))


@pytest.mark.parametrize("m,n,k", [(64, 1024, 3136), (1, 1024, 3136), (37, 120, 400), (300, 50, 1029), (9, 33, 7),
                                   (100, 260, 5000)])
def test_row_invariant_bit_identical_for_any_thread_count(m, n, k, isa):
    """The fully-connected product (every route: dot, lane-interleaved, packed, one row) for 1, 2, 3 and 8 threads."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    outs = []
    for threads in (1, 2, 3, 8):
        out = c0.copy()
        _core._sgemm(a, b, out, False, True, m, n, k, k, k, n, alpha=0.75, beta=1.25, threads=threads,
                     row_invariant=True)
        outs.append(out)
    for out in outs[1:]:
        assert out.tobytes() == outs[0].tobytes()


@pytest.mark.parametrize("n,k", [(1024, 3136), (37, 13), (40, 600), (21, 1024)])
def test_row_invariant_keeps_zero_signs_of_a_lone_row(n, k, isa):
    """Rows of zeros (a ReLU's dead outputs) and of -0 through negative weights: the same bits alone and in a batch."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, k)).astype(np.float32)
    a[1] = 0.0
    a[3] = -0.0
    a[4, ::2] = 0.0
    b = -np.abs(rng.standard_normal((n, k))).astype(np.float32)
    full = _core.matmul(a, b, False, True, True)
    for i in range(6):
        assert np.array_equal(full[i].view(np.int32), _core.matmul(a[i : i + 1], b, False, True, True)[0].view(np.int32)), i


@pytest.mark.parametrize("n,k", [(1024, 3136), (37, 13), (40, 600), (21, 1024)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 1.0), (-1.5, 0.25)])
def test_row_invariant_single_row_merges_alpha_and_beta_as_the_packed_path(n, k, alpha, beta, isa):
    """A lone row of A B^T (the unpacked one-row path) scales and merges into C exactly as a row of a larger product."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    c0 = rng.standard_normal((9, n)).astype(np.float32)
    full = c0.copy()
    _core._sgemm(a, b, full, False, True, 9, n, k, k, k, n, alpha=alpha, beta=beta, row_invariant=True)
    ref = alpha * (a.astype(np.float64) @ b.T.astype(np.float64)) + beta * c0
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    for i in (0, 4, 8):
        one = c0[i].copy()
        _core._sgemm(a[i], b, one, False, True, 1, n, k, k, k, n, alpha=alpha, beta=beta, row_invariant=True)
        assert np.array_equal(one, full[i]), i
    with pytest.raises(ValueError, match="`isa` must be 'auto' with row_invariant=True"):
        _core._sgemm(a, b, full, False, True, 9, n, k, k, k, n, isa="generic", row_invariant=True)
