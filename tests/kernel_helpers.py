"""The one test helper for kernels: ``check_op`` runs an op of ``striate.functional``
forward and backward and checks every output and every gradient against
``striate.reference`` computed in float64 (guarantee 2).

Tolerance: ``|got - ref| <= (1e-5 + 1e-4 * |ref|) * sqrt(K)``, K the length of
the reduction that produced the value. Positions where the reference is NaN must
be NaN, and only those. Outputs are fresh arrays (no memory shared with any
input); before each call a NaN-filled block of the output's size is allocated
and freed, so that an output the kernel forgets to write is likely to show up
as NaN (a best-effort canary: fresh outputs cannot be pre-filled). A failure
names the op, the output, the first failing index, both values and the parameters.

Not here: timing, gradient checks by finite differences (test_reference.py),
error-input tests.
"""

from __future__ import annotations

import math

import numpy as np

import striate.functional as F
import striate.reference as R
from striate import _args

RTOL = 1e-4
ATOL = 1e-5


def _poison_heap(nbytes: int) -> None:
    """Allocate and free a NaN block of ``nbytes`` so the next allocation may reuse it."""
    if nbytes > 0:
        block = np.full(max(1, nbytes // 4), np.nan, dtype=np.float32)
        del block


def assert_close(got, ref, K, *, what: str, params: dict) -> None:
    """Compare a float32 result with its float64 reference; report the first failing index."""
    ctx = f"{what} ({params})"
    assert isinstance(got, np.ndarray), f"{ctx}: expected an ndarray, got {type(got).__name__}"
    assert got.dtype == np.float32, f"{ctx}: dtype {got.dtype}, expected float32"
    assert got.shape == ref.shape, f"{ctx}: shape {got.shape}, expected {ref.shape}"
    assert got.flags.c_contiguous, f"{ctx}: result is not C-contiguous"
    g = got.astype(np.float64)
    nan_ref, nan_got = np.isnan(ref), np.isnan(g)
    tol = (ATOL + RTOL * np.abs(np.where(nan_ref, 0.0, ref))) * math.sqrt(max(K, 1))
    with np.errstate(invalid="ignore"):
        ok = np.where(nan_ref, nan_got, (np.abs(g - ref) <= tol) | ((g == ref) & ~nan_got))
    if not ok.all():
        idx = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise AssertionError(
            f"{ctx}: {int((~ok).sum())} of {ok.size} values differ; first at index {idx}: "
            f"got {got[idx]!r}, reference {ref[idx]!r}, tolerance {tol[idx]:.3g} (K={K})"
        )


def _assert_fresh(outs: dict, inputs: dict, what: str, params: dict) -> None:
    for oname, o in outs.items():
        if o is None:
            continue
        for iname, a in inputs.items():
            if a is not None and np.shares_memory(o, a):
                raise AssertionError(f"{what}: `{oname}` shares memory with input `{iname}` ({params})")


# --------------------------------------------------------------------------- per-op plumbing


def _conv_sizes(x, w, params):
    s = _args.conv_spec(
        x.shape, w.shape, None, params.get("stride", 1), params.get("padding", 0),
        params.get("dilation", 1), params.get("groups", 1),
    )
    per_group_k = s.K // s.groups
    return {"y": s.C // s.groups * s.kh * s.kw + 1, "x": per_group_k * s.kh * s.kw,
            "weight": s.N * s.OH * s.OW, "bias": s.N * s.OH * s.OW}


def _window(params):
    k = params["kernel_size"]
    kh, kw = (k, k) if isinstance(k, int) else k
    return kh * kw


def _forward(mod, op, a, p):
    """Run the forward of ``op`` from module ``mod``: a dict of outputs."""
    if op == "conv2d":
        return {"y": mod.conv2d(a["x"], a["weight"], a.get("bias"), **p)}
    if op == "linear":
        return {"y": mod.linear(a["x"], a["weight"], a.get("bias"))}
    if op == "max_pool2d":
        y, idx = mod.max_pool2d(a["x"], **p)
        return {"y": y, "indices": idx}
    if op == "avg_pool2d":
        return {"y": mod.avg_pool2d(a["x"], **p)}
    if op == "lp_pool2d":
        return {"y": mod.lp_pool2d(a["x"], **p)}
    if op == "adaptive_avg_pool2d":
        return {"y": mod.adaptive_avg_pool2d(a["x"], **p)}
    raise KeyError(op)


def _backward(mod, op, dy, a, out, p, needs):
    """Run the backward of ``op``: a dict gradient name -> array (or None)."""
    if op == "conv2d":
        dx, dw, db = mod.conv2d_backward(dy, a["x"], a["weight"], needs=needs, **p)
        return {"x": dx, "weight": dw, "bias": db}
    if op == "linear":
        dx, dw, db = mod.linear_backward(dy, a["x"], a["weight"], needs=needs)
        return {"x": dx, "weight": dw, "bias": db}
    if op == "max_pool2d":
        return {"x": mod.max_pool2d_backward(dy, out["indices"], a["x"].shape)}
    if op == "avg_pool2d":
        return {"x": mod.avg_pool2d_backward(dy, a["x"].shape, **p)}
    if op == "lp_pool2d":
        q = dict(p)
        norm = q.pop("norm_type")
        return {"x": mod.lp_pool2d_backward(dy, a["x"], out["y"], norm, **q)}
    if op == "adaptive_avg_pool2d":
        return {"x": mod.adaptive_avg_pool2d_backward(dy, a["x"].shape, **p)}
    raise KeyError(op)


def _reduction_lengths(op, a, p, y_shape):
    if op == "conv2d":
        return _conv_sizes(a["x"], a["weight"], p)
    if op == "linear":
        n, fin = a["x"].shape
        return {"y": fin + 1, "x": a["weight"].shape[0], "weight": n, "bias": n}
    if op == "max_pool2d":
        return {"y": 1, "x": _window(p)}
    if op in ("avg_pool2d", "lp_pool2d"):
        return {"y": _window(p), "x": _window(p)}
    if op == "adaptive_avg_pool2d":
        H, W = a["x"].shape[2:]
        oh, ow = y_shape[2:]
        area = (-(-H // oh) + 1) * (-(-W // ow) + 1)
        return {"y": area, "x": area}
    raise KeyError(op)


def check_op(op, inputs, params=None, *, rng, needs=("x", "weight", "bias"), dy=None):
    """Check forward and every gradient of ``striate.functional.<op>`` against float64 reference.

    Parameters
    ----------
    op : str
        "conv2d", "linear", "max_pool2d", "avg_pool2d", "lp_pool2d" or "adaptive_avg_pool2d".
    inputs : dict
        float32 arrays: ``x`` and, for conv2d/linear, ``weight`` and optionally ``bias``.
    params : dict
        The op's keyword arguments (``norm_type`` included for lp_pool2d).
    rng : numpy.random.Generator
        Draws ``dy`` when it is not given.
    needs : tuple
        Gradients requested from conv2d/linear backward.

    Returns
    -------
    dict with the functional results: ``out`` (forward outputs), ``dy`` and ``grads``.
    """
    p = dict(params or {})
    label = {"op": op, **p, **{k: v.shape for k, v in inputs.items() if v is not None}}
    a64 = {k: None if v is None else v.astype(np.float64) for k, v in inputs.items()}

    ref = _forward(R, op, a64, p)
    _poison_heap(ref["y"].size * 4)
    out = _forward(F, op, inputs, p)
    _assert_fresh(out, inputs, f"{op} forward", label)
    K = _reduction_lengths(op, inputs, p, ref["y"].shape)
    assert_close(out["y"], ref["y"], K["y"], what=f"{op} forward y", params=label)
    if "indices" in ref:
        idx = out["indices"]
        assert idx.dtype == np.int64 and idx.shape == ref["indices"].shape, f"{op} indices {idx.dtype} {idx.shape}"
        bad = idx != ref["indices"]
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"{op} indices differ at {first}: got {idx[first]}, reference {ref['indices'][first]} ({label})"
            )

    if dy is None:
        dy = rng.standard_normal(ref["y"].shape).astype(np.float32)
    rgrads = _backward(R, op, dy.astype(np.float64), a64, ref, p, needs)
    _poison_heap(inputs["x"].size * 4)
    grads = _backward(F, op, dy, inputs, out, p, needs)
    _assert_fresh(grads, {**inputs, "dy": dy, **out}, f"{op} backward", label)
    for name, g in grads.items():
        if rgrads[name] is None:
            assert g is None, f"{op}: gradient `{name}` was not requested but returned ({label})"
            continue
        assert_close(g, rgrads[name], K[name], what=f"{op} d{name}", params=label)
    return {"out": out, "dy": dy, "grads": grads}
