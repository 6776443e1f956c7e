"""Tests of the ISA switch: ``st.set_isa`` / ``st.get_isa``, ``STRIATE_ISA``, and
how results compare across the instruction-set paths.

What holds today, on the kernels of csrc/gemm.cpp, pool2d.cpp and augment.cpp
(each path is separately bit-identical for every thread count, which the
kernel tests check under the ``isa`` fixture):

- pooling (max, avg, lp, adaptive; forward and backward), flip, crop,
  grayscale and the random stream give the same bits on every path;
- the affine warp gives the same bits on avx2 and avx512; generic differs in
  the last bits (the AVX copies fuse the interpolation's multiply-add);
- gemm gives the same bits on avx2 and avx512 on its packed path and on its
  dot path for A B^T (16 partial sums per element, then a fixed tree), which
  both take for up to 4 rows of A; from 5 to 64 rows only avx512 takes the dot
  path, so those A B^T shapes differ between the two, as does the
  fully-connected ``row_invariant`` product (dot on avx512, the packed path
  over a lane-interleaved depth on avx2).
  generic differs everywhere (separate multiply and add instead of FMA).

Where the bits differ, the paths still agree within the kernel tolerances.
Not here: the per-kernel correctness tests, which run under every path
through the conftest ``isa`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from isa_paths import ALL_ISAS, SUPPORTED_ISAS

import striate as st
import striate.functional as F
from striate import _config, _core

PYTHON_DIR = Path(st.__file__).resolve().parent.parent
AVX_PATHS = [i for i in SUPPORTED_ISAS if i != "generic"]


def _run_python(code, **env):
    """Run ``code`` in a fresh interpreter that imports this striate; returns the CompletedProcess."""
    full = {k: v for k, v in os.environ.items() if k != "STRIATE_ISA"}
    full["PYTHONPATH"] = os.pathsep.join([str(PYTHON_DIR), full.get("PYTHONPATH", "")])
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


class _NarrowCpu:
    """The real _core, except that the CPU claims ``widest`` as its widest path."""

    def __init__(self, widest):
        self._widest = widest

    def detected_isa(self):
        return self._widest

    def __getattr__(self, name):
        return getattr(_core, name)


# --------------------------------------------------------------------------- the switch


def test_default_is_the_widest_supported_path():
    r = _run_python("import striate as st; from striate import _core; print(st.get_isa(), _core.detected_isa())")
    assert r.returncode == 0, r.stderr
    got, detected = r.stdout.split()
    assert got == detected == SUPPORTED_ISAS[-1]


@pytest.mark.parametrize("name", SUPPORTED_ISAS)
def test_set_isa_round_trips(name):
    st.set_isa(name)
    assert st.get_isa() == name
    assert _core.get_isa() == name


def test_set_isa_is_exported_and_documented():
    assert st.set_isa is _config.set_isa and st.get_isa is _config.get_isa
    assert "set_isa" in st.__all__ and "get_isa" in st.__all__
    assert "avx512" in st.set_isa.__doc__ and "generic" in st.set_isa.__doc__


@pytest.mark.parametrize("bad", [None, 2, b"avx2", ["avx2"]])
def test_set_isa_rejects_non_str(bad):
    before = st.get_isa()
    with pytest.raises(TypeError, match="`isa` must be a str"):
        st.set_isa(bad)
    assert st.get_isa() == before


@pytest.mark.parametrize("bad", ["sse", "AVX2", "avx-512", "", "auto"])
def test_set_isa_rejects_unknown_names(bad):
    before = st.get_isa()
    with pytest.raises(ValueError, match=r"`isa` must be one of 'avx512', 'avx2', 'generic'"):
        st.set_isa(bad)
    assert st.get_isa() == before


@pytest.mark.parametrize("widest", ["generic", "avx2"])
def test_set_isa_rejects_a_path_wider_than_the_cpu(monkeypatch, widest):
    monkeypatch.setattr(_config, "_core", _NarrowCpu(widest))
    before = st.get_isa()
    for name in ALL_ISAS[ALL_ISAS.index(widest) + 1:]:
        with pytest.raises(ValueError, match=rf"`isa` '{name}' is not supported by this CPU "
                                             rf"\(widest supported: '{widest}'\)"):
            st.set_isa(name)
    assert st.get_isa() == before


def test_core_refuses_a_path_wider_than_the_cpu():
    wider = ALL_ISAS[len(SUPPORTED_ISAS):]
    if not wider:
        pytest.skip("this CPU runs every path")
    with pytest.raises(ValueError, match="widest supported"):
        _core.set_isa(wider[0])


@pytest.mark.parametrize("name", SUPPORTED_ISAS)
def test_environment_variable_sets_the_path(name):
    r = _run_python("import striate as st; print(st.get_isa())", STRIATE_ISA=name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name


@pytest.mark.parametrize("bad", ["sse4", "AVX512", "auto"])
def test_environment_variable_unknown_value_fails_at_import(bad):
    r = _run_python("import striate", STRIATE_ISA=bad)
    assert r.returncode != 0
    assert "ValueError: environment variable STRIATE_ISA must be one of" in r.stderr
    assert repr(bad) in r.stderr


@pytest.mark.parametrize("widest", ["generic", "avx2"])
def test_environment_variable_wider_than_the_cpu_fails(monkeypatch, widest):
    """The import-time check, run in-process on a CPU that claims a narrower widest path."""
    monkeypatch.setattr(_config, "_core", _NarrowCpu(widest))
    for name in ALL_ISAS[ALL_ISAS.index(widest) + 1:]:
        monkeypatch.setenv("STRIATE_ISA", name)
        with pytest.raises(ValueError, match=rf"environment variable STRIATE_ISA '{name}' is not supported "
                                             rf"by this CPU \(widest supported: '{widest}'\)"):
            _config._init_from_env()


def test_environment_variable_wider_than_the_cpu_fails_in_a_fresh_process():
    wider = ALL_ISAS[len(SUPPORTED_ISAS):]
    if not wider:
        pytest.skip("this CPU runs every path; covered in-process above")
    r = _run_python("import striate", STRIATE_ISA=wider[0])
    assert r.returncode != 0 and "STRIATE_ISA" in r.stderr and "widest supported" in r.stderr


def test_gemm_auto_follows_the_switch(isa, rng):
    """'auto' in the gemm test hooks is the path st.set_isa chose, bit for bit."""
    assert _core._gemm_isa() == isa
    for m, n, k, ta, tb in [(37, 45, 130, False, False), (20, 33, 300, False, True), (70, 9, 64, True, True)]:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        auto, forced = np.zeros((m, n), np.float32), np.zeros((m, n), np.float32)
        args = (ta, tb, m, n, k, a.shape[1], b.shape[1], n, 1.0, 0.0, 1)
        _core._sgemm(a, b, auto, *args, "auto")
        _core._sgemm(a, b, forced, *args, isa)
        assert auto.tobytes() == forced.tobytes()
        assert _core.matmul(a, b, ta, tb).tobytes() == forced.tobytes()


# --------------------------------------------------------------------------- across paths


def _per_isa(compute):
    """{isa: list of result arrays} for every supported path."""
    out = {}
    for name in SUPPORTED_ISAS:
        st.set_isa(name)
        out[name] = [np.asarray(a) for a in compute()]
    return out


def _same_bits(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_pooling_is_bit_identical_across_paths(rng):
    x = _f32(rng, 3, 5, 19, 22)
    x.reshape(-1)[::11] = np.nan
    xp = np.abs(_f32(rng, 3, 5, 19, 22)) + 0.1

    def compute():
        res = []
        for args in [(2,), (3, 2, 1), (3, 2, 1, 2, True)]:
            y, idx = F.max_pool2d(x, *args)
            res += [y, idx, F.max_pool2d_backward(np.ones_like(y), idx, x.shape)]
        for args in [(2,), (3, 2, 1)]:
            y = F.avg_pool2d(x, *args)
            res += [y, F.avg_pool2d_backward(np.ones_like(y), x.shape, *args)]
        y = F.lp_pool2d(xp, 2, 3, 2)
        res += [y, F.lp_pool2d_backward(np.ones_like(y), xp, y, 2, 3, 2)]
        y = F.adaptive_avg_pool2d(x, (4, 7))
        res += [y, F.adaptive_avg_pool2d_backward(np.ones_like(y), x.shape, (4, 7))]
        return res

    results = _per_isa(compute)
    for name in SUPPORTED_ISAS[1:]:
        assert _same_bits(results["generic"], results[name]), f"pooling differs between generic and {name}"


def _augment_calls(x):
    n = x.shape[0]
    angle, tx = np.linspace(-50, 50, n), np.linspace(-2.5, 2.5, n)
    ty, scale = np.linspace(1.5, -1, n), np.linspace(0.8, 1.3, n)
    return {
        "affine": lambda: [_core.augment_affine(x, angle, tx, ty, scale, 0.25)],
        "others": lambda: [
            _core.augment_hflip(x, (np.arange(n) % 2).astype(np.uint8)),
            _core.augment_crop(x, np.arange(n, dtype=np.int64) % 3, np.arange(n, dtype=np.int64) % 2, 9, 8, 1, 0.5),
            _core.augment_grayscale(np.ascontiguousarray(x[:, :3]), 3),
            _core.augment_uniform(7, 3, n, 5),
        ],
    }


def test_augment_across_paths(rng):
    x = _f32(rng, 6, 3, 13, 11)
    calls = _augment_calls(x)
    others = _per_isa(calls["others"])
    for name in SUPPORTED_ISAS[1:]:
        assert _same_bits(others["generic"], others[name]), f"flip/crop/grayscale/uniform differ on {name}"
    affine = _per_isa(calls["affine"])
    for name in AVX_PATHS[1:]:
        assert _same_bits(affine[AVX_PATHS[0]], affine[name]), f"affine differs between {AVX_PATHS[0]} and {name}"
    for name in AVX_PATHS:
        np.testing.assert_allclose(affine[name][0], affine["generic"][0], rtol=1e-5, atol=1e-5)


GEMM_PACKED = [(64, 80, 300, False, False), (5, 300, 40, True, False), (100, 100, 2000, True, True),
               (200, 50, 300, False, True), (7, 3, 9, False, False)]
GEMM_DOT = [(33, 70, 129, False, True), (64, 80, 300, False, True)]  # A B^T, dot path on avx512 only
# A B^T with at most 4 rows: the dot path on both AVX paths; depth tails of
# 0..15, one longer than a depth block (2048), widths around the 2 x 3 and 4 x 6 tiles.
GEMM_DOT_BOTH = [(1, 1, 1), (1, 7, 5), (2, 13, 12), (3, 6, 16), (4, 19, 17), (4, 25, 33), (1, 1000, 3136),
                 (3, 5, 2049), (4, 64, 200)]


@pytest.mark.parametrize("m,n,k,ta,tb", GEMM_PACKED + GEMM_DOT)
def test_gemm_across_paths(m, n, k, ta, tb, rng):
    a = _f32(rng, *((k, m) if ta else (m, k)))
    b = _f32(rng, *((n, k) if tb else (k, n)))
    results = _per_isa(lambda: [_core.matmul(a, b, ta, tb), _core.matmul(a, b, ta, tb, True)])
    ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    tol = (1e-5 + 1e-4 * np.abs(ref)) * np.sqrt(k)
    for name, (plain, row_inv) in results.items():
        assert np.all(np.abs(plain - ref) <= tol) and np.all(np.abs(row_inv - ref) <= tol), name
    if (m, n, k, ta, tb) in GEMM_PACKED and len(AVX_PATHS) == 2:
        # The packed path accumulates each element in the same FMA order on both
        # AVX paths, and merges alpha * acc into C with the same roundings.
        assert results["avx2"][0].tobytes() == results["avx512"][0].tobytes()
        c0 = _f32(rng, m, n)
        merged = {}
        for name in AVX_PATHS:
            st.set_isa(name)
            c = c0.copy()
            _core._sgemm(a, b, c, ta, tb, m, n, k, a.shape[1], b.shape[1], n, 0.75, 0.5, 0, "auto")
            merged[name] = c.tobytes()
        assert merged["avx2"] == merged["avx512"]


@pytest.mark.parametrize("m,n,k", GEMM_DOT_BOTH)
def test_gemm_dot_path_is_bit_identical_on_both_avx_paths(m, n, k, rng):
    if len(AVX_PATHS) < 2:
        pytest.skip("needs both AVX paths")
    a, b = _f32(rng, m, k), _f32(rng, n, k)
    a.reshape(-1)[::13] = -0.0
    c0 = _f32(rng, m, n)
    results = {}
    for name in AVX_PATHS:
        st.set_isa(name)
        c = c0.copy()
        _core._sgemm(a, b, c, False, True, m, n, k, k, k, n, 0.75, 0.5, 0, "auto")
        results[name] = c
    ref = 0.75 * (a.astype(np.float64) @ b.astype(np.float64).T) + 0.5 * c0
    assert np.all(np.abs(results["avx2"] - ref) <= (1e-5 + 1e-4 * np.abs(ref)) * np.sqrt(k + 1))
    assert results["avx2"].tobytes() == results["avx512"].tobytes()


@pytest.mark.parametrize("m,n,k", [(4, 1024, 300), (2, 2000, 700), (3, 4097, 96)])
def test_gemm_dot_path_is_bit_identical_for_any_thread_count(isa, m, n, k, rng):
    a, b = _f32(rng, m, k), _f32(rng, n, k)
    outs = []
    for threads in (1, 2, 3):
        c = np.full((m, n), 0.5, np.float32)
        _core._sgemm(a, b, c, False, True, m, n, k, k, k, n, 1.0, 1.0, threads, "auto")
        outs.append(c.tobytes())
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("m,n,k", [(1, 5, 7), (2, 9, 23), (4, 14, 40), (3, 7, 2049)])
def test_gemm_dot_path_reads_only_the_logical_operands(isa, m, n, k, rng):
    """Strided A and B whose padding holds NaN: the dot kernels' tails must not read it."""
    lda, ldb, ldc = k + 3, k + 5, n + 2
    a = np.full((m, lda), np.nan, np.float32)
    b = np.full((n, ldb), np.nan, np.float32)
    a[:, :k], b[:, :k] = _f32(rng, m, k), _f32(rng, n, k)
    c = np.full((m, ldc), np.nan, np.float32)
    c[:, :n] = _f32(rng, m, n)
    ref = 1.5 * (a[:, :k].astype(np.float64) @ b[:, :k].astype(np.float64).T) - 0.5 * c[:, :n]
    _core._sgemm(a, b, c, False, True, m, n, k, lda, ldb, ldc, 1.5, -0.5, 0, "auto")
    assert np.isnan(c[:, n:]).all()
    assert np.all(np.abs(c[:, :n] - ref) <= (1e-5 + 1e-4 * np.abs(ref)) * np.sqrt(k + 1))
