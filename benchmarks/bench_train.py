"""Training and inference throughput (images/s) of striate next to PyTorch, plus peak RSS.

Models: LeNet-5 on 1x28x28 inputs and the small CIFAR net of docs/performance.md
(``zoo.typical_cnn`` on 3x32x32). Training is ``fit`` itself (batch 64, SGD
with momentum 0.9, one epoch over synthetic data, verbose=0), so the loop,
batch gathering and the non-finite checks are included; inference is
``model.predict`` at batch 256. PyTorch (when importable) runs the same
architecture with striate's weights, ``torch.set_num_threads`` equal to
striate's thread count, and the same batches. Before timing, every pair is
validated: the forward outputs and the loss of one SGD step must agree.
Peak RSS is the peak resident set size (``VmHWM``) of a child process that
imports only striate and trains LeNet-5.

The output starts with the CPU model (from /proc/cpuinfo) and the ISA path
striate's kernels take; ``--isa NAME`` sets that path (``st.set_isa``) before
anything is timed, in the RSS child too.

Not here: kernel-level timings (``bench_kernels.py``) or accuracy.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train.py [--threads 1,2] [--repeats 5] [--isa avx2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import striate as st  # noqa: E402
from striate import optim, training, zoo  # noqa: E402
from bench_machine import add_isa_argument, apply_isa, header  # noqa: E402

torch = None  # imported in main() when available; never in the peak-RSS child

TRAIN_BATCH = 64
INFER_BATCH = 256


def _models():
    return {
        "LeNet-5 1x28x28": (lambda: zoo.lenet5(input_size=28), (1, 28, 28)),
        "CIFAR net 3x32x32": (lambda: zoo.typical_cnn(in_channels=3, num_classes=10), (3, 32, 32)),
    }


def _torch_model(model):
    """The same architecture in torch.nn, loaded with ``model``'s weights."""
    nn = torch.nn
    mods = []
    for layer in model:
        name = type(layer).__name__
        cfg = layer.config()
        if name == "Conv2d":
            mods.append(nn.Conv2d(cfg["in_channels"], cfg["out_channels"], cfg["kernel_size"], stride=cfg["stride"],
                                  padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"],
                                  bias=cfg["bias"]))
        elif name == "MaxPool2d":
            mods.append(nn.MaxPool2d(cfg["kernel_size"], stride=cfg["stride"], padding=cfg["padding"],
                                     ceil_mode=cfg["ceil_mode"]))
        elif name == "ReLU":
            mods.append(nn.ReLU())
        elif name == "Dropout":
            mods.append(nn.Dropout(cfg["p"]))
        elif name == "Flatten":
            mods.append(nn.Flatten())
        elif name == "Linear":
            mods.append(nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg["bias"]))
        else:
            raise ValueError(f"no torch counterpart for {name}")
    tm = nn.Sequential(*mods)
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    return tm


def _data(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, size=n)


def _validate(model, tm, shape):
    """Outputs, and the loss after one SGD step, agree between striate and torch.

    Runs in evaluation mode (no dropout) on a copy-free pair: ``tm`` holds
    ``model``'s weights. Both models take the same step, so timing starts from
    equal weights.
    """
    x, y = _data(shape, 16, seed=1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.eval()
    tm.eval()
    s_opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    t_opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    ce = st.losses.CrossEntropy()
    for what in ("forward", "after one SGD step"):
        out = model(x)
        t_out = tm(xt)
        ref = t_out.detach().numpy()
        err = np.max(np.abs(out - ref)) / (np.max(np.abs(ref)) + 1e-12)
        if err > 1e-4:
            raise AssertionError(f"{what}: outputs differ from torch, relative error {err:.2e}")
        s_loss = ce(out, y)
        t_loss = torch.nn.functional.cross_entropy(t_out, yt)
        if abs(s_loss - t_loss.item()) > 1e-4 * abs(t_loss.item()):
            raise AssertionError(f"{what}: loss {s_loss} differs from torch {t_loss.item()}")
        model.backward(ce.backward(), input_grad=False)
        s_opt.step()
        t_opt.zero_grad()
        t_loss.backward()
        t_opt.step()
    model.train()
    tm.train()


def _bench_train_striate(make, shape, steps, repeats):
    st.seed(0)
    model = make()
    x, y = _data(shape, TRAIN_BATCH * steps)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    training.fit(model, x[: TRAIN_BATCH * 2], y[: TRAIN_BATCH * 2], epochs=1, batch_size=TRAIN_BATCH,
                 optimizer=opt, verbose=0, seed=0)  # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        training.fit(model, x, y, epochs=1, batch_size=TRAIN_BATCH, optimizer=opt, verbose=0, seed=r)
        times.append(time.perf_counter() - t0)
    return x.shape[0] / float(np.median(times))


def _bench_train_torch(make, shape, steps, repeats):
    st.seed(0)
    model = make()
    tm = _torch_model(model)
    _validate(model, tm, shape)
    x, y = _data(shape, TRAIN_BATCH * steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    tm.train()

    def epoch(seed, n_steps):
        order = torch.from_numpy(np.random.default_rng(seed).permutation(x.shape[0]))
        for s in range(n_steps):
            idx = order[s * TRAIN_BATCH : (s + 1) * TRAIN_BATCH]
            opt.zero_grad()
            loss = loss_fn(tm(xt[idx]), yt[idx])
            loss.backward()
            opt.step()

    epoch(0, 2)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        epoch(r, steps)
        times.append(time.perf_counter() - t0)
    return x.shape[0] / float(np.median(times))


def _bench_infer(make, shape, batches, repeats):
    st.seed(0)
    model = make()
    x, _ = _data(shape, INFER_BATCH * batches)
    model.predict(x[:INFER_BATCH], batch_size=INFER_BATCH)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(x, batch_size=INFER_BATCH)
        times.append(time.perf_counter() - t0)
    s_rate = x.shape[0] / float(np.median(times))
    if torch is None:
        return s_rate, None
    tm = _torch_model(model)
    _validate(model, tm, shape)
    tm.eval()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        torch.softmax(tm(xt[:INFER_BATCH]), 1)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for b in range(batches):
                torch.softmax(tm(xt[b * INFER_BATCH : (b + 1) * INFER_BATCH]), 1)
            times.append(time.perf_counter() - t0)
    return s_rate, x.shape[0] / float(np.median(times))


def _peak_rss_child():
    """Run in a child: train LeNet-5 (1x28x28, batch 64) and print the peak RSS in MB."""
    x, y = _data((1, 28, 28), TRAIN_BATCH * 40)
    st.seed(0)
    model = zoo.lenet5(input_size=28)
    training.fit(model, x, y, epochs=2, batch_size=TRAIN_BATCH, verbose=0, seed=0)
    print(_peak_rss_self_mb())


def _peak_rss_self_mb():
    """This process's peak resident set size in MB.

    ``VmHWM`` from /proc where available: Linux keeps the parent's RSS in
    ``ru_maxrss`` across fork+exec, so a child of a large process would report
    the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_rss_mb(threads):
    env = dict(os.environ, STRIATE_NUM_THREADS=str(threads), STRIATE_ISA=st.get_isa())
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child"], capture_output=True,
                          text=True, env=env, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions; the median is reported")
    ap.add_argument("--steps", type=int, default=30, help="training batches per repetition")
    ap.add_argument("--batches", type=int, default=4, help="inference batches of 256 per repetition")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    add_isa_argument(ap)
    args = ap.parse_args(argv)
    apply_isa(ap, args.isa)
    if args.rss_child:
        _peak_rss_child()
        return 0
    print(header(), flush=True)
    threads = [int(t) for t in args.threads.split(",")]
    rss = _peak_rss_mb(max(threads))  # before torch makes this process large
    global torch
    try:
        import torch as _torch

        torch = _torch
    except ImportError:
        torch = None
    rows = []
    for name, (make, shape) in _models().items():
        for t in threads:
            st.set_num_threads(t)
            if torch is not None:
                torch.set_num_threads(t)
            steps = args.steps if shape[0] == 1 else max(4, args.steps // 3)
            s_train = _bench_train_striate(make, shape, steps, args.repeats)
            t_train = _bench_train_torch(make, shape, steps, args.repeats) if torch is not None else None
            s_inf, t_inf = _bench_infer(make, shape, args.batches, args.repeats)
            rows.append((name, "train (batch 64)", t, s_train, t_train))
            rows.append((name, "inference (batch 256)", t, s_inf, t_inf))
            print(f"  done: {name}, {t} thread(s)", file=sys.stderr, flush=True)
    torch_v = f"PyTorch {torch.__version__}" if torch is not None else "PyTorch (not installed)"
    print(f"| model | task | threads | striate img/s | {torch_v} img/s | striate / torch |")
    print("|---|---|---|---|---|---|")
    for name, task, t, s, p in rows:
        ratio = f"{s / p:.2f}x" if p else "-"
        print(f"| {name} | {task} | {t} | {s:,.0f} | {f'{p:,.0f}' if p else '-'} | {ratio} |")
    print(f"\nPeak RSS while training LeNet-5 (1x28x28, batch 64, {max(threads)} threads): {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
