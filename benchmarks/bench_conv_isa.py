"""Benchmark striate's convolution on each ISA path side by side with PyTorch.

For the conv layers of ``bench_kernels.py`` and the shape families of real
CNNs (a 5x5 32->64 layer on 14x14, 1x1, stride 2, a 7x7 stride-2 stem, 8x8
and 7x7 planes), the one list of ``bench_layers.py``,
every ISA path the CPU supports (``--isa``, default all of avx512 and avx2 it
has) is first validated against ``striate.reference`` in float64, then
forward+backward (dx, dw, db) is timed for PyTorch and for striate on each
path. The calls are interleaved (one of each, round after round), so that the
load of a shared machine hits all of them alike; each cell is the median over
``--repeat`` rounds after a warm-up. Prints the CPU model, a markdown table of
ms and GFLOP/s per layer (``--stat``: median, or min) and the ratios PyTorch time / striate time, with
their geometric means.

Not a test: it sets no speed limits. Run it with numpy's BLAS overrides removed::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=python \\
        python3 benchmarks/bench_conv_isa.py --threads 2
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import striate as st
import striate.functional as F
import striate.reference as R
from striate import _core
from bench_kernels import _check
from bench_layers import CONVS, FAMILIES
from bench_machine import cpu_model

try:  # optional peer
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None


def layers():
    """(name, N, C, H, K, k, pad, stride) of every layer in ``bench_layers`` (the same list as bench_kernels)."""
    return [(c.name, c.N, c.C, c.H, c.K, c.k, c.pad, c.stride) for c in CONVS + FAMILIES]


def out_size(H, k, pad, stride):
    return (H + 2 * pad - k) // stride + 1


def reference(x, w, b, dy, pad, stride):
    """The float64 reference (y, dx, dw, db) of one layer, computed once for every ISA's check."""
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    y = R.conv2d(x64, w64, b.astype(np.float64), stride=stride, padding=pad)
    return (y, *R.conv2d_backward(dy64, x64, w64, stride=stride, padding=pad))


def validate(name, x, w, b, dy, pad, stride, ref):
    """Stop the run when striate's y, dx, dw or db on the current ISA is outside tolerance of ``ref``."""
    K, C, k, _ = w.shape
    OH = dy.shape[2]
    y = F.conv2d(x, w, b, stride=stride, padding=pad)
    _check(f"{name} y", y, ref[0], C * k * k + 1)
    got = F.conv2d_backward(dy, x, w, stride=stride, padding=pad)
    counts = (K * k * k, x.shape[0] * OH * OH, x.shape[0] * OH * OH)
    for gname, g, r, n in zip(("dx", "dw", "db"), got, ref[1:], counts):
        _check(f"{name} {gname}", g, r, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15, help="timed rounds per layer (median)")
    ap.add_argument("--isa", default=None, help="comma-separated ISA paths to time (default: avx512,avx2 as supported)")
    ap.add_argument("--only", default=None, help="substring: time only the layers whose name contains it")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="per-cell statistic over the rounds (min is less sensitive to a loaded machine)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or the process's CPU time over all its threads (insensitive to "
                         "other processes on a loaded machine; GFLOP/s are then per CPU-second)")
    args = ap.parse_args()

    order = ("generic", "avx2", "avx512")
    supported = order[: order.index(_core.detected_isa()) + 1]
    isas = args.isa.split(",") if args.isa else [i for i in ("avx512", "avx2") if i in supported]
    for i in isas:
        if i not in supported:
            raise SystemExit(f"--isa: this CPU has no {i!r} path (supported: {', '.join(supported)})")
    st.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    before = _core.get_isa()
    print(f"# conv fwd+bwd per ISA path; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"CPU: {cpu_model()}; threads {args.threads}; "
          f"torch {torch.__version__ if torch else 'absent'}; {args.stat} {args.clock} time of {args.repeat} interleaved rounds")
    head = ["layer", "PyTorch ms"] + [f"{i} ms" for i in isas] + [f"{i} GFLOP/s" for i in isas]
    head += [f"PyTorch/{i}" for i in isas]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    ratios = {i: [] for i in isas}
    try:
        for name, N, C, H, K, k, pad, stride in layers():
            if args.only and args.only not in name:
                continue
            rng = np.random.default_rng(0)
            OH = out_size(H, k, pad, stride)
            x = rng.standard_normal((N, C, H, H), dtype=np.float32)
            w = (rng.standard_normal((K, C, k, k)) / math.sqrt(C * k * k)).astype(np.float32)
            b = rng.standard_normal(K, dtype=np.float32)
            dy = rng.standard_normal((N, K, OH, OH), dtype=np.float32)
            ref = reference(x, w, b, dy, pad, stride)
            for i in isas:
                _core.set_isa(i)
                validate(f"{name} [{i}]", x, w, b, dy, pad, stride, ref)
            calls = {}
            for i in isas:
                def run(i=i):
                    _core.set_isa(i)
                    F.conv2d(x, w, b, stride=stride, padding=pad)
                    F.conv2d_backward(dy, x, w, stride=stride, padding=pad)
                calls[i] = run
            if torch is not None:
                tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))

                def t_run():
                    xx = tx.detach().requires_grad_(True)
                    ww, bb = tw.detach().requires_grad_(True), tb.detach().requires_grad_(True)
                    torch.nn.functional.conv2d(xx, ww, bb, stride=stride, padding=pad).backward(tdy)
                calls["pytorch"] = t_run
            times = {key: [] for key in calls}
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            for rnd in range(args.repeat + 2):
                for key, fn in calls.items():
                    t0 = clock()
                    fn()
                    if rnd >= 2:  # two warm-up rounds
                        times[key].append(clock() - t0)
            reduce_ = np.min if args.stat == "min" else np.median
            ms = {key: 1e3 * float(reduce_(v)) for key, v in times.items()}
            flops = 3 * 2.0 * N * K * OH * OH * C * k * k
            row = [name, f"{ms['pytorch']:.2f}" if "pytorch" in ms else "-"]
            row += [f"{ms[i]:.2f}" for i in isas]
            row += [f"{flops / ms[i] / 1e6:.0f}" for i in isas]
            for i in isas:
                if "pytorch" in ms:
                    ratios[i].append(ms["pytorch"] / ms[i])
                    row.append(f"{ms['pytorch'] / ms[i]:.2f}")
                else:
                    row.append("-")
            print("| " + " | ".join(row) + " |", flush=True)
    finally:
        _core.set_isa(before)
    for i in isas:
        if ratios[i]:
            gm = math.exp(sum(math.log(r) for r in ratios[i]) / len(ratios[i]))
            print(f"geometric mean PyTorch/{i}: {gm:.2f} over {len(ratios[i])} layers")


if __name__ == "__main__":
    main()
