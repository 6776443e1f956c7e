"""Benchmark: the data path alone (image decoding, loader overhead, streaming memory), no training.

Three figures:

- decoding: ``ImageFolder(...).load()`` of a folder of 28x28 grayscale PNGs
  (written first into a temporary folder), in images per second;
- loader overhead: one epoch of ``DataLoader(ArrayDataset(x_uint8, y))``
  against slicing a float32 copy of the same arrays by the same permutation;
- streaming: one shuffled epoch of a DataLoader over a uint8 ``np.memmap`` of
  28x28 images, sampling the process's ``RssAnon`` (anonymous memory; the
  memmapped file's pages are page cache and do not count) every 10 ms.

Not here: the training loop through a loader (that is ``fit``'s benchmark),
correctness tests (tests/test_loader.py, tests/test_folder.py).

Usage: python benchmarks/bench_data.py [--pngs 10000] [--stream 1000000] [--batch 128]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import numpy as np

from striate.datasets import ArrayDataset, DataLoader, ImageFolder


def rss_anon_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_decode(n: int, workdir: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    root = os.path.join(workdir, "pngs")
    for i in range(n):
        cls = os.path.join(root, f"class{i % 10}")
        os.makedirs(cls, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(os.path.join(cls, f"{i}.png"))
    t0 = time.perf_counter()
    x, _ = ImageFolder(root, channels=1).load()
    dt = time.perf_counter() - t0
    print(f"decode  {n} PNGs 28x28 -> {x.shape}: {dt:.2f} s, {n / dt:,.0f} images/s")
    shutil.rmtree(root)


def bench_overhead(batch: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (60_000, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 60_000)
    loader = DataLoader(ArrayDataset(x, y), batch_size=batch, seed=0)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    t_loader = time.perf_counter() - t0
    xf = x.astype(np.float32) / np.float32(255)
    order = loader.epoch_order(0)
    t0 = time.perf_counter()
    for b in range(len(loader)):
        idx = order[b * batch : (b + 1) * batch]
        xf[idx], y[idx]
    t_slice = time.perf_counter() - t0
    print(f"loader  60,000 x 1x28x28 uint8, batch {batch}: {t_loader * 1e3:.0f} ms per epoch "
          f"(float32 slicing of a converted copy: {t_slice * 1e3:.0f} ms)")


def bench_stream(n: int, batch: int, workdir: str) -> None:
    path = os.path.join(workdir, "stream.u8")
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, 1, 28, 28))
    for s in range(0, n, 65_536):
        mm[s : s + 65_536] = (np.arange(min(65_536, n - s)) % 251).astype(np.uint8)[:, None, None, None]
    mm.flush()
    del mm
    x = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 1, 28, 28))
    y = np.zeros(n, dtype=np.uint8)
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
    seen = 0
    for xb, _ in DataLoader(ArrayDataset(x, y), batch_size=batch, seed=0):
        seen += xb.shape[0]
    dt = time.perf_counter() - t0
    stop.set()
    sampler.join()
    print(f"stream  {n:,} x 1x28x28 uint8 memmap ({n * 784 / 1e6:.0f} MB), batch {batch}: {dt:.1f} s, "
          f"{seen / dt:,.0f} samples/s; RssAnon {base / 1e6:.0f} MB before, peak {peak[0] / 1e6:.0f} MB")
    os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pngs", type=int, default=10_000)
    ap.add_argument("--stream", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="striate-bench-data-")
    try:
        bench_decode(args.pngs, workdir)
        bench_overhead(args.batch)
        bench_stream(args.stream, args.batch, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
