"""Train the bundled LeNet-5 weights: ``python/striate/data/lenet5_digits.safetensors``.

Trains ``striate.zoo.lenet5()`` on the training split of the embedded digits
(``striate.datasets.load_digits()``) with a fixed seed, random affine
augmentation, SGD with Nesterov momentum and weight decay under a one-cycle
schedule, then reports the accuracy on the fixed test split and writes the
weights through ``striate.io`` (tensor names of ``state_dict``, architecture in
the metadata).

Determinism: every source of randomness (initialisation, shuffling,
augmentation) comes from ``--seed``, and striate's kernels are bit-identical
for every thread count, so the same seed gives the same file bitwise
(``tests/test_transfer.py`` checks this on a shortened run).

Not here: hyper-parameter search, other architectures or data sets.

Usage::

    PYTHONPATH=python python3 tools/make_pretrained.py            # the shipped file
    PYTHONPATH=python python3 tools/make_pretrained.py --epochs 2 --out /tmp/w.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "python", "striate", "data", "lenet5_digits.safetensors")

# The recipe of the shipped weights.
RECIPE = {
    "seed": 0,
    "epochs": 40,
    "batch_size": 32,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
}


def train(seed=RECIPE["seed"], epochs=RECIPE["epochs"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
          momentum=RECIPE["momentum"], weight_decay=RECIPE["weight_decay"], augment=True, verbose=0,
          n_train=None):
    """Train LeNet-5 on the embedded digits; return ``(model, test_accuracy)``.

    ``n_train`` (optional) trains on the first ``n_train`` training images only
    (for quick determinism checks).
    """
    import striate as st
    from striate import augment as A
    from striate import optim, training, zoo
    from striate.datasets import load_digits

    (x, y), (xt, yt) = load_digits()
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    st.seed(seed)
    model = zoo.lenet5()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    steps = -(-x.shape[0] // batch_size)
    sched = optim.OneCycleLR(opt, max_lr=lr, total_steps=steps * epochs)
    aug = A.RandomAffine(degrees=12, translate=(0.1, 0.1), scale=(0.9, 1.1)) if augment else None
    training.fit(
        model, x, y, epochs=epochs, batch_size=batch_size, optimizer=opt, augment=aug,
        callbacks=[training.LearningRateScheduler(sched, per_step=True)], seed=seed, verbose=verbose,
    )
    acc = training.evaluate(model, xt, yt)["accuracy"]
    return model, acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=RECIPE["seed"])
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2])
    args = p.parse_args(argv)
    import striate as st
    from striate import io

    if args.threads is not None:
        st.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, acc = train(seed=args.seed, epochs=args.epochs, verbose=args.verbose)
    io.save_model(model, args.out)
    size = os.path.getsize(args.out)
    print(f"test accuracy {acc * 100:.2f}% on the digits test split; wrote {args.out} ({size} bytes) "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
