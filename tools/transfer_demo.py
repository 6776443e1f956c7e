"""Measured transfer-learning demonstration: a pretrained backbone versus training from scratch.

The backbone task: LeNet-5 trained on five classes of ``make_shapes``
(horizontal line, diagonal "/", circle, square, plus). The new task: the five
other classes (vertical line, diagonal "\\", semicircle, triangle, "x"), with
only ``--shots`` labelled examples per class (stratified, drawn per seed).
Two arms on the same examples:

- ``head only``: the pretrained network, ``replace_head(5)``, ``freeze(11)``,
  only the last Linear trained (on cached backbone features);
- ``from scratch``: the same architecture freshly initialised, every layer trained.

Both are scored on a held-out test set of the new classes. Prints a markdown
table, mean ± std over the seeds. ``tests/test_transfer.py`` runs a reduced
version. Recipes: the backbone, 6 epochs of SGD (Nesterov, one-cycle, peak
lr 0.02) on the 6,000 source images of a 12,000-image pool; each arm, 100
epochs of Adam with batch 16 (lr 1e-2 for the head, 3e-3 from scratch, each
the better of {1e-3, 3e-3, 1e-2} on trial runs). Not here: hyper-parameter
search or augmentation. ``--pairing digits-to-shapes`` measures the bundled
digits weights on all ten shape classes instead: there the head alone does
worse than training from scratch (digit-specific features separate shapes
poorly), which is why the demonstration splits the shape classes.

Usage::

    PYTHONPATH=python python3 tools/transfer_demo.py            # 5 seeds, 10 shots
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

SOURCE = (0, 2, 4, 6, 8)  # indices into datasets.SHAPE_CLASSES
TARGET = (1, 3, 5, 7, 9)


def _subset(x, y, classes):
    classes = np.asarray(classes)
    keep = np.isin(y, classes)
    return x[keep], np.searchsorted(classes, y[keep]).astype(np.int64)


def make_tasks(n_pool=12000, n_test=2000, data_seed=11):
    """``(source_train, target_pool, target_test)``, each an ``(x, y)`` pair with labels 0..4."""
    from striate.datasets import make_shapes

    xs, ys = make_shapes(n_pool, seed=data_seed)
    xt, yt = make_shapes(n_test, seed=data_seed + 1)
    return _subset(xs, ys, SOURCE), _subset(xs, ys, TARGET), _subset(xt, yt, TARGET)


def pretrain(x, y, epochs=6, seed=0, lr=0.02):
    """LeNet-5 trained on the source task (SGD, Nesterov, one-cycle)."""
    import striate as st
    from striate import optim, training, zoo

    st.seed(seed)
    model = zoo.lenet5(num_classes=int(y.max()) + 1)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = -(-x.shape[0] // 32)
    sched = optim.OneCycleLR(opt, max_lr=lr, total_steps=steps * epochs)
    training.fit(model, x, y, epochs=epochs, batch_size=32, optimizer=opt, seed=seed, verbose=0,
                 callbacks=[training.LearningRateScheduler(sched, per_step=True)])
    return model


def few_shot(y, shots, seed):
    """Sorted indices of ``shots`` examples of each class, drawn without replacement."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([
        rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in range(int(y.max()) + 1)
    ]))


def head_only(pretrained_state, x, y, x_test, y_test, seed, epochs=100, lr=1e-2):
    """Accuracy of the pretrained network with a new head, only the head trained."""
    import striate as st
    from striate import optim, training, transfer, zoo

    model = zoo.lenet5(num_classes=pretrained_state["11.bias"].shape[0])
    model.load_state_dict(pretrained_state)
    st.seed(seed)
    model.replace_head(int(y.max()) + 1)
    model.freeze(len(model) - 1)
    opt = optim.Adam(model.parameters(), lr=lr)
    kwargs = dict(epochs=epochs, batch_size=16, optimizer=opt, seed=seed, verbose=0)
    if transfer.cached_fit(model, x, y, **kwargs) is None:  # the same result, only slower
        training.fit(model, x, y, **kwargs)
    return training.evaluate(model, x_test, y_test)["accuracy"]


def scratch(x, y, x_test, y_test, seed, epochs=100, lr=3e-3):
    """Accuracy of the same architecture trained from a fresh initialisation on the few shots."""
    import striate as st
    from striate import optim, training, zoo

    st.seed(seed)
    model = zoo.lenet5(num_classes=int(y.max()) + 1)
    opt = optim.Adam(model.parameters(), lr=lr)
    training.fit(model, x, y, epochs=epochs, batch_size=16, optimizer=opt, seed=seed, verbose=0)
    return training.evaluate(model, x_test, y_test)["accuracy"]


def _arms(state, pool, test, seeds, shots, epochs):
    (xp, yp), (xt, yt) = pool, test
    out = {"head only": [], "from scratch": []}
    for seed in seeds:
        idx = few_shot(yp, shots, seed)
        x, y = xp[idx], yp[idx]
        out["head only"].append(head_only(state, x, y, xt, yt, seed, epochs=epochs))
        out["from scratch"].append(scratch(x, y, xt, yt, seed, epochs=epochs))
    return out


def run(seeds=(0, 1, 2, 3, 4), shots=10, n_pool=12000, n_test=2000, pretrain_epochs=6, epochs=100, pretrain_lr=0.02):
    """Shapes split: both arms for every seed; ``{"head only": [...], "from scratch": [...]}`` accuracies."""
    (xs, ys), pool, test = make_tasks(n_pool, n_test)
    backbone = pretrain(xs, ys, epochs=pretrain_epochs, lr=pretrain_lr)
    return _arms(backbone.state_dict(), pool, test, seeds, shots, epochs)


def run_digits_to_shapes(seeds=(0, 1, 2, 3, 4), shots=10, n_pool=6000, n_test=2000, epochs=100):
    """The bundled digits backbone (``zoo.lenet5`` weights) on all ten shape classes."""
    from striate import transfer, zoo
    from striate.datasets import make_shapes

    state = transfer.load_pretrained(zoo.lenet5(), "lenet5_digits").state_dict()
    return _arms(state, make_shapes(n_pool, seed=11), make_shapes(n_test, seed=12), seeds, shots, epochs)


def table(results, shots, classes=len(TARGET)):
    rows = ["| arm | trained parameters | test accuracy (mean ± std) | per seed |", "|---|---|---|---|"]
    head = 85 * classes
    trained = {"head only": f"last Linear ({head:,})", "from scratch": f"all ({61706 - 850 + head:,})"}
    for arm, accs in results.items():
        a = np.asarray(accs) * 100
        rows.append(f"| {arm} | {trained[arm]} | {a.mean():.1f} ± {a.std():.1f} % | "
                    + ", ".join(f"{v:.1f}" for v in a) + " |")
    gap = (np.mean(results["head only"]) - np.mean(results["from scratch"])) * 100
    rows.append("")
    rows.append(f"{shots} labelled examples per class, {len(results['head only'])} seeds; "
                f"head only minus from scratch: {gap:+.1f} accuracy points.")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pairing", choices=["shapes-split", "digits-to-shapes"], default="shapes-split",
                   help="shapes-split (default): 5 shape classes -> the 5 others; "
                        "digits-to-shapes: the bundled digits weights -> 10 shape classes")
    args = p.parse_args(argv)
    import striate as st

    if args.threads is not None:
        st.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.pairing == "shapes-split":
        results = run(seeds=tuple(range(args.seeds)), shots=args.shots)
        print(table(results, args.shots))
    else:
        results = run_digits_to_shapes(seeds=tuple(range(args.seeds)), shots=args.shots)
        print(table(results, args.shots, classes=10))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
