"""Benchmark: ``fit`` through a DataLoader, against ``fit`` on arrays, and its memory while streaming.

Two figures:

- speed: one epoch of LeNet-5 (1x32x32, batch 64) with ``fit(x, y)`` on
  in-memory uint8 arrays, then with ``fit(DataLoader(ArrayDataset(x, y)))``
  on the same arrays; the ratio of their rates (target: the loader at least
  90% as fast);
- streaming: ``fit`` on a DataLoader over a uint8 ``np.memmap`` of 28x28
  images (1,000,000 by default, 784 MB, written first into a temporary
  folder) for ``--stream-steps`` shuffled batches, with a small model, while
  the process's ``RssAnon`` is sampled every 10 ms (target: a peak under
  300 MB whatever the data set's size; the memmapped file's pages are page
  cache and do not count).

Not here: the data path without training (bench_data.py), correctness
(tests/test_training_sources.py).

Usage: python benchmarks/bench_fit_loader.py [--n 10000] [--repeat 2] [--stream 1000000] [--stream-steps 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import numpy as np

import striate as st
from striate import layers as L
from striate.datasets import ArrayDataset, DataLoader


def rss_anon_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_speed(n: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    best = {"arrays": float("inf"), "loader": float("inf")}
    for _ in range(repeat):
        for kind in ("arrays", "loader"):
            st.seed(0)
            model = st.zoo.lenet5()
            t0 = time.perf_counter()
            if kind == "arrays":
                model.fit(x, y, epochs=1, batch_size=64, verbose=0, seed=0)
            else:
                model.fit(DataLoader(ArrayDataset(x, y), batch_size=64, seed=0), epochs=1, verbose=0, seed=0)
            best[kind] = min(best[kind], time.perf_counter() - t0)
    ratio = best["arrays"] / best["loader"]
    print(f"speed   LeNet-5, {n:,} x 1x32x32 uint8, batch 64, {st.get_num_threads()} threads: "
          f"fit(x, y) {n / best['arrays']:,.0f} samples/s, fit(DataLoader) {n / best['loader']:,.0f} samples/s "
          f"-> {ratio * 100:.0f}% (best of {repeat})")


def bench_stream(n: int, steps: int, batch: int, workdir: str) -> None:
    path = os.path.join(workdir, "stream.u8")
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, 1, 28, 28))
    for s in range(0, n, 65_536):
        mm[s : s + 65_536] = (np.arange(min(65_536, n - s)) % 251).astype(np.uint8)[:, None, None, None]
    mm.flush()
    del mm
    x = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 1, 28, 28))
    y = (np.arange(n) % 10).astype(np.uint8)
    st.seed(0)
    model = st.Sequential([L.Conv2d(1, 8, 3, stride=2), L.ReLU(), L.Flatten(), L.Linear(8 * 13 * 13, 10)])
    base = rss_anon_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon_bytes())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        model.fit(DataLoader(ArrayDataset(x, y), batch_size=batch, seed=0), epochs=1, steps_per_epoch=steps,
                  verbose=0, seed=0)
    finally:
        stop.set()
        sampler.join()
    dt = time.perf_counter() - t0
    print(f"stream  fit on a {n:,} x 1x28x28 uint8 memmap ({n * 784 / 1e6:.0f} MB), {steps} shuffled batches of "
          f"{batch}: {dt:.1f} s; RssAnon {base / 1e6:.0f} MB before, peak {peak[0] / 1e6:.0f} MB")
    os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples of the speed comparison")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--stream", type=int, default=1_000_000, help="samples in the streamed memmap")
    ap.add_argument("--stream-steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    bench_speed(args.n, args.repeat)
    if args.stream <= 0:  # --stream 0: the speed figure only
        return
    workdir = tempfile.mkdtemp(prefix="striate-bench-fit-")
    try:
        bench_stream(args.stream, args.stream_steps, args.batch, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
