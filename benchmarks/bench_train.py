"""Training and inference throughput of striate next to PyTorch and onnxruntime, plus peak RSS.

PyTorch tables (``--only torch``): LeNet-5 on 1x28x28 inputs, the small
CIFAR net of docs/performance.md (``zoo.typical_cnn`` on 3x32x32) and
ResNet-20 (``zoo.resnet20``, nested ``Residual`` blocks with batch norm, on
3x32x32). Training is
``fit`` itself (batch 64, SGD with momentum 0.9, one epoch over synthetic
data, verbose=0), so the loop, batch gathering and the non-finite checks are
included; inference is ``model.predict`` at batch 256. PyTorch (when
importable) runs the same architecture with striate's weights
(``bench_models.torch_twin``: a torch ``Residual`` module with ``body`` and
``shortcut`` inside nested ``nn.Sequential``, loaded strictly),
``torch.set_num_threads`` equal to striate's thread count, and the same
batches. Before timing, every pair is validated in evaluation mode: the
forward outputs must agree within 1e-4 (relative to the largest logit), and
so must the loss before and after one SGD step. The timed runs alternate,
striate's then PyTorch's, round after round (``--repeats`` rounds); the
ratio is the median of the rounds' ratios. Peak RSS is the peak resident set size
(``VmHWM``) of a child process that imports only striate and trains LeNet-5.

onnxruntime table (``--only onnx``): LeNet-5 (1x28x28), the TF-tutorial CNN
(``bench_models.tf_cnn``) and ``zoo.typical_cnn`` (3x32x32), each exported
with ``model.to_onnx`` and run by onnxruntime's CPU provider with
``intra_op_num_threads`` equal to striate's thread count, one inter-op
thread and ORT_ENABLE_ALL graph optimisations. onnxruntime's logits must
match striate's evaluation-mode forward within 1e-4 (relative to the largest
logit; its softmax must match ``predict`` likewise) before anything is timed.
Batch 1: median latency of ``--latency-runs`` runs after 50 warm-up runs;
batch 256: images/s from the median of ``--ort-repeats`` runs; each in
ORT_ROUNDS alternating rounds, the times the medians over the rounds and the
ratio the median of the rounds' ratios. ResNet-20 is
not in this table. striate is
timed both through ``predict`` (softmax included, what a user calls) and
through its bare evaluation-mode forward; the ratio is onnxruntime's time
over striate's ``predict`` time (above 1: striate is faster).

The output starts with the CPU model (from /proc/cpuinfo) and the ISA path
striate's kernels take; ``--isa NAME`` sets that path (``st.set_isa``) before
anything is timed, in the RSS child too. ``--torch-isa avx2`` holds PyTorch to
its AVX2 kernels (oneDNN and ATen), as it runs on a CPU without AVX-512, so
that ``--isa avx2 --torch-isa avx2`` on an AVX-512 machine stands in for an
AVX2-only one; the header line says which path PyTorch took. ``--models`` keeps only the named
rows (``lenet5``, ``cifar``, ``tf_cnn``, ``resnet20``) in every table; the
peak RSS line is always LeNet-5's.

Not here: kernel-level timings (``bench_kernels.py``) or accuracy
(``bench_fashion.py``).

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train.py \\
        [--threads 1,2] [--repeats 5] [--isa avx2] [--only torch|onnx] [--models resnet20,...]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import striate as st  # noqa: E402
from striate import optim, training, zoo  # noqa: E402
from bench_machine import add_isa_argument, apply_isa, header  # noqa: E402
from bench_models import tf_cnn, torch_twin  # noqa: E402

torch = None  # imported in main() when available; never in the peak-RSS child
ort = None  # onnxruntime, likewise

TRAIN_BATCH = 64
INFER_BATCH = 256
ORT_TOLERANCE = 1e-4
ORT_ROUNDS = 5  # alternating rounds of the onnxruntime and striate blocks


MODEL_KEYS = ("lenet5", "cifar", "tf_cnn", "resnet20")  # the names ``--models`` accepts


def _models():
    """key -> (row name, builder, input shape) of the models timed against PyTorch."""
    return {
        "lenet5": ("LeNet-5 1x28x28", lambda: zoo.lenet5(input_size=28), (1, 28, 28)),
        "cifar": ("CIFAR net 3x32x32", lambda: zoo.typical_cnn(in_channels=3, num_classes=10), (3, 32, 32)),
        "resnet20": ("ResNet-20 3x32x32", lambda: zoo.resnet20(num_classes=10, in_channels=3), (3, 32, 32)),
    }


def _torch_model(model):
    """The same architecture in torch.nn, loaded strictly with ``model``'s weights (``bench_models.torch_twin``)."""
    return torch_twin(torch, model)


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


def _train_runs(make, shape, steps):
    """``(striate_epoch(seed), torch_epoch(seed) or None, images)``: one training epoch each, warmed up.

    striate's epoch is ``fit`` itself; torch's the same loop by hand, on the
    same batches, from the same weights (checked by ``_validate``).
    """
    st.seed(0)
    model = make()
    x, y = _data(shape, TRAIN_BATCH * steps)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    tm = None
    if torch is not None:
        tm = _torch_model(model)
        _validate(model, tm, shape)
    training.fit(model, x[: TRAIN_BATCH * 2], y[: TRAIN_BATCH * 2], epochs=1, batch_size=TRAIN_BATCH,
                 optimizer=opt, verbose=0, seed=0)  # warm-up

    def s_epoch(seed):
        training.fit(model, x, y, epochs=1, batch_size=TRAIN_BATCH, optimizer=opt, verbose=0, seed=seed)

    if tm is None:
        return s_epoch, None, x.shape[0]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t_opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    tm.train()

    def t_epoch(seed, n_steps=steps):
        order = torch.from_numpy(np.random.default_rng(seed).permutation(x.shape[0]))
        for i in range(n_steps):
            idx = order[i * TRAIN_BATCH : (i + 1) * TRAIN_BATCH]
            t_opt.zero_grad()
            loss = loss_fn(tm(xt[idx]), yt[idx])
            loss.backward()
            t_opt.step()

    t_epoch(0, 2)  # warm-up
    return s_epoch, t_epoch, x.shape[0]


def _infer_runs(make, shape, batches):
    """``(striate_run(seed), torch_run(seed) or None, images)``: batch-256 inference over the same data, warmed up."""
    st.seed(0)
    model = make()
    x, _ = _data(shape, INFER_BATCH * batches)
    model.predict(x[:INFER_BATCH], batch_size=INFER_BATCH)

    def s_run(seed):
        model.predict(x, batch_size=INFER_BATCH)

    s_run(0)  # the plans of nested containers are made on their first planned call
    if torch is None:
        return s_run, None, x.shape[0]
    tm = _torch_model(model)
    _validate(model, tm, shape)
    tm.eval()
    xt = torch.from_numpy(x)

    def t_run(seed):
        with torch.no_grad():
            for b in range(batches):
                torch.softmax(tm(xt[b * INFER_BATCH : (b + 1) * INFER_BATCH]), 1)

    t_run(0)
    return s_run, t_run, x.shape[0]


def _interleaved(s_run, t_run, images, repeats):
    """``(striate img/s, torch img/s or None, ratio or None)`` from ``repeats`` rounds of one run each.

    The runs alternate round by round, so a slow spell of a shared machine
    hits both; the rates come from the median times and the ratio is the
    median of the rounds' own ratios (torch time / striate time).
    """
    s_times, t_times = [], []
    for r in range(repeats):
        for run, times in ((s_run, s_times), (t_run, t_times)):
            if run is None:
                continue
            t0 = time.perf_counter()
            run(r)
            times.append(time.perf_counter() - t0)
    s_rate = images / float(np.median(s_times))
    if not t_times:
        return s_rate, None, None
    ratio = float(np.median([t / s for s, t in zip(s_times, t_times)]))
    return s_rate, images / float(np.median(t_times)), ratio


# --------------------------------------------------------------------------- onnxruntime


def _onnx_models():
    """name -> (builder, input shape) of the models timed against onnxruntime."""
    return {
        "lenet5": ("LeNet-5 1x28x28", lambda: zoo.lenet5(input_size=28), (1, 28, 28)),
        "tf_cnn": ("TF-tutorial CNN 1x28x28", tf_cnn, (1, 28, 28)),
        "cifar": ("typical_cnn 3x32x32", lambda: zoo.typical_cnn(in_channels=3, num_classes=10), (3, 32, 32)),
    }


def _ort_session(path, threads):
    """An onnxruntime CPU session: ``threads`` intra-op threads, 1 inter-op, every graph optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _validate_ort(name, model, run, shape):
    """onnxruntime's logits equal striate's evaluation-mode forward, and its softmax ``predict``, within 1e-4."""
    for n in (1, 16):
        x, _ = _data(shape, n, seed=2)
        ref = model(x)
        got = run(x)
        err = float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) + 1e-12))
        if got.shape != ref.shape or err > ORT_TOLERANCE:
            raise SystemExit(f"validation failed: {name}, batch {n}: onnxruntime's outputs differ from striate's, "
                             f"relative error {err:.2e} > {ORT_TOLERANCE:g}")
        perr = float(np.max(np.abs(_softmax(got.astype(np.float64)) - model.predict(x, batch_size=n))))
        if perr > ORT_TOLERANCE:
            raise SystemExit(f"validation failed: {name}, batch {n}: predict differs from onnxruntime's softmax "
                             f"by {perr:.2e}")


def _median_s(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _settled(timer, *args):
    """``timer(*args)`` after a pause: the worker threads of the block before (onnxruntime's, and
    striate's OpenMP ones) spin for a while after their last run and would take the cores from it."""
    time.sleep(0.2)
    return timer(*args)


def _bench_ort(name, make, shape, threads, latency_runs, big_runs, tmpdir):
    """Rows of batch-1 latency (ms) and batch-256 images/s: onnxruntime, striate predict, striate forward.

    The same model (striate's weights, exported with ``to_onnx``) runs in
    both, after validation. Each framework is timed in its own block (never
    interleaved call by call: onnxruntime's worker threads spin after a run
    and would steal the cores from the next striate call).
    """
    st.seed(0)
    model = make()
    model.eval()
    slug = "".join(ch if ch.isalnum() else "_" for ch in name)
    path = model.to_onnx(os.path.join(tmpdir, f"{slug}_{threads}.onnx"), shape)
    sess = _ort_session(path, threads)
    feed = sess.get_inputs()[0].name

    def run(x):
        return sess.run(None, {feed: x})[0]

    _validate_ort(name, model, run, shape)
    rows = []
    for batch, runs, warmup in ((1, latency_runs, 50), (INFER_BATCH, big_runs, 3)):
        x, _ = _data(shape, batch, seed=3)
        per_round = []  # (onnxruntime, predict, forward) medians of one round of blocks
        for _ in range(ORT_ROUNDS):
            per_round.append(tuple(_settled(_median_s, fn, runs, warmup) for fn in (
                lambda: run(x), lambda: model.predict(x, batch_size=batch), lambda: model(x))))
        t_ort, t_pred, t_fwd = (float(np.median(col)) for col in zip(*per_round))
        ratio = float(np.median([o / p for o, p, _ in per_round]))
        rows.append((name, batch, threads, t_ort, t_pred, t_fwd, ratio))
    return rows


def _print_ort_table(rows):
    print(f"\nInference against onnxruntime {ort.__version__} (CPU provider, intra-op threads = striate's, "
          "inter-op 1, ORT_ENABLE_ALL); batch 1: median latency in ms; batch 256: images/s")
    print("| model | batch | threads | onnxruntime | striate predict | striate forward (eval) "
          "| onnxruntime time / striate predict time |")
    print("|---|---|---|---|---|---|---|")
    for name, batch, t, t_ort, t_pred, t_fwd, ratio in rows:
        if batch == 1:
            cells = [f"{1e3 * v:.3f} ms" for v in (t_ort, t_pred, t_fwd)]
        else:
            cells = [f"{batch / v:,.0f} img/s" for v in (t_ort, t_pred, t_fwd)]
        print(f"| {name} | {batch} | {t} | " + " | ".join(cells) + f" | {ratio:.2f}x |")


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
    ap.add_argument("--latency-runs", type=int, default=300,
                    help="timed batch-1 runs per framework against onnxruntime (median)")
    ap.add_argument("--ort-repeats", type=int, default=10,
                    help="timed batch-256 runs per framework and round against onnxruntime (median)")
    ap.add_argument("--only", choices=("torch", "onnx"), default=None,
                    help="run only the PyTorch tables (training, inference, peak RSS) or only onnxruntime's")
    ap.add_argument("--models", default=",".join(MODEL_KEYS),
                    help=f"comma-separated rows to run, of {', '.join(MODEL_KEYS)} (default: all)")
    ap.add_argument("--torch-isa", choices=("native", "avx2"), default="native",
                    help="vector path of PyTorch's kernels: 'native' (the widest this CPU runs) or 'avx2' "
                         "(ONEDNN_MAX_CPU_ISA=AVX2 and ATEN_CPU_CAPABILITY=avx2, what PyTorch runs on a CPU "
                         "without AVX-512); set before torch is imported")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    add_isa_argument(ap)
    args = ap.parse_args(argv)
    apply_isa(ap, args.isa)
    if args.rss_child:
        _peak_rss_child()
        return 0
    if min(args.repeats, args.steps, args.batches, args.latency_runs, args.ort_repeats) < 1:
        ap.error("--repeats, --steps, --batches, --latency-runs and --ort-repeats must be >= 1")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if min(threads) < 1:
        ap.error(f"--threads must be positive, got {args.threads!r}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODEL_KEYS))
    if unknown or not models:
        ap.error(f"--models must name some of {', '.join(MODEL_KEYS)}, got {args.models!r}")
    args.models = models
    print(header(), flush=True)
    if args.only != "onnx":
        _torch_tables(args, threads)
    if args.only != "torch":
        _onnx_table(args, threads)
    return 0


def _torch_tables(args, threads):
    """Training and batch-256 inference next to PyTorch, and the peak RSS of LeNet-5 training."""
    rss = _peak_rss_mb(max(threads))  # before torch makes this process large
    global torch
    if args.torch_isa == "avx2":
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    try:
        import torch as _torch

        torch = _torch
    except ImportError:
        torch = None
    rows = []
    chosen = [v for k, v in _models().items() if k in args.models]
    if not chosen:
        print("No PyTorch comparison: none of --models is in its table (lenet5, cifar, resnet20)")
    for name, make, shape in chosen:
        for t in threads:
            st.set_num_threads(t)
            if torch is not None:
                torch.set_num_threads(t)
            steps = args.steps if shape[0] == 1 else max(4, args.steps // 3)
            train = _interleaved(*_train_runs(make, shape, steps), args.repeats)
            infer = _interleaved(*_infer_runs(make, shape, args.batches), args.repeats)
            rows.append((name, "train (batch 64)", t, *train))
            rows.append((name, "inference (batch 256)", t, *infer))
            print(f"  done: {name}, {t} thread(s)", file=sys.stderr, flush=True)
    torch_v = f"PyTorch {torch.__version__}" if torch is not None else "PyTorch (not installed)"
    if torch is not None:
        print(f"PyTorch CPU capability: {torch.backends.cpu.get_cpu_capability()}"
              f"{' (--torch-isa avx2)' if args.torch_isa == 'avx2' else ''}")
    if not rows:
        print(f"\nPeak RSS while training LeNet-5 (1x28x28, batch 64, {max(threads)} threads): {rss:.0f} MB")
        return
    print(f"| model | task | threads | striate img/s | {torch_v} img/s | striate / torch |")
    print("|---|---|---|---|---|---|")
    for name, task, t, s, p, r in rows:
        ratio = f"{r:.2f}x" if r else "-"
        print(f"| {name} | {task} | {t} | {s:,.0f} | {f'{p:,.0f}' if p else '-'} | {ratio} |")
    print(f"\nPeak RSS while training LeNet-5 (1x28x28, batch 64, {max(threads)} threads): {rss:.0f} MB")


def _onnx_table(args, threads):
    """Batch-1 latency and batch-256 throughput next to onnxruntime, on the models exported by ``to_onnx``."""
    global ort
    try:
        import onnxruntime as _ort

        ort = _ort
    except ImportError:
        print("\nonnxruntime is not installed: no comparison with it (pip install onnxruntime)")
        return
    rows = []
    chosen = [v for k, v in _onnx_models().items() if k in args.models]
    if not chosen:
        print("\nNo onnxruntime comparison: none of --models is in its table (lenet5, tf_cnn, cifar)")
        return
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, make, shape in chosen:
            for t in threads:
                st.set_num_threads(t)
                rows += _bench_ort(name, make, shape, t, args.latency_runs, args.ort_repeats, tmpdir)
                print(f"  done: {name} vs onnxruntime, {t} thread(s)", file=sys.stderr, flush=True)
    _print_ort_table(rows)


if __name__ == "__main__":
    sys.exit(main())
