"""Benchmark striate's conv and pooling kernels against the NumPy reference and PyTorch.

Two tables: the six convolution layers of docs/performance.md with the
pooling cases (max-pool on 32x32 and 28x28 planes, average pooling on
28x28), and the shape families of real CNNs (5x5 32->64 on 14x14,
3x3 stride 2, 1x1, a 7x7 stride-2 stem, 128->128 on 8x8 and 7x7 planes);
``--shapes`` picks one or both. The layer list lives in ``bench_layers.py``,
shared with ``bench_conv_isa.py``. Every variant is first validated against
``striate.reference`` in float64 (forward and every gradient, tolerance
(1e-5 + 1e-4*|ref|)*sqrt(K)); then forward and forward+backward (dx, dw, db;
a first layer also without dx) are timed for striate (C++), the float32
NumPy reference and PyTorch when it is importable, all at the same thread
count (threadpoolctl for numpy's BLAS, ``torch.set_num_threads`` for
PyTorch). striate and PyTorch are timed side by side in ``--repeat``
rounds after a warm-up (fewer, but at least 3, when the rounds pass
``--budget`` seconds per implementation): each round calls each once
untimed and once timed, in an order that rotates round by round, so a slow
spell of the shared machine reaches both. The reference runs in rounds of
its own (NumPy's BLAS threads spin long after a call). Prints markdown
tables of the median ms and GFLOP/s, the ratios PyTorch/striate (the median
over rounds of each round's ratio) and reference/striate, their geometric
means (per table and over all conv layers), and the 1 -> 2 thread scaling of striate
on the three largest layers, timed the same way with the thread count
switched call by call. The header names the CPU (from /proc/cpuinfo) and the ISA path
striate's kernels take; ``--isa avx2`` (or ``avx512``, ``generic``) sets it
before anything runs. PyTorch takes its widest kernels; to hold it to AVX2, as
on a CPU without AVX-512, set ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``
in the environment (the summary line names the path PyTorch ran).

Not a test: it refuses to time a kernel that fails validation, but sets no
speed limits. Run it with numpy's BLAS overrides removed::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=python \\
        python3 benchmarks/bench_kernels.py --threads 2 [--isa avx2] --json bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import numpy as np
from threadpoolctl import threadpool_limits

import striate as st
import striate.functional as F
import striate.reference as R
from bench_layers import CONVS, FAMILIES, SHAPE_SETS, Conv
from bench_machine import add_isa_argument, apply_isa, cpu_model, header

try:  # optional peer
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None


# Pooling 2x2 / 2: (kind, input shape). 28x28 planes (the TF-tutorial CNN's
# first pool) end each output row in a partial vector.
POOLS = (("max", (64, 32, 32, 32)), ("max", (64, 32, 28, 28)), ("avg", (64, 32, 28, 28)))


# --------------------------------------------------------------------------- validation


def _check(name, got, ref, K):
    """Raise when float32 ``got`` is outside the sqrt(K)-scaled tolerance around float64 ``ref``."""
    got = np.asarray(got, dtype=np.float64)
    tol = (1e-5 + 1e-4 * np.abs(ref)) * math.sqrt(K)
    bad = ~(np.abs(got - ref) <= tol)
    if got.shape != ref.shape or bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0]) if got.shape == ref.shape else "shape"
        raise SystemExit(f"validation failed: {name} at {idx}: got {got.shape}, reference {ref.shape}")


def validate_conv(c: Conv, x, w, b, dy):
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    kw = {"stride": c.stride, "padding": c.pad}
    _check(f"{c.name} y", F.conv2d(x, w, b, **kw), R.conv2d(x64, w64, b.astype(np.float64), **kw),
           c.C * c.k * c.k + 1)
    ref = R.conv2d_backward(dy64, x64, w64, **kw)
    got = F.conv2d_backward(dy, x, w, **kw)
    for gname, g, r, K in zip(("dx", "dw", "db"), got, ref, (c.K * c.k * c.k, c.N * c.out**2, c.N * c.out**2)):
        _check(f"{c.name} {gname}", g, r, K)
    nodx = F.conv2d_backward(dy, x, w, **kw, needs=("weight", "bias"))
    if nodx[0] is not None:
        raise SystemExit(f"validation failed: {c.name}: dx returned though not needed")
    _check(f"{c.name} dw (no dx)", nodx[1], ref[1], c.N * c.out**2)


def validate_pool(kind, x, dy):
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    if kind == "avg":
        _check("avg-pool y", F.avg_pool2d(x, 2), R.avg_pool2d(x64, 2), 4)
        _check("avg-pool dx", F.avg_pool2d_backward(dy, x.shape, 2), R.avg_pool2d_backward(dy64, x.shape, 2), 4)
        return
    y, idx = F.max_pool2d(x, 2)
    yr, ir = R.max_pool2d(x64, 2)
    _check("max-pool y", y, yr, 1)
    if not np.array_equal(idx, ir):
        raise SystemExit("validation failed: max-pool indices differ from the reference")
    _check("max-pool dx", F.max_pool2d_backward(dy, idx, x.shape), R.max_pool2d_backward(dy64, ir, x.shape), 1)


# --------------------------------------------------------------------------- timing


def paired_ms(fns, repeat: int, budget_s: float = 3.0, warmup: int = 2):
    """Time the callables of ``fns`` (name -> callable or None) side by side.

    Each round calls every one once untimed, then once timed, in an order
    that rotates from round to round: a slow spell of a shared machine hits
    all of them, and the untimed call lets the previous library's worker
    threads go quiet before the timed one. Returns ``(ms, over_first)``: the
    median ms of each, and the median over rounds of each one's time divided
    by the first one's time in the same round. At least 3 rounds; fewer than
    ``repeat`` when the rounds pass ``budget_s`` seconds per callable.
    """
    names = [n for n, f in fns.items() if f is not None]
    for n in names:
        for _ in range(warmup):
            fns[n]()
    times = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(repeat):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            fns[n]()
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget_s * len(names):
            break
    first = np.array(times[names[0]])
    ms = {n: 1e3 * float(np.median(v)) for n, v in times.items()}
    return ms, {n: float(np.median(np.array(v) / first)) for n, v in times.items()}


def conv_variants(c: Conv, x, w, b, dy):
    """{(impl, kind): callable} for kind in fwd, fwd+bwd, fwd+bwd (no dx)."""
    p, sd = c.pad, c.stride
    out = {}
    for impl, mod in (("striate", F), ("reference", R)):
        def fwd(mod=mod):
            return mod.conv2d(x, w, b, stride=sd, padding=p)

        def fwd_bwd(mod=mod, needs=("x", "weight", "bias")):
            return fwd(mod), mod.conv2d_backward(dy, x, w, stride=sd, padding=p, needs=needs)

        out[(impl, "fwd")] = fwd
        out[(impl, "fwd+bwd")] = fwd_bwd
        if c.first:
            out[(impl, "fwd+bwd no dx")] = lambda fb=fwd_bwd: fb(needs=("weight", "bias"))
    if torch is not None:
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        tconv = torch.nn.functional.conv2d

        def t_fwd():
            with torch.no_grad():
                return tconv(tx, tw, tb, stride=sd, padding=p)

        def t_bwd(need_dx):
            xx = tx.detach().requires_grad_(need_dx)
            ww, bb = tw.detach().requires_grad_(True), tb.detach().requires_grad_(True)
            tconv(xx, ww, bb, stride=sd, padding=p).backward(tdy)

        out[("pytorch", "fwd")] = t_fwd
        out[("pytorch", "fwd+bwd")] = lambda: t_bwd(True)
        if c.first:
            out[("pytorch", "fwd+bwd no dx")] = lambda: t_bwd(False)
    return out


def pool_variants(kind, x, dy):
    if kind == "avg":
        def s_fb():
            F.avg_pool2d(x, 2)
            return F.avg_pool2d_backward(dy, x.shape, 2)

        def r_fb():
            R.avg_pool2d(x, 2)
            return R.avg_pool2d_backward(dy, x.shape, 2)

        out = {("striate", "fwd"): lambda: F.avg_pool2d(x, 2), ("striate", "fwd+bwd"): s_fb,
               ("reference", "fwd"): lambda: R.avg_pool2d(x, 2), ("reference", "fwd+bwd"): r_fb}
    else:
        def s_fb():
            y, idx = F.max_pool2d(x, 2)
            return F.max_pool2d_backward(dy, idx, x.shape)

        def r_fb():
            y, idx = R.max_pool2d(x, 2)
            return R.max_pool2d_backward(dy, idx, x.shape)

        out = {("striate", "fwd"): lambda: F.max_pool2d(x, 2), ("striate", "fwd+bwd"): s_fb,
               ("reference", "fwd"): lambda: R.max_pool2d(x, 2), ("reference", "fwd+bwd"): r_fb}
    if torch is not None:
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        pool = torch.nn.functional.avg_pool2d if kind == "avg" else torch.nn.functional.max_pool2d

        def t_fwd():
            with torch.no_grad():
                if kind == "avg":
                    return pool(tx, 2)
                return pool(tx, 2, return_indices=True)

        def t_fb():
            xx = tx.detach().requires_grad_(True)
            pool(xx, 2).backward(tdy)

        out[("pytorch", "fwd")] = t_fwd
        out[("pytorch", "fwd+bwd")] = t_fb
    return out


def set_threads(n: int) -> None:
    st.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------- report


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def geomean(values):
    vals = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _conv_rows(convs, args, rng, largest):
    """Validate then time every conv of ``convs``; one row per (layer, pass)."""
    rows = []
    for c in convs:
        x = rng.standard_normal((c.N, c.C, c.H, c.H), dtype=np.float32)
        w = rng.standard_normal((c.K, c.C, c.k, c.k), dtype=np.float32) / math.sqrt(c.C * c.k * c.k)
        b = rng.standard_normal(c.K, dtype=np.float32)
        dy = rng.standard_normal((c.N, c.K, c.out, c.out), dtype=np.float32)
        set_threads(args.threads)
        validate_conv(c, x, w, b, dy)
        variants = conv_variants(c, x, w, b, dy)
        kinds = ["fwd", "fwd+bwd"] + (["fwd+bwd no dx"] if c.first else [])
        flops = {"fwd": c.fwd_flops, "fwd+bwd": 3 * c.fwd_flops, "fwd+bwd no dx": 2 * c.fwd_flops}
        for kind in kinds:
            row = {"case": c.name, "kind": kind, "gflop": flops[kind] / 1e9}
            _time_row(row, variants, kind, args)
            if kind == "fwd+bwd" and c in largest and not args.no_scaling:
                fn = variants[("striate", kind)]

                def on(n, fn=fn):
                    def call():
                        st.set_num_threads(n)
                        fn()
                    return call

                _, over = paired_ms({2: on(2), 1: on(1)}, args.repeat, args.budget)
                set_threads(args.threads)
                row["scaling_1_to_2"] = over[1]
            rows.append(row)
            print(f"  {c.name:30s} {kind:14s} done", file=sys.stderr, flush=True)
    return rows


def _pool_rows(args, rng):
    """Validate then time the 2x2 / 2 pooling cases of ``POOLS``."""
    rows = []
    for kind, shape in POOLS:
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2), dtype=np.float32)
        set_threads(args.threads)
        validate_pool(kind, x, dy)
        variants = pool_variants(kind, x, dy)
        for p in ("fwd", "fwd+bwd"):
            row = {"case": f"{kind}-pool 2x2/2 {'x'.join(map(str, shape))}", "kind": p, "gflop": None}
            _time_row(row, variants, p, args)
            rows.append(row)
    return rows


def _time_row(row, variants, kind, args):
    """Fill ``row``'s ms per implementation and its ratios to striate.

    striate and PyTorch are timed side by side (``paired_ms``); the NumPy
    reference in rounds of its own, since its BLAS threads keep spinning for
    a long while after a call and would take the cores from the next one.
    """
    ms, over = paired_ms({i: variants.get((i, kind)) for i in ("striate", "pytorch")}, args.repeat, args.budget)
    ref, _ = paired_ms({"reference": variants.get(("reference", kind))}, args.repeat, args.budget)
    row["striate_ms"], row["pytorch_ms"], row["reference_ms"] = ms["striate"], ms.get("pytorch"), ref["reference"]
    row["pytorch_over_striate"] = over.get("pytorch")
    row["reference_over_striate"] = ref["reference"] / ms["striate"]


def _derive(row):
    """Add GFLOP/s to a timed row."""
    for impl in ("striate", "reference", "pytorch"):
        ms = row[f"{impl}_ms"]
        row[f"{impl}_gflops"] = row["gflop"] / (ms / 1e3) if row["gflop"] and ms else None


def _print_table(title, rows):
    """A markdown table of ``rows`` and the geometric means of its conv fwd+bwd ratios; returns them."""
    print(f"\n### {title}\n")
    print("| case | pass | striate ms (GFLOP/s) | PyTorch ms (GFLOP/s) | reference ms (GFLOP/s) "
          "| PyTorch/striate | reference/striate | 1->2 threads |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = []
        for impl in ("striate", "pytorch", "reference"):
            ms, gf = row[f"{impl}_ms"], row[f"{impl}_gflops"]
            cells.append("-" if ms is None else f"{ms:.2f}" + (f" ({gf:.0f})" if gf else ""))
        print(f"| {row['case']} | {row['kind']} | " + " | ".join(cells)
              + f" | {_fmt(row['pytorch_over_striate'])} | {_fmt(row['reference_over_striate'])}"
              + f" | {_fmt(row.get('scaling_1_to_2'))} |")
    conv_fb = [r for r in rows if r["kind"] == "fwd+bwd" and r["gflop"]]
    gm_t = geomean([r["pytorch_over_striate"] for r in conv_fb])
    gm_r = geomean([r["reference_over_striate"] for r in conv_fb])
    print(f"\ngeometric mean over these {len(conv_fb)} conv layers (fwd+bwd): PyTorch/striate {_fmt(gm_t)}, "
          f"reference/striate {_fmt(gm_r)}")
    return gm_t, gm_r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=st.get_num_threads(), help="threads for every implementation")
    ap.add_argument("--repeat", type=int, default=15, help="timed repetitions per cell (median reported)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 thread column")
    ap.add_argument("--budget", type=float, default=3.0,
                    help="seconds per cell after which repetitions stop early (at least 3 runs)")
    ap.add_argument("--shapes", choices=tuple(SHAPE_SETS), default="all",
                    help="base: the six layers of docs/performance.md; families: the shapes of real CNNs "
                         "(5x5, stride 2, 1x1, 7x7 stem, 8x8/7x7 planes); all: both, as two tables (default)")
    add_isa_argument(ap)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeat < 1:
        ap.error("--threads and --repeat must be >= 1")
    apply_isa(ap, args.isa)
    print(header(), flush=True)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"warning: {var} is set; it slows numpy's BLAS (run with env -u {var})", file=sys.stderr)
    st.set_backend("cpp")
    rng = np.random.default_rng(0)
    chosen = SHAPE_SETS[args.shapes]
    largest = sorted(chosen, key=lambda c: c.fwd_flops, reverse=True)[:3]
    with threadpool_limits(args.threads):
        base = _conv_rows([c for c in CONVS if c in chosen], args, rng, largest)
        fams = _conv_rows([c for c in FAMILIES if c in chosen], args, rng, largest)
        pool = _pool_rows(args, rng) if args.shapes != "families" else []
    rows = base + pool + fams
    for row in rows:
        _derive(row)

    print(f"\n{cpu_model()}, ISA {st.get_isa()}, threads={args.threads}, repeat={args.repeat}, numpy {np.__version__}"
          + (f", torch {torch.__version__} on its {torch.backends.cpu.get_cpu_capability()} kernels"
             if torch is not None else ", torch not installed"))
    means = {}
    if base or pool:
        means["base"] = _print_table("Layers of docs/performance.md and pooling", base + pool)
    if fams:
        means["families"] = _print_table("Shape families of real CNNs", fams)
    conv_fb = [r for r in base + fams if r["kind"] == "fwd+bwd"]
    gm_t = geomean([r["pytorch_over_striate"] for r in conv_fb])
    gm_r = geomean([r["reference_over_striate"] for r in conv_fb])
    if base and fams:
        print(f"\ngeometric mean over all {len(conv_fb)} conv layers (fwd+bwd): PyTorch/striate {_fmt(gm_t)}, "
              f"reference/striate {_fmt(gm_r)}")

    if args.json:
        meta = {"threads": args.threads, "repeat": args.repeat, "numpy": np.__version__, "shapes": args.shapes,
                "torch": None if torch is None else torch.__version__, "python": platform.python_version(),
                "cpu": cpu_model(), "isa": st.get_isa(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "geomean_pytorch_over_striate": gm_t,
                "geomean_reference_over_striate": gm_r, "geomeans_by_table": means}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
