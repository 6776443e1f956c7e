"""Benchmark striate's SGEMM against NumPy's matmul (OpenBLAS) on the shapes that matter.

Every shape is first validated against a float64 reference, then timed at 1
and 2 threads (median of repetitions after a warm-up), side by side with
numpy's matmul limited to the same number of BLAS threads. Prints a table of
GFLOP/s. Not a test: it asserts correctness but sets no speed limits.

Run it with the BLAS environment overrides removed, which slow OpenBLAS here::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=python python3 benchmarks/bench_gemm.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from striate import _core

# (label, M, N, K, trans_a, trans_b): C[M x N] = op(A)[M x K] op(B)[K x N].
SHAPES = [
    ("square 2048^3", 2048, 2048, 2048, False, False),
    ("square 1024^3", 1024, 1024, 1024, False, False),
    # conv forward per image: W[K_out x C*kh*kw] . cols[C*kh*kw x OH*OW]
    ("fwd LeNet C1 1->6 k5 28x28", 6, 784, 25, False, False),
    ("fwd LeNet C3 6->16 k5 10x10", 16, 100, 150, False, False),
    ("fwd 3->32 k3 32x32", 32, 1024, 27, False, False),
    ("fwd 32->32 k3 32x32", 32, 1024, 288, False, False),
    ("fwd 64->64 k3 16x16", 64, 256, 576, False, False),
    ("fwd 128->128 k3 16x16", 128, 256, 1152, False, False),
    # conv backward-weight: dY[K_out x OH*OW] . cols^T, per image and over a batch
    ("bwd-w 6->16 k5, batch 64", 16, 150, 64 * 100, False, True),
    ("bwd-w 32->32 k3 32x32", 32, 288, 1024, False, True),
    ("bwd-w 64->64 k3, batch 16", 64, 576, 16 * 256, False, True),
    ("bwd-w 128->128 k3 16x16", 128, 1152, 256, False, True),
    # conv backward-data: W^T . dY[K_out x OH*OW]
    ("bwd-d 6->16 k5 10x10", 150, 100, 16, True, False),
    ("bwd-d 32->32 k3 32x32", 288, 1024, 32, True, False),
    ("bwd-d 64->64 k3 16x16", 576, 256, 64, True, False),
    ("bwd-d 128->128 k3 16x16", 1152, 256, 128, True, False),
    # fully connected, batch 64: y = x W^T, dx = dy W, dW = dy^T x
    ("fc fwd 400->120", 64, 120, 400, False, True),
    ("fc fwd 4096->128", 64, 128, 4096, False, True),
    ("fc fwd 84->10", 64, 10, 84, False, True),
    ("fc dx 120->400", 64, 400, 120, False, False),
    ("fc dW 400->120", 120, 400, 64, True, False),
    ("fc dW 4096->128", 128, 4096, 64, True, False),
]


def operands(rng, m, n, k, trans_a, trans_b):
    a = rng.uniform(-1, 1, (k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b


def striate_sgemm(a, b, c, m, n, k, trans_a, trans_b, threads, isa):
    """The full BLAS-style entry point, used for validation."""
    _core._sgemm(a, b, c, trans_a, trans_b, m, n, k, a.shape[1], b.shape[1], n, 1.0, 0.0, threads, isa)


def striate_call(a, b, trans_a, trans_b):
    """Timed like numpy's matmul: one call from Python that allocates its output."""

    def run():
        _core.matmul(a, b, trans_a, trans_b)

    return run


def numpy_call(a, b, trans_a, trans_b):
    av = a.T if trans_a else a
    bv = b.T if trans_b else b

    def run():
        np.matmul(av, bv)

    return run


def validate(a, b, m, n, k, trans_a, trans_b, isa, label):
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    mag = np.abs(a.T if trans_a else a).astype(np.float64) @ np.abs(b.T if trans_b else b).astype(np.float64)
    tol = (1e-5 + 1e-4 * mag) * np.sqrt(k)
    for threads in (1, 2):
        c = np.full((m, n), np.nan, np.float32)
        striate_sgemm(a, b, c, m, n, k, trans_a, trans_b, threads, isa)
        if not (np.abs(c - ref) <= tol).all():
            raise SystemExit(f"validation failed for {label} at {threads} threads (isa {isa})")


def median_time(fn, budget, clock=time.perf_counter):
    fn()  # warm-up: packing buffers, thread pool, caches
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget and len(times) < 2000):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of timing per cell (default 0.3)")
    parser.add_argument("--filter", default="", help="only shapes whose label contains this text")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="'cpu' times the 1-thread columns with the calling thread's CPU time, which other "
        "processes on a shared machine disturb less (2-thread columns always use wall time)",
    )
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shapes = [s for s in SHAPES if args.filter in s[0]]
    print(f"striate sgemm kernels: {_core._gemm_isa()}; numpy {np.__version__}")
    header = (
        f"{'shape':30s} {'M':>5s} {'N':>5s} {'K':>6s} {'op':>3s} | {'1T striate':>10s} {'numpy':>7s} {'ratio':>5s}"
        f" | {'2T striate':>10s} {'numpy':>7s} {'ratio':>5s}"
    )
    print(f"GFLOP/s, median after warm-up; 1-thread columns timed with {args.clock} time")
    print(header)
    print("-" * len(header))
    for label, m, n, k, trans_a, trans_b in shapes:
        a, b = operands(rng, m, n, k, trans_a, trans_b)
        validate(a, b, m, n, k, trans_a, trans_b, "auto", label)
        flops = 2.0 * m * n * k
        cells = []
        for threads in (1, 2):
            clock = time.thread_time if (threads == 1 and args.clock == "cpu") else time.perf_counter
            _core.set_num_threads(threads)
            t_st = median_time(striate_call(a, b, trans_a, trans_b), args.budget, clock)
            with threadpool_limits(limits=threads, user_api="blas"):
                t_np = median_time(numpy_call(a, b, trans_a, trans_b), args.budget, clock)
            g_st, g_np = flops / t_st / 1e9, flops / t_np / 1e9
            cells.append(f"{g_st:10.1f} {g_np:7.1f} {g_st / g_np:5.2f}")
        op = ("T" if trans_a else "N") + ("T" if trans_b else "N")
        print(f"{label:30s} {m:5d} {n:5d} {k:6d} {op:>3s} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
