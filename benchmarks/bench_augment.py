"""Benchmark: a RandomAffine + RandomHorizontalFlip + RandomCrop batch, striate vs scipy per image.

The baseline applies the same per-sample parameters image by image with
``scipy.ndimage.affine_transform`` (order 1, constant fill), a NumPy flip and a
NumPy pad + slice, which is what a data loader without batch kernels does.
Every variant is validated against the baseline before it is timed. Times are
medians over many repetitions after a warm-up, measured side by side.

Not here: correctness tests (tests/test_augment.py) or training-loop timing.

Usage: python benchmarks/bench_augment.py [--reps 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.ndimage as ndi

import striate as st
from striate import augment as A


def make_pipeline():
    return A.Compose([
        A.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        A.RandomHorizontalFlip(0.5),
        A.RandomCrop(32, padding=4),
    ])


def scipy_per_image(x, aug, seed):
    """The same augmentation, one image at a time, from the same per-sample parameters."""
    n, c, h, w = x.shape
    affine_t, flip_t, crop_t = aug.transforms
    angle, dx, dy, scale = affine_t.params(A._key(seed, 0), 0, n, h, w)
    flags = flip_t.params(A._key(seed, 1), 0, n)
    top, left = crop_t.params(A._key(seed, 2), 0, n, h, w)
    ch, cw = crop_t.size
    p = crop_t.padding
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out = np.empty((n, c, ch, cw), np.float32)
    for i in range(n):
        t = np.deg2rad(angle[i])
        co, si = np.cos(t) / scale[i], np.sin(t) / scale[i]
        # (channel, row, col) <- (channel, row, col): channels pass through unchanged.
        m = np.array([[1, 0, 0], [0, co, si], [0, -si, co]])
        off = np.array([0, cy, cx]) - m @ np.array([0, cy + dy[i], cx + dx[i]])
        img = ndi.affine_transform(x[i], m, off, order=1, mode="grid-constant", cval=0.0)
        if flags[i]:
            img = img[:, :, ::-1]
        img = np.pad(img, ((0, 0), (p, p), (p, p)))
        out[i] = img[:, top[i]:top[i] + ch, left[i]:left[i] + cw]
    return out


def median_time(fn, reps):
    """(median, best) seconds over ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    aug = make_pipeline()
    seed = 1234
    rng = np.random.default_rng(0)
    rows = []
    for shape in [(64, 1, 32, 32), (256, 3, 32, 32)]:
        x = rng.random(shape, dtype=np.float32)
        ref = scipy_per_image(x, aug, seed)
        for threads in (1, 2):
            st.set_num_threads(threads)
            got = aug(x, seed)
            err = float(np.abs(got - ref).max())
            if err > 1e-5:
                raise SystemExit(f"validation failed for {shape} at {threads} threads: max |diff| = {err}")
        t_ref, _ = median_time(lambda: scipy_per_image(x, aug, seed), max(5, args.reps // 5))
        times = {}
        for threads in (1, 2):
            st.set_num_threads(threads)
            times[threads] = median_time(lambda: aug(x, seed), args.reps)
        rows.append((shape, t_ref, times[1][0], times[2][0], times[2][1]))
    print("RandomAffine(15, 0.1, 0.9-1.1) + RandomHorizontalFlip + RandomCrop(32, pad 4); validated, max |diff| <= 1e-5")
    print(f"{'batch':>16} | {'scipy/img ms':>12} | {'striate 1t ms':>13} | {'2t ms':>7} | {'x @1t':>6} | {'x @2t':>6} | "
          f"{'img/s @2t':>10} | {'best 2t ms':>10}")
    for shape, t_ref, t1, t2, b2 in rows:
        print(f"{'x'.join(map(str, shape)):>16} | {t_ref * 1e3:12.3f} | {t1 * 1e3:13.3f} | {t2 * 1e3:7.3f} | "
              f"{t_ref / t1:6.1f} | {t_ref / t2:6.1f} | {shape[0] / t2:10.0f} | {b2 * 1e3:10.3f}")
    print("times are medians (best = minimum); on a shared machine a 2-thread median can include scheduler waits")


if __name__ == "__main__":
    main()
