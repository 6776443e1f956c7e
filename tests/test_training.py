"""Tests for striate.training: fit, evaluate, predict, History, callbacks, checkpoints and resume."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import striate as st
from striate import io, layers as L, losses, optim, training
from striate.datasets import load_digits
from striate.model import Sequential
from striate.training import (
    Callback,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    NonFiniteError,
    batch_seed,
    evaluate,
    fit,
    load_checkpoint,
    predict,
    save_checkpoint,
)

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(st.__file__)))


@pytest.fixture(scope="module")
def digits8():
    """The embedded digits at their native 8x8: small enough for fast tests."""
    (x, y), (xt, yt) = load_digits(size=8)
    return x[:320], y[:320], xt[:100], yt[:100]


def linear_model(seed=0):
    st.seed(seed)
    return Sequential([L.Flatten(), L.Linear(64, 10)])


def conv_model(seed=0, p=0.25):
    st.seed(seed)
    return Sequential(
        [
            L.Conv2d(1, 4, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Dropout(p),
            L.Flatten(),
            L.Linear(64, 10),
        ]
    )


def weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def stand_in_augment(x, seed):
    """A tiny augmentation: per-sample random shift of up to one pixel plus noise."""
    rng = np.random.default_rng(seed)
    shifts = rng.integers(-1, 2, size=(x.shape[0], 2))
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(shifts):
        out[i] = np.roll(x[i], (int(dy), int(dx)), axis=(-2, -1))
    return out + rng.normal(0.0, 0.02, size=x.shape).astype(np.float32)


# --------------------------------------------------------------------------- fit basics


def test_fit_learns_and_fills_history(digits8):
    x, y, xt, yt = digits8
    model = linear_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    h = fit(model, x, y, epochs=4, batch_size=32, optimizer=opt, validation_data=(xt, yt), seed=0, verbose=0)
    assert isinstance(h, training.History)
    assert list(h.history) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"]
    assert h.epoch == [0, 1, 2, 3]
    assert all(len(v) == 4 for v in h.history.values())
    assert h.history["lr"] == [0.1] * 4
    assert all(t > 0 for t in h.history["time"])
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h.history["val_accuracy"][-1] > 0.85
    ev = evaluate(model, xt, yt)
    assert ev["accuracy"] == h.history["val_accuracy"][-1]
    assert ev["loss"] == pytest.approx(h.history["val_loss"][-1], rel=1e-12)


def test_sequential_fit_evaluate_predict_delegate(digits8):
    x, y, xt, yt = digits8
    model = linear_model()
    h = model.fit(x, y, epochs=1, seed=0, verbose=0)
    assert len(h.epoch) == 1
    assert set(model.evaluate(xt, yt)) == {"loss", "accuracy"}
    assert model.predict(xt).shape == (xt.shape[0], 10)


def test_default_optimizer_is_sgd_momentum(digits8):
    x, y, _, _ = digits8
    a, b = linear_model(), linear_model()
    fit(a, x, y, epochs=2, seed=3, verbose=0)
    fit(b, x, y, epochs=2, seed=3, verbose=0, optimizer=optim.SGD(b.parameters(), lr=0.01, momentum=0.9))
    assert weights_equal(a, b)


def test_seed_makes_runs_bitwise_equal_and_matters(digits8):
    x, y, _, _ = digits8
    runs = []
    for s in (5, 5, 6):
        m = conv_model()
        fit(m, x, y, epochs=2, batch_size=32, seed=s, verbose=0)
        runs.append(m)
    assert weights_equal(runs[0], runs[1])
    assert not weights_equal(runs[0], runs[2])


def test_fit_uses_its_own_generator_not_the_global_rng(digits8):
    """Shuffling and dropout come from the fit seed: the global RNG state does not matter."""
    x, y, _, _ = digits8
    a, b = conv_model(), conv_model()
    st.seed(1)
    fit(a, x, y, epochs=1, seed=9, verbose=0)
    st.seed(2)
    fit(b, x, y, epochs=1, seed=9, verbose=0)
    assert weights_equal(a, b)
    assert all(isinstance(layer.rng, np.random.Generator) for layer in a if isinstance(layer, L.Dropout))


def test_seed_none_draws_from_global_rng(digits8):
    x, y, _, _ = digits8
    a, b = linear_model(), linear_model()
    st.seed(11)
    fit(a, x, y, epochs=1, verbose=0)
    st.seed(11)
    fit(b, x, y, epochs=1, verbose=0)
    assert weights_equal(a, b)


def test_shuffle_false_keeps_order(digits8):
    x, y, _, _ = digits8
    a, b = linear_model(), linear_model()
    fit(a, x, y, epochs=1, seed=1, shuffle=False, verbose=0)
    fit(b, x, y, epochs=1, seed=2, shuffle=False, verbose=0)
    assert weights_equal(a, b)


def test_inputs_are_converted(digits8):
    x, y, xt, _ = digits8
    x8 = np.round(x * 255).astype(np.uint8)
    runs = []
    for xin in (x8, x8.astype(np.float32) / np.float32(255), (x8.astype(np.float32) / np.float32(255)).astype(np.float64)):
        m = linear_model()
        fit(m, xin, y, epochs=1, seed=0, verbose=0)
        runs.append(m)
    assert weights_equal(runs[0], runs[1]) and weights_equal(runs[0], runs[2])
    m = runs[0]
    xt8 = np.round(xt * 255).astype(np.uint8)
    np.testing.assert_array_equal(predict(m, xt8), predict(m, xt8.astype(np.float32) / np.float32(255)))


def test_validation_split_holds_out_the_tail(digits8):
    x, y, _, _ = digits8
    a, b = linear_model(), linear_model()
    h = fit(a, x, y, epochs=2, seed=0, validation_split=0.25, verbose=0)
    fit(b, x[:240], y[:240], epochs=2, seed=0, verbose=0)
    assert weights_equal(a, b)
    assert h.history["val_accuracy"][-1] == evaluate(a, x[240:], y[240:])["accuracy"]


def test_one_hot_targets_and_squared_error(digits8):
    x, y, xt, yt = digits8
    onehot = np.eye(10, dtype=np.float32)[y]
    a, b = linear_model(), linear_model()
    fit(a, x, onehot, epochs=2, seed=0, loss="squared_error", verbose=0)
    fit(b, x, y, epochs=2, seed=0, loss=losses.SquaredError(), verbose=0)
    assert weights_equal(a, b)
    # evaluate reports the loss the model was trained with.
    expected = losses.SquaredError()(a.eval()(xt), yt)
    a.train()
    assert evaluate(a, xt, yt)["loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"y": np.zeros(5, np.int64)}, ValueError, r"`x` and `y` must have the same length, got 320 and 5"),
        ({"x": np.zeros(320, np.float32)}, ValueError, r"`x` must have a batch dimension"),
        ({"y": np.zeros((320, 10, 1))}, ValueError, r"`y` must be int labels"),
        ({"y": np.full(320, 10)}, ValueError, r"`y` labels must lie in \[0, 10\).*got 10"),
        ({"y": np.full(320, -1)}, ValueError, r"`y` labels must be non-negative, got -1"),
        ({"y": np.full(320, 0.5)}, TypeError, r"`y` labels must be integers"),
        ({"x": np.zeros((320, 1, 8, 8), np.int32)}, TypeError, r"`x` must hold float32, float64 or uint8"),
        ({"epochs": 0}, ValueError, r"`epochs` must be >= 1, got 0"),
        ({"epochs": 2.0}, TypeError, r"`epochs` must be an int"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be >= 1, got 0"),
        ({"loss": "hinge"}, ValueError, r"`loss` must be"),
        ({"validation_split": 1.0}, ValueError, r"`validation_split` must be in \[0, 1\)"),
        ({"validation_split": 0.001}, ValueError, r"`validation_split`=0.001 of 320 samples"),
        ({"verbose": 3}, ValueError, r"`verbose` must be 0, 1 or 2"),
        ({"seed": -1}, ValueError, r"`seed` must be >= 0"),
        ({"augment": 3}, TypeError, r"`augment` must be callable"),
        ({"callbacks": [object()]}, TypeError, r"`callbacks` must hold Callback"),
        ({"validation_data": (np.zeros((4, 1, 8, 8), np.float32), np.zeros(3, np.int64))}, ValueError,
         r"`validation_data\[0\]` and `validation_data\[1\]` must have the same length"),
        ({"validation_data": (np.zeros((4, 1, 8, 8), np.float32), np.full(4, 12))}, ValueError,
         r"`validation_data\[1\]` labels must lie in \[0, 10\)"),
    ],
)
def test_fit_rejects_bad_arguments(digits8, kwargs, exc, pattern):
    x, y, _, _ = digits8
    model = linear_model()
    before = model.state_dict()
    args = {"x": x, "y": y, "epochs": 1, "verbose": 0}
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        fit(model, args.pop("x"), args.pop("y"), **args)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())


def test_distributed_without_mpi_names_the_extra(digits8, monkeypatch):
    from striate import distributed

    x, y, _, _ = digits8
    monkeypatch.setattr(distributed, "available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'striate\[mpi\]'"):
        fit(linear_model(), x, y, epochs=1, verbose=0, distributed=True)


def test_distributed_fit_under_mpiexec_matches_one_process(digits8, tmp_path):
    """Two ranks, each on half of every global batch, end with equal weights, within 1e-5 of one process."""
    from test_distributed import run_mpi

    x, y, _, _ = digits8
    run_mpi(
        """
        import os, json
        import numpy as np, striate as st
        from striate import layers as L, optim
        from striate.datasets import load_digits
        from striate.distributed import rank
        (x, y), _ = load_digits(size=8)
        st.seed(rank())  # different inits: rank 0's weights are broadcast
        m = st.Sequential([L.Flatten(), L.Linear(64, 10)])
        opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        h = m.fit(x[:320], y[:320], epochs=2, batch_size=32, optimizer=opt, seed=rank(), verbose=0,
                  distributed=True)
        out = os.path.join(os.environ["STRIATE_TEST_OUT"], f"rank{rank()}")
        np.save(out + ".npy", np.concatenate([p.data.ravel() for p in m.parameters()]))
        with open(out + ".json", "w") as f:
            json.dump(h.history["loss"], f)
        """,
        env_extra={"STRIATE_TEST_OUT": str(tmp_path)},
    )
    w0, w1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert w0.tobytes() == w1.tobytes()  # every rank holds the same weights
    loss0 = json.loads((tmp_path / "rank0.json").read_text())
    assert loss0 == json.loads((tmp_path / "rank1.json").read_text())
    single = linear_model(seed=0)
    h = fit(single, x, y, epochs=2, batch_size=32, optimizer=optim.SGD(single.parameters(), lr=0.1, momentum=0.9),
            seed=0, verbose=0)
    np.testing.assert_allclose(w0, np.concatenate([p.data.ravel() for p in single.parameters()]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(loss0, h.history["loss"], rtol=1e-5)


def test_cache_features_trains_a_frozen_backbone_once_with_the_same_result(digits8, monkeypatch):
    from striate.training import feature_cache

    x, y, xt, yt = digits8
    calls = []
    real = feature_cache._features
    monkeypatch.setattr(feature_cache, "_features", lambda *a: calls.append(1) or real(*a))
    runs = []
    for cache in (True, False):
        m = conv_model(p=0.25)
        m.freeze(upto=3)
        h = fit(m, x, y, epochs=2, batch_size=32, seed=5, validation_data=(xt, yt), verbose=0, cache_features=cache)
        runs.append((m, h))
    assert len(calls) == 2  # the training and the validation inputs, once, in the cached run only
    assert weights_equal(runs[0][0], runs[1][0])
    assert runs[0][1].history["loss"] == runs[1][1].history["loss"]
    assert [n for n, _ in runs[0][0].named_parameters()] == ["0.weight", "0.bias", "5.weight", "5.bias"]


# --------------------------------------------------------------------------- non-finite guard


class _Snapshots(Callback):
    def __init__(self):
        self.after_step = []
        self.after_epoch = []

    def on_batch_end(self, step, logs=None):
        self.after_step.append(self.model.state_dict())

    def on_epoch_end(self, epoch, logs=None):
        self.after_epoch.append(self.model.state_dict())


def test_nonfinite_loss_stops_before_the_step(digits8):
    x, y, _, _ = digits8
    x = x.copy()
    x[45, 0, 3, 3] = np.nan  # in batch 5 with batch_size 10 and no shuffling
    model = linear_model()
    snaps = _Snapshots()
    with pytest.raises(NonFiniteError, match=r"loss is nan at epoch 1, step 5") as info:
        fit(model, x, y, epochs=2, batch_size=10, shuffle=False, seed=0, callbacks=[snaps], verbose=0)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.epoch, err.step, err.what) == (1, 5, "loss")
    assert len(snaps.after_step) == 4
    last = snaps.after_step[-1]
    assert all(np.array_equal(v, last[k]) for k, v in model.state_dict().items())
    assert model.training  # the mode is restored


class _NaNGradAt(losses.CrossEntropy):
    def __init__(self, call):
        super().__init__()
        self.calls, self.bad = 0, call

    def backward(self):
        self.calls += 1
        g = super().backward()
        if self.calls == self.bad:
            g[0, 0] = np.inf
        return g


def test_nonfinite_gradient_stops_before_the_step(digits8):
    x, y, _, _ = digits8
    model = linear_model()
    snaps = _Snapshots()
    steps = 320 // 32
    with pytest.raises(NonFiniteError, match=r"gradient of 1\.weight is not finite at epoch 2, step 3") as info:
        fit(model, x, y, epochs=3, batch_size=32, loss=_NaNGradAt(steps + 3), seed=0, callbacks=[snaps], verbose=0)
    assert (info.value.epoch, info.value.step, info.value.what) == (2, 3, "1.weight")
    last = snaps.after_step[-1]
    assert len(snaps.after_step) == steps + 2
    assert all(np.array_equal(v, last[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- progress


def test_verbose_levels(digits8, capsys):
    x, y, xt, yt = digits8
    fit(linear_model(), x, y, epochs=2, seed=0, verbose=0)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    fit(linear_model(), x, y, epochs=2, seed=0, verbose=2, validation_data=(xt, yt))
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 2
    assert re.match(r"epoch 2/2 - loss [0-9.e-]+ - accuracy [0-9.]+ - val_loss [0-9.]+ - val_accuracy [0-9.]+ - lr 0.01 - [0-9.]+ s", lines[1])
    fit(linear_model(), x, y, epochs=2, seed=0, verbose=1)
    out = capsys.readouterr()
    assert out.out == ""
    assert "epoch 1/2" in out.err and "epoch 2/2" in out.err and "loss" in out.err and "5/5" in out.err


# --------------------------------------------------------------------------- callbacks


class _Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin",))

    def on_train_end(self, logs=None):
        self.events.append(("train_end",))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, sorted(logs)))

    def on_batch_begin(self, step, logs=None):
        self.events.append(("batch_begin", step, self.state.global_step))

    def on_batch_end(self, step, logs=None):
        self.events.append(("batch_end", step, sorted(logs)))


def test_callback_hooks_in_order(digits8):
    x, y, _, _ = digits8
    rec = _Recorder()
    fit(linear_model(), x[:64], y[:64], epochs=2, batch_size=32, seed=0, callbacks=[rec], verbose=0)
    keys = ["accuracy", "loss", "lr", "time"]
    expected = [("train_begin",)]
    for e in range(2):
        expected.append(("epoch_begin", e))
        for s in range(2):
            expected += [("batch_begin", s, 2 * e + s), ("batch_end", s, ["accuracy", "loss", "lr"])]
        expected.append(("epoch_end", e, keys))
    expected.append(("train_end",))
    assert rec.events == expected
    assert rec.model is not None and rec.optimizer is not None


class _WeightLog(Callback):
    def __init__(self):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.state_dict())


def test_early_stopping_and_restore_best_weights(digits8):
    x, y, _, _ = digits8
    model = linear_model()
    log = _WeightLog()
    # Training loss falls every epoch, so with mode="max" only epoch 0 is "best".
    es = EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    h = fit(model, x, y, epochs=10, seed=0, callbacks=[log, es], verbose=0)
    assert h.epoch == [0, 1, 2]
    assert es.stopped_epoch == 2 and es.best_epoch == 0
    assert all(np.array_equal(v, log.weights[0][k]) for k, v in model.state_dict().items())


def test_early_stopping_patience_zero_and_improvement(digits8):
    x, y, xt, yt = digits8
    es = EarlyStopping(monitor="val_accuracy", patience=0)
    assert es.mode == "max"
    h = fit(linear_model(), x, y, epochs=3, seed=0, validation_data=(xt, yt), callbacks=[es], verbose=0)
    acc = h.history["val_accuracy"]
    # stops at the first epoch that does not improve on the best so far
    assert len(acc) == 3 or acc[-1] <= max(acc[:-1])


def test_early_stopping_needs_the_monitored_key(digits8):
    x, y, _, _ = digits8
    with pytest.raises(ValueError, match=r"'val_loss' is not among the epoch logs.*validation_data"):
        fit(linear_model(), x, y, epochs=2, seed=0, callbacks=[EarlyStopping()], verbose=0)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [({"patience": -1}, r"`patience` must be >= 0"), ({"mode": "up"}, r"`mode` must be"),
     ({"min_delta": -0.1}, r"`min_delta` must be >= 0")],
)
def test_early_stopping_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        EarlyStopping(**kwargs)


def test_model_checkpoint_saves_loadable_models(digits8, tmp_path):
    x, y, xt, yt = digits8
    model = linear_model()
    log = _WeightLog()
    ck = ModelCheckpoint(tmp_path / "m-{epoch:02d}.safetensors", monitor="val_accuracy", save_best_only=True)
    h = fit(model, x, y, epochs=3, seed=0, validation_data=(xt, yt), callbacks=[log, ck], verbose=0)
    acc = h.history["val_accuracy"]
    best_so_far = [i for i in range(3) if acc[i] > max(acc[:i], default=-1)]
    assert ck.saved == [str(tmp_path / f"m-{i + 1:02d}.safetensors") for i in best_so_far]
    for i, path in zip(best_so_far, ck.saved):
        loaded = io.load_model(path)
        assert all(np.array_equal(v, log.weights[i][k]) for k, v in loaded.state_dict().items())
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in ck.saved)  # no temp files left


def test_model_checkpoint_every_epoch_overwrites(digits8, tmp_path):
    x, y, _, _ = digits8
    model = linear_model()
    path = tmp_path / "last.safetensors"
    fit(model, x, y, epochs=2, seed=0, callbacks=[ModelCheckpoint(path)], verbose=0)
    assert weights_equal(io.load_model(path), model)


def test_learning_rate_scheduler_per_epoch(digits8):
    x, y, _, _ = digits8
    model = linear_model()
    h = fit(model, x, y, epochs=3, seed=0, verbose=0,
            callbacks=[LearningRateScheduler(lambda e: 0.1 * 0.5**e)])
    assert h.history["lr"] == [0.1, 0.05, 0.025]


def test_learning_rate_scheduler_per_step_with_striate_schedule(digits8):
    x, y, _, _ = digits8
    model = linear_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.OneCycleLR(opt, max_lr=0.1, total_steps=30)
    seen = []

    class Lr(Callback):
        def on_batch_end(self, step, logs=None):
            seen.append(logs["lr"])

    fit(model, x, y, epochs=3, batch_size=32, optimizer=opt, seed=0, verbose=0,
        callbacks=[LearningRateScheduler(sched, per_step=True), Lr()])
    assert seen == [sched.lr_at(t) for t in range(30)]
    # a per-epoch striate schedule
    model = linear_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    h = fit(model, x, y, epochs=3, optimizer=opt, seed=0, verbose=0,
            callbacks=[LearningRateScheduler(optim.StepLR(opt, step_size=2, gamma=0.1))])
    assert h.history["lr"] == pytest.approx([0.1, 0.1, 0.01], rel=1e-15)


def test_learning_rate_scheduler_rejects_bad_rates(digits8):
    x, y, _, _ = digits8
    with pytest.raises(TypeError, match=r"`schedule` must be callable"):
        LearningRateScheduler(0.1)
    with pytest.raises(ValueError, match=r"finite learning rate >= 0, got -1.0 at t=0"):
        fit(linear_model(), x, y, epochs=1, verbose=0, callbacks=[LearningRateScheduler(lambda e: -1.0)])


# --------------------------------------------------------------------------- augment


def test_augment_gets_deterministic_per_batch_seeds_on_training_batches_only(digits8):
    x, y, xt, yt = digits8
    calls = []

    def aug(xb, seed):
        calls.append((xb.shape[0], seed))
        return xb[:, :, ::-1, :].copy()

    fit(linear_model(), x, y, epochs=2, batch_size=100, seed=4, augment=aug, validation_data=(xt, yt), verbose=0)
    assert [n for n, _ in calls] == [100, 100, 100, 20] * 2  # never the validation data
    seeds = [s for _, s in calls]
    assert all(isinstance(s, int) for s in seeds) and len(set(seeds)) == 8
    again = []
    fit(linear_model(), x, y, epochs=2, batch_size=100, seed=4, verbose=0,
        augment=lambda xb, s: again.append(s) or xb)
    assert again == seeds
    assert batch_seed(1, 0, 0) == batch_seed(1, 0, 0) != batch_seed(1, 0, 1) != batch_seed(1, 1, 0)


def test_augment_changes_training_and_bad_outputs_are_rejected(digits8):
    x, y, _, _ = digits8
    a, b = linear_model(), linear_model()
    fit(a, x, y, epochs=1, seed=0, verbose=0)
    fit(b, x, y, epochs=1, seed=0, verbose=0, augment=stand_in_augment)
    assert not weights_equal(a, b)
    with pytest.raises(ValueError, match=r"`augment` must return an array of shape \(64, ...\)"):
        fit(linear_model(), x, y, epochs=1, seed=0, verbose=0, augment=lambda xb, s: xb[:1])


def test_fit_with_striate_augment_is_seeded(digits8):
    """striate.augment transforms take fit's per-batch int seed: same fit seed, same weights."""
    from striate import augment

    x, y, _, _ = digits8
    aug = augment.Compose([augment.RandomAffine(degrees=10, translate=(0.1, 0.1)), augment.RandomCrop(8, padding=1)])
    runs = []
    for s in (3, 3, 4):
        m = conv_model()
        fit(m, x, y, epochs=1, batch_size=32, seed=s, augment=aug, verbose=0)
        runs.append(m)
    assert weights_equal(runs[0], runs[1]) and not weights_equal(runs[0], runs[2])


# --------------------------------------------------------------------------- checkpoints and resume


def test_save_and_load_checkpoint_round_trip_with_adam(digits8, tmp_path):
    x, y, _, _ = digits8
    model = conv_model()
    opt = optim.Adam(model.parameters(), lr=3e-3, betas=(0.8, 0.99))
    fit(model, x, y, epochs=1, optimizer=opt, seed=0, verbose=0)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, opt, {"note": "hi", "epoch": 1})
    other = conv_model(seed=5)
    opt2 = optim.Adam(other.parameters())
    state = load_checkpoint(path, other, opt2)
    assert state["note"] == "hi" and state["epoch"] == 1 and state["optimizer_class"] == "Adam"
    assert state["optimizer_hparams"]["lr"] == 3e-3
    assert weights_equal(model, other)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k]
    # the file itself is a validated safetensors file with JSON metadata
    tensors, meta = io.read_file(path)
    assert json.loads(meta["striate.checkpoint"])["format"] == "striate-checkpoint"
    assert "model.0.weight" in tensors


def test_load_checkpoint_is_all_or_nothing(digits8, tmp_path):
    x, y, _, _ = digits8
    model = conv_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fit(model, x, y, epochs=1, optimizer=opt, seed=0, verbose=0)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, opt)
    fresh = conv_model(seed=3)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=r"`optimizer` is a Adam but the checkpoint .* holds a SGD"):
        load_checkpoint(path, fresh, optim.Adam(fresh.parameters()))
    with pytest.raises(ValueError):
        load_checkpoint(path, linear_model())
    assert all(np.array_equal(v, fresh.state_dict()[k]) for k, v in before.items())
    # a truncated file and a plain model file are rejected with FormatError
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(io.FormatError):
        load_checkpoint(bad, fresh)
    plain = tmp_path / "plain.safetensors"
    model.save(plain)
    with pytest.raises(io.FormatError, match="not a striate training checkpoint"):
        fit(fresh, x, y, epochs=2, verbose=0, resume_from=plain)
    assert all(np.array_equal(v, fresh.state_dict()[k]) for k, v in before.items())


_RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import striate as st
    from striate import layers as L
    from striate.datasets import load_digits
    from striate.model import Sequential

    ckpt, out, epochs, tests_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sys.path.insert(0, tests_dir)
    from test_training import stand_in_augment

    (x, y), (xt, yt) = load_digits(size=8)
    st.seed(12345)  # a different init: the checkpoint must replace it
    model = Sequential([L.Conv2d(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Dropout(0.25),
                        L.Flatten(), L.Linear(64, 10)])
    h = model.fit(x[:320], y[:320], epochs=epochs, batch_size=32, augment=stand_in_augment,
                  validation_data=(xt[:100], yt[:100]), verbose=0, resume_from=ckpt)
    np.savez(out, **model.state_dict())
    print(repr(h.history["loss"]), repr(h.history["val_accuracy"]))
    """
)


def test_resume_in_a_fresh_process_is_bit_exact(digits8, tmp_path):
    """2N steps straight == N steps + checkpoint + N steps in another process (dropout and augment on)."""
    x, y, xt, yt = digits8
    kw = dict(batch_size=32, augment=stand_in_augment, validation_data=(xt, yt), seed=21, verbose=0)

    def sgd(model):
        return optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)

    straight = conv_model()
    h_straight = fit(straight, x, y, epochs=4, optimizer=sgd(straight), **kw)
    first = conv_model()
    ckpt = tmp_path / "train.ckpt"
    fit(first, x, y, epochs=2, optimizer=sgd(first), checkpoint=ckpt, **kw)
    assert not weights_equal(first, straight)

    # The fresh process builds the model from another init and passes no
    # optimizer: the checkpoint's SGD, its hyper-parameters and state come back.
    out = tmp_path / "resumed.npz"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _RESUME_SCRIPT, str(ckpt), str(out), "4", os.path.dirname(os.path.abspath(__file__))],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    resumed = np.load(out)
    sd = straight.state_dict()
    assert sorted(resumed.files) == sorted(sd)
    for k in sd:
        assert np.array_equal(resumed[k], sd[k]), k
    losses_line, val_line = proc.stdout.strip().splitlines()[-1].split("] [")
    assert [float(v) for v in losses_line.strip("[]").split(",")] == h_straight.history["loss"]
    assert [float(v) for v in val_line.strip("[]").split(",")] == h_straight.history["val_accuracy"]


def test_a_failed_checkpoint_write_leaves_the_previous_one(digits8, tmp_path, monkeypatch):
    """Guarantee 14 at the fit level: a save that dies before the rename keeps the old checkpoint."""
    x, y, _, _ = digits8
    ckpt = tmp_path / "run.ckpt"
    model = linear_model()
    fit(model, x, y, epochs=1, seed=0, checkpoint=ckpt, verbose=0)
    good = ckpt.read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(model, x, y, epochs=1, seed=0, checkpoint=ckpt, verbose=0)
    monkeypatch.undo()
    assert ckpt.read_bytes() == good
    assert os.listdir(tmp_path) == ["run.ckpt"]
    assert load_checkpoint(ckpt, linear_model())["epoch"] == 1


def test_resume_rejects_a_bad_training_state(digits8, tmp_path):
    x, y, _, _ = digits8
    model = linear_model()
    opt = optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "odd.ckpt"
    good = {"epoch": 1, "global_step": 5, "steps_per_epoch": 5, "augment_seed": 1, "dropout_rngs": [],
            "history": {"epoch": [0], "history": {"loss": [1.0]}}}
    for bad in ({"bit_generator": "seed"}, {"bit_generator": "PCG64", "state": "x"}, None):
        state = dict(good, shuffle_rng=bad) if bad is not None else {"epoch": 1}
        save_checkpoint(path, model, opt, state)
        with pytest.raises(io.FormatError, match="training state is invalid or incomplete"):
            fit(linear_model(), x, y, epochs=2, verbose=0, resume_from=path)


def test_resume_continues_history_and_epoch_count(digits8, tmp_path):
    x, y, _, _ = digits8
    ckpt = tmp_path / "c.safetensors"
    m = linear_model()
    fit(m, x, y, epochs=2, seed=0, checkpoint=ckpt, verbose=0)
    h = fit(linear_model(seed=9), x, y, epochs=3, verbose=0, resume_from=ckpt)
    assert h.epoch == [0, 1, 2]
    with pytest.raises(ValueError, match="same data and batch_size"):
        fit(linear_model(), x, y, epochs=3, batch_size=16, verbose=0, resume_from=ckpt)


# --------------------------------------------------------------------------- evaluate / predict


def test_evaluate_and_predict_restore_modes(digits8):
    _, _, xt, yt = digits8
    model = conv_model()
    model.train()
    model[3].eval()
    modes = [layer.training for layer in model]
    evaluate(model, xt, yt)
    predict(model, xt)
    assert [layer.training for layer in model] == modes
    # evaluation mode inside: dropout is off, so repeated calls agree
    np.testing.assert_array_equal(predict(model, xt), predict(model, xt))


def test_predict_is_softmax_unless_model_ends_in_softmax(digits8):
    _, _, xt, _ = digits8
    model = linear_model()
    p = predict(model, xt, batch_size=7)
    assert p.shape == (100, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    z = model(xt).astype(np.float64)
    ref = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p, ref / ref.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    soft = Sequential([L.Flatten(), L.Linear(64, 10), L.Softmax()])
    np.testing.assert_array_equal(predict(soft, xt), soft(xt))


def test_predict_on_an_eval_model_keeps_modes_and_returns_its_own_memory(digits8):
    _, _, xt, _ = digits8
    model = conv_model().eval()
    one = predict(model, xt[:1])
    assert one.shape == (1, 10) and one.flags.owndata and one.flags.writeable
    assert all(not layer.training for layer in model)
    soft = Sequential([L.Flatten(), L.Linear(64, 10), L.Softmax()]).eval()
    p = predict(soft, xt[:5])
    assert not np.shares_memory(p, soft[2]._y)  # the Softmax layer keeps its output for backward
    np.testing.assert_array_equal(p, soft(xt[:5]))
    assert all(not layer.training for layer in soft)


def test_evaluate_is_a_sample_mean_whatever_the_batch_size(digits8):
    _, _, xt, yt = digits8
    model = linear_model()
    a = evaluate(model, xt, yt, batch_size=7)
    b = evaluate(model, xt, yt, batch_size=256)
    assert a["accuracy"] == b["accuracy"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["loss"] == pytest.approx(losses.CrossEntropy()(model(xt), yt), rel=1e-6)
    with pytest.raises(ValueError, match=r"`x` and `y` must have the same length"):
        evaluate(model, xt, yt[:3])
    with pytest.raises(ValueError, match=r"`batch_size` must be >= 1"):
        predict(model, xt, batch_size=0)


# --------------------------------------------------------------------------- History.plot


def test_history_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    h = training.History()
    h._append(0, {"loss": 1.0, "accuracy": 0.5})
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'striate\[viz\]'"):
        h.plot(tmp_path / "h.png")


def test_history_plot_writes_an_image(digits8, tmp_path):
    pytest.importorskip("matplotlib")
    x, y, xt, yt = digits8
    h = fit(linear_model(), x, y, epochs=2, seed=0, validation_data=(xt, yt), verbose=0)
    h.plot(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- determinism


def test_trained_weights_are_identical_for_every_thread_count(digits8):
    """Guarantee 16 end to end: the same fit on 1, 2, 3 and 8 threads gives bitwise-equal weights."""
    x, y, xt, yt = digits8
    results = []
    for threads in (1, 2, 3, 8):
        st.set_num_threads(threads)
        model = conv_model()
        h = fit(model, x, y, epochs=2, batch_size=32, seed=7, augment=stand_in_augment,
                validation_data=(xt, yt), verbose=0)
        results.append((model, h.history["loss"], predict(model, xt)))
    for model, loss, probs in results[1:]:
        assert weights_equal(model, results[0][0])
        assert loss == results[0][1]
        np.testing.assert_array_equal(probs, results[0][2])


def test_model_checkpoint_writes_only_on_the_root_rank(tmp_path):
    """In a distributed run only rank 0 writes files: ModelCheckpoint is silent elsewhere."""
    from striate.training import ModelCheckpoint, TrainState, History

    model = linear_model()
    for is_root, name in ((False, "other.safetensors"), (True, "root.safetensors")):
        cb = ModelCheckpoint(tmp_path / name, monitor="loss")
        cb._bind(model, None, TrainState(1, 1, History(), is_root=is_root))
        cb.on_train_begin({})
        cb.on_epoch_end(0, {"loss": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root.safetensors"]
