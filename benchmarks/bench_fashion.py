"""Real Fashion-MNIST training of the TF-tutorial CNN and LeNet-5, striate next to PyTorch.

Two models train side by side on the real Fashion-MNIST (Debian's
``dataset-fashion-mnist`` package, or ``--root``):

- the TensorFlow-tutorial CNN: conv5 1->32 pad 2, ReLU, max-pool 2, conv5
  32->64 pad 2, ReLU, max-pool 2, flatten, fc 3136->1024, ReLU, dropout 0.4,
  fc 10;
- LeNet-5 as ``striate.zoo.lenet5()`` builds it, for 32x32 inputs: the 28x28
  images are zero-padded by 2 on each side, the same array for both
  frameworks.

Both frameworks start from the same weights (striate's ``state_dict`` loaded
into the equivalent ``torch.nn.Sequential``) and see the same batches in the
same order: one seeded permutation per epoch, applied once to the data, which
both then read front to back (striate through ``fit(..., shuffle=False)``,
PyTorch through slices of the same memory). Only the dropout masks differ
(each framework draws its own, seeded from ``--seed``).
Batch 64, SGD with momentum 0.9, cross-entropy. Before anything is timed,
one forward pass and the parameter gradients of one batch are checked to
agree with PyTorch within 1e-4 relative. Each epoch runs as ``--segments``
runs of whole batches (10 by default, about 6,000 images each), the two
frameworks taking turns segment by segment (striate first in even segments,
PyTorch first in odd ones), so that both see the same machine load: on a
shared machine, whose speed drifts by up to 2x over seconds, one framework's
epoch after the other's measured the drift as much as the libraries. The
ratio column is the median over the segments of PyTorch's time over
striate's for the same images; the line under the table gives its range.
Without PyTorch (or with ``--no-torch``) striate runs alone.

``--isa avx2 --torch-isa avx2`` holds both libraries to their AVX2 kernels, as
on a CPU without AVX-512 (PyTorch through ``ONEDNN_MAX_CPU_ISA=AVX2`` and
``ATEN_CPU_CAPABILITY=avx2``); the header gives PyTorch's CPU capability.

Prints a header (date, CPU model, ISA path, threads, versions) and a table of
images/s, epoch seconds, the last epoch's training loss, test accuracy on the
full test set, and the median per-segment ratio of PyTorch's time over
striate's.

``--model resnet20`` times the README's ResNet-20 recipe instead: the
command ``striate train --model resnet20 --dataset fashion-mnist`` with the
recipe's options, run as a subprocess and timed from start to end (loading,
training, evaluation, saving), then the same recipe in PyTorch timed the same
way: the same architecture from the same initial weights, the same data
arrays, batch, epochs, SGD with Nesterov momentum and weight decay, the same
one-cycle schedule stepped per batch (``torch.optim.lr_scheduler.OneCycleLR``
without momentum cycling, as striate's), and the same random-affine
augmentation, applied to each batch by striate's C++ ``augment`` in both
runs. Batch order, augmentation draws and dropout-free training differ only
in their random streams. It prints both wall times, test accuracies and their
ratio.

Not here: synthetic-data throughput and peak RSS (``bench_train.py``),
kernel timings (``bench_kernels.py``), or any speed threshold: this reports,
it does not judge.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fashion.py \\
        [--threads 2] [--epochs 1] [--model tf|lenet|both] [--isa avx2] [--torch-isa avx2] [--limit N] [--root DIR]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fashion.py --model resnet20 --epochs 12
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "python"))
sys.path.insert(0, _HERE)

import striate as st  # noqa: E402
from striate import optim, zoo  # noqa: E402

import bench_train  # noqa: E402  (its torch.nn twin of a Sequential)
from bench_models import tf_cnn  # noqa: E402

torch = None  # set in main() when PyTorch is importable and wanted

BATCH = 64
LR = 0.01
MOMENTUM = 0.9
EVAL_BATCH = 256
TOLERANCE = 1e-4


# The ResNet-20 recipe of the README (--model resnet20): batch, peak learning rate.
RECIPE_BATCH = 128
RECIPE_LR = 0.1
RECIPE_WEIGHT_DECAY = 5e-4


# name -> (builder, zero padding applied to the 28x28 images)
MODELS = {
    "tf": ("TF-tutorial CNN", tf_cnn, 0),
    "lenet": ("LeNet-5 (32x32)", zoo.lenet5, 2),
}


# --------------------------------------------------------------------------- header


def _cpu_model():
    """The CPU's marketing name from /proc/cpuinfo, and whether it has AVX-512F / AVX2."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name is None:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if name is not None and flags:
                    break
    except OSError:
        pass
    simd = [f for f in ("avx512f", "avx2", "fma") if f in flags]
    return name or platform.processor() or "unknown CPU", " ".join(simd) or "unknown"


def _isa():
    if hasattr(st, "get_isa"):
        return str(st.get_isa())
    return "unknown (this striate has no st.get_isa)"


def _git_revision():
    try:
        out = subprocess.run(["git", "-C", _HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _print_header(args, n_train, n_test, data_root):
    cpu, simd = _cpu_model()
    rev = _git_revision()
    if torch is not None:
        torch_v = (f"PyTorch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}"
                   f"{', --torch-isa avx2' if args.torch_isa == 'avx2' else ''})")
    else:
        torch_v = "PyTorch not used (--no-torch)" if args.no_torch else "PyTorch not installed"
    print("# Fashion-MNIST training, striate next to PyTorch")
    print(f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"CPU:     {cpu} (flags: {simd})")
    print(f"ISA:     {_isa()}")
    print(f"threads: {args.threads} (st.set_num_threads"
          + (", torch.set_num_threads)" if torch is not None else ")"))
    print(f"version: striate {st.__version__}{f' ({rev})' if rev else ''}, {torch_v}, numpy {np.__version__}, "
          f"Python {platform.python_version()}")
    print(f"data:    {data_root}: {n_train} training images{' (--limit)' if args.limit else ''}, "
          f"{n_test} test images")
    if args.model != "resnet20":  # the recipe prints its own
        print(f"setup:   batch {BATCH}, SGD lr {LR} momentum {MOMENTUM}, {args.epochs} epoch(s), seed {args.seed}")


# --------------------------------------------------------------------------- data


def _load(root, limit):
    """``((x, y), (xt, yt), where)``, or None when the files are missing."""
    from striate.datasets import load_fashion_mnist

    try:
        (x, y), (xt, yt) = load_fashion_mnist(root)
    except FileNotFoundError:
        return None
    if limit:
        x, y = x[:limit], y[:limit]
    return (x, y), (xt, yt), root if root is not None else _default_root()


def _default_root():
    """The folder ``load_fashion_mnist()`` read, found the way it searches."""
    from striate.datasets import fashion, mnist

    return str(next((d for d in fashion.default_dirs() if mnist.find_files(d) is not None), "default folder"))


def _pad(x, p):
    if p == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


# --------------------------------------------------------------------------- validation


def _rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / (np.max(np.abs(ref)) + 1e-12))


def _validate(model, tm, xb, yb):
    """One forward pass and the gradients of one batch agree with torch; return the worst error.

    Runs in evaluation mode (no dropout) and takes no step, so both models
    keep their equal initial weights. Raises AssertionError naming what differs.
    """
    model.eval()
    tm.eval()
    out = model(xb)
    t_out = tm(torch.from_numpy(xb))
    err = _rel_err(out, t_out.detach().numpy())
    if err > TOLERANCE:
        raise AssertionError(f"forward: striate differs from torch, relative error {err:.2e}")
    ce = st.losses.CrossEntropy()
    loss = float(ce(out, yb))
    model.backward(ce.backward(), input_grad=False)
    t_loss = torch.nn.functional.cross_entropy(t_out, torch.from_numpy(yb))
    tm.zero_grad()
    t_loss.backward()
    if abs(loss - t_loss.item()) > TOLERANCE * abs(t_loss.item()):
        raise AssertionError(f"loss: striate {loss} differs from torch {t_loss.item()}")
    worst = err
    t_params = dict(tm.named_parameters())
    for name, p in model.named_parameters():
        g_err = _rel_err(p.grad, t_params[name].grad.numpy())
        if g_err > TOLERANCE:
            raise AssertionError(f"gradient of {name}: striate differs from torch, relative error {g_err:.2e}")
        worst = max(worst, g_err)
    tm.zero_grad()
    model.train()
    tm.train()
    return worst


# --------------------------------------------------------------------------- training


def _striate_epoch(model, opt, xp, yp, seed):
    """``fit`` over the pre-permuted data (one epoch or a segment of one); (seconds, mean training loss)."""
    t0 = time.perf_counter()
    hist = model.fit(xp, yp, epochs=1, batch_size=BATCH, optimizer=opt, shuffle=False, verbose=0, seed=seed)
    return time.perf_counter() - t0, float(hist.history["loss"][-1])


def _torch_epoch(tm, opt, xp, yp):
    """PyTorch's standard loop over the same pre-permuted arrays; (seconds, mean training loss)."""
    xt, yt = torch.from_numpy(xp), torch.from_numpy(yp)
    n = xt.shape[0]
    loss_sum = 0.0
    t0 = time.perf_counter()
    tm.train()
    for start in range(0, n, BATCH):
        xb, yb = xt[start : start + BATCH], yt[start : start + BATCH]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tm(xb), yb)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * xb.shape[0]
    return time.perf_counter() - t0, loss_sum / n


def _segments(n, count):
    """``count`` (at most) contiguous slices of ``range(n)`` cut at multiples of the batch size."""
    batches = -(-n // BATCH)
    count = min(count, batches)
    cuts = [min(n, (batches * i // count) * BATCH) for i in range(count + 1)]
    return [slice(cuts[i], cuts[i + 1]) for i in range(count)]


def _torch_accuracy(tm, xt, yt):
    tm.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, xt.shape[0], EVAL_BATCH):
            out = tm(torch.from_numpy(xt[start : start + EVAL_BATCH]))
            correct += int((out.argmax(1).numpy() == yt[start : start + EVAL_BATCH]).sum())
    return correct / xt.shape[0]


def _warm_up(make, x, y):
    """A few steps on throwaway models, so that first-call costs stay out of the timings."""
    n = min(x.shape[0], 4 * BATCH)
    model = make()
    model.fit(x[:n], y[:n], epochs=1, batch_size=BATCH, shuffle=False, verbose=0, seed=0)
    if torch is not None:
        tm = bench_train._torch_model(model)
        _torch_epoch(tm, torch.optim.SGD(tm.parameters(), lr=LR, momentum=MOMENTUM), x[:n], y[:n])


def _run_model(key, train, test, args):
    """Train one model in both frameworks; return the table rows and the validation error."""
    label, make, pad = MODELS[key]
    x, y = _pad(train[0], pad), train[1]
    xt, yt = _pad(test[0], pad), test[1]
    _warm_up(make, x, y)
    st.seed(args.seed)
    model = make()
    tm = bench_train._torch_model(model) if torch is not None else None
    val_err = _validate(model, tm, x[:BATCH], y[:BATCH]) if tm is not None else None
    s_opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    t_opt = torch.optim.SGD(tm.parameters(), lr=LR, momentum=MOMENTUM) if tm is not None else None
    if tm is not None:
        torch.manual_seed(args.seed)  # torch's dropout masks, reproducible from run to run
    order = np.random.default_rng(args.seed)
    s_times, t_times, ratios, s_loss, t_loss = [], [], [], None, None
    segs = _segments(x.shape[0], args.segments)
    for epoch in range(args.epochs):
        perm = order.permutation(x.shape[0])
        xp, yp = np.ascontiguousarray(x[perm]), np.ascontiguousarray(y[perm])
        s_sec = t_sec = s_sum = t_sum = 0.0
        for i, sl in enumerate(segs):
            runs = [("s", lambda: _striate_epoch(model, s_opt, xp[sl], yp[sl], seed=args.seed + 1000 * epoch + i))]
            if tm is not None:
                runs.append(("t", lambda: _torch_epoch(tm, t_opt, xp[sl], yp[sl])))
            got = {}
            for who, run in (runs if i % 2 == 0 else runs[::-1]):
                got[who] = run()
            m = sl.stop - sl.start
            s_sec += got["s"][0]
            s_sum += got["s"][1] * m
            if "t" in got:
                t_sec += got["t"][0]
                t_sum += got["t"][1] * m
                ratios.append(got["t"][0] / got["s"][0])
        s_times.append(s_sec)
        s_loss = s_sum / x.shape[0]
        if tm is not None:
            t_times.append(t_sec)
            t_loss = t_sum / x.shape[0]
        print(f"  {label}: epoch {epoch + 1}/{args.epochs} done", file=sys.stderr, flush=True)
    n = x.shape[0]
    s_sec = float(np.median(s_times))
    s_acc = float(model.evaluate(xt, yt, batch_size=EVAL_BATCH)["accuracy"])
    rows = [[label, "striate", n / s_sec, s_sec, s_loss, s_acc, None]]
    spread = None
    if tm is not None:
        t_sec = float(np.median(t_times))
        rows.append([label, "PyTorch", n / t_sec, t_sec, t_loss, _torch_accuracy(tm, xt, yt), None])
        rows[0][6] = float(np.median(ratios))
        spread = (label, len(ratios), min(ratios), float(np.percentile(ratios, 25)),
                  float(np.percentile(ratios, 75)), max(ratios), rows[1][3] / rows[0][3])
    return rows, val_err, spread


# --------------------------------------------------------------------------- the ResNet-20 recipe


def _recipe_command(args):
    cmd = ["-m", "striate", "train", "--model", "resnet20", "--dataset", "fashion-mnist",
           "--epochs", str(args.epochs), "--batch-size", str(RECIPE_BATCH), "--lr", str(RECIPE_LR),
           "--weight-decay", str(RECIPE_WEIGHT_DECAY), "--seed", str(args.seed), "--threads", str(args.threads),
           "--verbose", "2"]
    if args.root:
        cmd += ["--data-root", args.root]
    return cmd


def _striate_recipe(args, out_dir):
    """``striate train`` with the recipe, in a subprocess; (wall seconds, test accuracy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(_HERE, "..", "python"), env.get("PYTHONPATH", "")])
    if args.isa:
        env["STRIATE_ISA"] = args.isa
    cmd = [sys.executable, *_recipe_command(args), "--out", os.path.join(out_dir, "resnet20.safetensors")]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    sec = time.perf_counter() - t0
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"bench_fashion: `striate train` failed ({r.returncode}):\n{r.stdout}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("test accuracy")]
    if not line:
        raise SystemExit(f"bench_fashion: no accuracy line in `striate train`'s output:\n{r.stdout}")
    return sec, float(line[-1].split()[2].rstrip("%")) / 100.0


def _torch_recipe(args):
    """The same recipe in PyTorch, timed from loading the data; (wall seconds, test accuracy)."""
    from striate import augment
    from striate._cli_data import build_model, fit_to_model, load_data
    from striate.training.data import to_float32

    t0 = time.perf_counter()
    data = load_data("fashion-mnist", args.root)
    st.seed(args.seed)
    model = build_model("resnet20", data.shape, data.num_classes)  # the CLI's initial weights for this seed
    (x, y), (xt, yt) = data.train, data.test
    x, xt = fit_to_model(model, x), fit_to_model(model, xt)
    tm = bench_train._torch_model(model)
    opt = torch.optim.SGD(tm.parameters(), lr=RECIPE_LR, momentum=0.9, nesterov=True,
                          weight_decay=RECIPE_WEIGHT_DECAY)
    steps = -(-x.shape[0] // RECIPE_BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=RECIPE_LR, total_steps=steps * args.epochs,
                                                cycle_momentum=False)
    aug = augment.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))  # the CLI's default
    rng = np.random.default_rng(args.seed)
    yt_all = torch.from_numpy(np.asarray(y, dtype=np.int64))
    for epoch in range(args.epochs):
        tm.train()
        perm = rng.permutation(x.shape[0])
        for step in range(steps):
            idx = perm[step * RECIPE_BATCH : (step + 1) * RECIPE_BATCH]
            xb = aug(to_float32(x[idx]), int(rng.integers(2**63)))
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(xb)), yt_all[idx])
            loss.backward()
            opt.step()
            sched.step()
        print(f"  PyTorch ResNet-20: epoch {epoch + 1}/{args.epochs} done, last loss {loss.item():.4f}",
              file=sys.stderr, flush=True)
    acc = _torch_accuracy(tm, np.ascontiguousarray(to_float32(xt)), np.asarray(yt))
    return time.perf_counter() - t0, acc


def _run_recipe(args):
    import tempfile

    print(f"recipe:  python {' '.join(_recipe_command(args))}")
    print(f"         batch {RECIPE_BATCH}, one-cycle to lr {RECIPE_LR}, SGD Nesterov 0.9, weight decay "
          f"{RECIPE_WEIGHT_DECAY}, random affine (10 deg, 10% shift, 0.9-1.1 scale), {args.epochs} epoch(s)")
    sys.stdout.flush()
    with tempfile.TemporaryDirectory() as out_dir:
        s_sec, s_acc = _striate_recipe(args, out_dir)
    print(f"| framework | wall time s | test accuracy |\n|---|---|---|\n| striate | {s_sec:.1f} | {100 * s_acc:.2f}% |")
    if torch is None:
        return 0
    t_sec, t_acc = _torch_recipe(args)
    print(f"| PyTorch | {t_sec:.1f} | {100 * t_acc:.2f}% |")
    print(f"\nPyTorch time / striate time: {t_sec / s_sec:.2f}x")
    return 0


# --------------------------------------------------------------------------- command line


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=_positive, default=2, help="threads for striate and PyTorch (default 2)")
    ap.add_argument("--epochs", type=_positive, default=1, help="training epochs (default 1)")
    ap.add_argument("--model", choices=("tf", "lenet", "both", "resnet20"), default="both",
                    help="which model (default both); resnet20: the README's ResNet-20 recipe, `striate train` "
                         "against the same recipe in PyTorch, by wall time")
    ap.add_argument("--isa", metavar="NAME", help="striate's SIMD path, through st.set_isa (avx512, avx2, generic)")
    ap.add_argument("--limit", type=_positive, metavar="N", help="train on the first N images only (smoke runs)")
    ap.add_argument("--root", metavar="DIR", help="folder holding the four Fashion-MNIST IDX files")
    ap.add_argument("--seed", type=int, default=0, help="initial weights, batch order and dropout (default 0)")
    ap.add_argument("--segments", type=_positive, default=10,
                    help="runs of whole batches per epoch, the frameworks taking turns (default 10)")
    ap.add_argument("--no-torch", action="store_true", help="run striate alone even when PyTorch is importable")
    ap.add_argument("--torch-isa", choices=("native", "avx2"), default="native",
                    help="PyTorch's kernels: native (default) or avx2 (ONEDNN_MAX_CPU_ISA=AVX2 and "
                         "ATEN_CPU_CAPABILITY=avx2, what PyTorch runs on a CPU without AVX-512)")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error(f"--seed must be non-negative, got {args.seed}")
    if args.isa is not None:
        if not hasattr(st, "set_isa"):
            ap.error(f"--isa {args.isa}: this build of striate has no st.set_isa, so its ISA path cannot be chosen")
        try:
            st.set_isa(args.isa)
        except ValueError as exc:
            ap.error(f"--isa {args.isa}: {exc}")
    return args


def _print_table(rows):
    torch_col = "PyTorch time / striate time (median of segments)"
    print(f"| model | framework | images/s | epoch s | train loss | test accuracy | {torch_col} |")
    print("|---|---|---|---|---|---|---|")
    for label, fw, rate, sec, loss, acc, ratio in rows:
        r = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"| {label} | {fw} | {rate:,.0f} | {sec:.2f} | {loss:.4f} | {100 * acc:.2f}% | {r} |")


def main(argv=None):
    args = _parse(argv)
    global torch
    torch = None
    if not args.no_torch:
        if args.torch_isa == "avx2":  # read by oneDNN and ATen when torch loads
            os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
            os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
        try:
            import torch as _torch
        except ImportError:
            _torch = None
        torch = _torch
    bench_train.torch = torch
    st.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    loaded = _load(args.root, args.limit)
    if loaded is None:
        where = args.root or "/usr/share/datasets/fashion-mnist or striate's cache folder"
        print(f"bench_fashion: skipped, Fashion-MNIST's IDX files are not in {where}; "
              "`apt-get install dataset-fashion-mnist` or pass --root DIR")
        return 0
    train, test, where = loaded
    _print_header(args, train[0].shape[0], test[0].shape[0], where)
    sys.stdout.flush()  # the header before the progress lines on stderr
    if args.model == "resnet20":
        if args.limit:
            print("bench_fashion: --limit does not apply to the resnet20 recipe (it runs `striate train`)")
            return 2
        return _run_recipe(args)
    keys = ["tf", "lenet"] if args.model == "both" else [args.model]
    rows, checks, spreads = [], [], []
    for key in keys:
        r, err, spread = _run_model(key, train, test, args)
        rows.extend(r)
        if err is not None:
            checks.append(f"{MODELS[key][0]} {err:.1e}")
        if spread is not None:
            spreads.append(spread)
    if checks:
        print(f"checked: forward and gradients agree with PyTorch, worst relative error: {', '.join(checks)}")
    print()
    _print_table(rows)
    for label, count, lo, q1, q3, hi, whole in spreads:
        print(f"\n{label}: PyTorch time / striate time over {count} segments: min {lo:.2f}, quartiles "
              f"{q1:.2f}-{q3:.2f}, max {hi:.2f}; whole epochs {whole:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
