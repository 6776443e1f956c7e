"""Convolution on awkward shapes: batch 1, 7x7 inputs, 5 channels, 1x1 kernels, stride 2.

    python benchmarks/bench_odd_shapes.py [--threads 2] [--repeat 51]

Each case is validated against striate.reference (float64), then forward +
backward (dx, dw, db) is timed for striate and, when importable, PyTorch with
the same thread count. Prints a markdown table of medians and the ratio
PyTorch / striate (above 1 means striate is faster).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import striate as st
from striate import functional as F
from striate import reference as R

# (label, N, C, H, W, K, k, stride, padding)
CASES = [
    ("batch 1, 32->32 k3 p1 32x32", 1, 32, 32, 32, 32, 3, 1, 1),
    ("7x7 input, 64->64 k3 p1", 64, 64, 7, 7, 64, 3, 1, 1),
    ("5 channels, 5->7 k3 p1 28x28", 64, 5, 28, 28, 7, 3, 1, 1),
    ("1x1 kernel, 64->128 16x16", 64, 64, 16, 16, 128, 1, 1, 0),
    ("stride 2, 32->64 k3 p1 32x32", 64, 32, 32, 32, 64, 3, 2, 1),
]


def median_ms(fn, repeat):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=51)
    args = ap.parse_args(argv)
    st.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    rows = []
    for label, n, c, h, w, k, ks, s, p in CASES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (rng.standard_normal((k, c, ks, ks)) / np.sqrt(c * ks * ks)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        y = F.conv2d(x, wt, b, stride=s, padding=p)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        got = (y,) + F.conv2d_backward(dy, x, wt, stride=s, padding=p)
        x64, w64, dy64 = (a.astype(np.float64) for a in (x, wt, dy))
        want = (R.conv2d(x64, w64, b.astype(np.float64), stride=s, padding=p),) + R.conv2d_backward(
            dy64, x64, w64, stride=s, padding=p
        )
        for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
            tol = (1e-5 + 1e-4 * np.abs(r)) * np.sqrt(max(c * ks * ks, n * y.shape[2] * y.shape[3]))
            if not np.all(np.abs(g - r) <= tol):
                raise SystemExit(f"{label}: {name} does not match the reference")

        def run_st():
            F.conv2d(x, wt, b, stride=s, padding=p)
            F.conv2d_backward(dy, x, wt, stride=s, padding=p)

        t_st = median_ms(run_st, args.repeat)
        t_pt = None
        if torch is not None:
            xt = torch.from_numpy(x).requires_grad_(True)
            wtt = torch.from_numpy(wt).requires_grad_(True)
            bt = torch.from_numpy(b).requires_grad_(True)
            dyt = torch.from_numpy(dy)

            def run_pt():
                out = torch.nn.functional.conv2d(xt, wtt, bt, stride=s, padding=p)
                out.backward(dyt)

            t_pt = median_ms(run_pt, args.repeat)
        rows.append((label, t_st, t_pt))
    print(f"threads={args.threads}, repeat={args.repeat}; forward + backward (dx, dw, db), validated first\n")
    print("| case | striate ms | PyTorch ms | PyTorch/striate |\n|---|---|---|---|")
    for label, t_st, t_pt in rows:
        pt = "-" if t_pt is None else f"{t_pt:.3f}"
        ratio = "-" if t_pt is None else f"{t_pt / t_st:.2f}"
        print(f"| {label} | {t_st:.3f} | {pt} | {ratio} |")


if __name__ == "__main__":
    main()
