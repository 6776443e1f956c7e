"""Tests of striate.transfer (bundled weights, cached features), the finetune subcommand and tools/.

Covers: the bundled LeNet-5 weights (size, accuracy, determinism of the
script that makes them), architecture/shape/dtype checks raising FormatError,
which backbones may be cached, bitwise equality of cached and uncached
training, the fallbacks, freeze/replace_head errors, ``striate finetune`` and a
reduced run of tools/transfer_demo.py. Not here: timing (see the report of
tools/transfer_demo.py and the docstring of cached_fit).
"""

from __future__ import annotations

import inspect
import json
import os
import sys

import numpy as np
import pytest

import striate as st
from striate import cli, io, optim, training, transfer, zoo
from striate import layers as L
from striate.datasets import load_digits, make_shapes

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")


@pytest.fixture(autouse=True)
def _one_thread():
    saved = st.get_num_threads()
    st.set_num_threads(1)
    yield
    st.set_num_threads(saved)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture
def tools_path(monkeypatch):
    monkeypatch.syspath_prepend(TOOLS)


def _states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(np.array_equal(sa[k], sb[k]) for k in sa)


def _uncached_fit(model, x, y, **kwargs):
    """``training.fit`` without the feature cache (once fit has the ``cache_features`` hook)."""
    if "cache_features" in inspect.signature(training.fit).parameters:
        kwargs["cache_features"] = False
    return training.fit(model, x, y, **kwargs)


def _pretrained(num_classes=10, upto=11, seed=3):
    st.seed(seed)
    m = transfer.load_pretrained(zoo.lenet5(), "lenet5_digits")
    m.replace_head(num_classes)
    m.freeze(upto)
    return m


# --------------------------------------------------------------------------- bundled weights


def test_pretrained_file_is_shipped_and_small():
    path = transfer.pretrained_path("lenet5_digits")
    assert os.path.isfile(path)
    assert os.path.getsize(path) < 300 * 1024
    assert os.path.dirname(path) == transfer.DATA_DIR


def test_pretrained_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="`name` must be one of"):
        transfer.pretrained_path("resnet50")
    with pytest.raises(TypeError, match="`name` must be a str"):
        transfer.pretrained_path(3)


def test_pretrained_accuracy_on_digits_test_split(digits):
    _, (xt, yt) = digits
    m = transfer.load_pretrained(zoo.lenet5(), "lenet5_digits")
    assert training.evaluate(m, xt, yt)["accuracy"] >= 0.985


def test_load_pretrained_overwrites_every_tensor():
    st.seed(0)
    a = transfer.load_pretrained(zoo.lenet5(), "lenet5_digits")
    st.seed(1)
    b = transfer.load_pretrained(zoo.lenet5(), "lenet5_digits")
    assert _states_equal(a, b)


def test_zoo_lenet5_pretrained(digits):
    try:
        m = zoo.lenet5(pretrained=True)
    except NotImplementedError:
        pytest.skip("zoo.lenet5 does not load the bundled weights yet")
    assert _states_equal(m, transfer.load_pretrained(zoo.lenet5(), "lenet5_digits"))


@pytest.mark.parametrize(
    "build",
    [
        lambda: zoo.lenet5(num_classes=5),
        lambda: zoo.lenet5(input_size=28),
        lambda: zoo.typical_cnn(in_channels=1),
        lambda: zoo.lenet5().astype(np.float64),
    ],
    ids=["classes", "padding", "architecture", "dtype"],
)
def test_mismatched_pretrained_weights_raise_format_error(build):
    m = build()
    before = m.state_dict()
    with pytest.raises(io.FormatError):
        transfer.load_pretrained(m, "lenet5_digits")
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_same_architecture_wrong_shape_raises_format_error(tmp_path):
    m = zoo.lenet5()
    state = m.state_dict()
    state["11.bias"] = np.zeros(11, np.float32)  # the architecture says 10
    path = tmp_path / "bad.safetensors"
    io.write_file(path, state, {io.ARCH_KEY: json.dumps(m.to_config(), sort_keys=True)})
    with pytest.raises(io.FormatError, match="11.bias"):
        transfer.load_checked(zoo.lenet5(), path)
    io.write_file(path, m.state_dict(), {})
    with pytest.raises(io.FormatError, match="not a striate model"):
        transfer.load_checked(zoo.lenet5(), path)


def test_make_pretrained_is_deterministic(tools_path):
    import make_pretrained

    a, acc_a = make_pretrained.train(seed=7, epochs=1, n_train=160)
    st.set_num_threads(2)
    b, acc_b = make_pretrained.train(seed=7, epochs=1, n_train=160)
    c, _ = make_pretrained.train(seed=8, epochs=1, n_train=160)
    assert _states_equal(a, b) and acc_a == acc_b
    assert not _states_equal(a, c)


# --------------------------------------------------------------------------- freeze / replace_head errors


def test_replace_head_without_linear_raises():
    m = st.Sequential([L.Conv2d(1, 2, 3), L.ReLU(), L.Flatten()])
    with pytest.raises(ValueError, match="no Linear"):
        m.replace_head(3)


@pytest.mark.parametrize("upto", [-1, 13, 100])
def test_freeze_out_of_range_raises(upto):
    with pytest.raises(ValueError):
        zoo.lenet5().freeze(upto)


# --------------------------------------------------------------------------- which backbones are cached


def test_cache_split():
    assert transfer.cache_split(zoo.lenet5()) is None  # nothing frozen
    assert transfer.cache_split(zoo.lenet5().freeze()) is None  # nothing to train
    assert transfer.cache_split(zoo.lenet5().freeze(11)) == 11
    assert transfer.cache_split(zoo.lenet5().freeze(6)) == 7  # frozen up to the next layer with parameters
    assert transfer.cache_split(zoo.typical_cnn().freeze(12)) == 8  # a Dropout ends the backbone
    assert transfer.cache_split(zoo.typical_cnn().freeze(3)) == 5  # through the pooling
    drop_first = st.Sequential([L.Dropout(0.1), L.Flatten(), L.Linear(4, 2)]).freeze(2)
    assert transfer.cache_split(drop_first) is None

    class Custom(L.ReLU):
        pass

    m = st.Sequential([L.Conv2d(1, 2, 3), Custom(), L.Flatten(), L.Linear(8, 2)]).freeze(3)
    assert transfer.cache_split(m) == 1  # an unknown layer type ends the backbone
    m = st.Sequential([Custom(), L.Flatten(), L.Linear(8, 2)]).freeze(2)
    assert transfer.cache_split(m) is None
    assert transfer.cache_split(object()) is None


# --------------------------------------------------------------------------- cached == uncached


def _both(build, x, y, **kwargs):
    a, b = build(), build()
    ha = _uncached_fit(a, x, y, optimizer=optim.SGD(a.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
                      verbose=0, **kwargs)
    hb = transfer.cached_fit(b, x, y, optimizer=optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
                             verbose=0, **kwargs)
    return a, b, ha, hb


@pytest.mark.parametrize("upto", [11, 7])
def test_cached_fit_equals_uncached_bitwise(digits, upto):
    (x, y), (xt, yt) = digits
    x, y = x[:300], y[:300]
    frozen = {k: v for k, v in _pretrained(upto=upto).state_dict().items() if int(k.split(".")[0]) < upto}
    a, b, ha, hb = _both(lambda: _pretrained(upto=upto), x, y, epochs=2, batch_size=32, seed=5,
                         validation_data=(xt[:100], yt[:100]))
    assert hb is not None
    assert _states_equal(a, b)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert ha.history[k] == hb.history[k]
    # The backbone is bit-identical, names and modes are those of the model.
    state = b.state_dict()
    assert all(np.array_equal(state[k], v) for k, v in frozen.items())
    assert [p.name for p in b.parameters()] == [p.name for p in a.parameters()]
    assert b.training
    # evaluate reports the loss fit trained with, on the whole model.
    assert training.evaluate(b, xt, yt) == training.evaluate(a, xt, yt)


def test_cached_fit_equal_with_head_dropout_frozen_batchnorm_and_split(digits):
    (x, y), _ = digits
    x, y = x[:200], y[:200]

    def build():
        st.seed(11)
        m = st.Sequential([
            L.Conv2d(1, 4, 5, stride=2), L.BatchNorm2d(4), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
            L.Dropout(0.3), L.Linear(4 * 7 * 7, 16), L.ReLU(), L.Linear(16, 10),
        ])
        m[1].running_mean[...] = np.linspace(-0.2, 0.2, 4)
        m[1].running_var[...] = np.linspace(0.5, 2.0, 4)
        return m.freeze(5)

    sched = []

    def cbs(opt):
        s = optim.StepLR(opt, step_size=1, gamma=0.5)
        sched.append(s)
        return [training.LearningRateScheduler(s)]

    a, b = build(), build()
    oa = optim.SGD(a.parameters(), lr=0.05, momentum=0.9)
    ob = optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    ha = _uncached_fit(a, x, y, epochs=3, batch_size=32, optimizer=oa, seed=2, verbose=0,
                      validation_split=0.2, callbacks=cbs(oa))
    hb = transfer.cached_fit(b, x, y, epochs=3, batch_size=32, optimizer=ob, seed=2, verbose=0,
                             validation_split=0.2, callbacks=cbs(ob))
    assert hb is not None
    assert _states_equal(a, b)  # includes the BatchNorm running statistics, unchanged
    assert ha.history["val_loss"] == hb.history["val_loss"]
    assert ha.history["lr"] == hb.history["lr"] == [0.05, 0.025, 0.0125]


def test_cached_fit_equal_with_dropout_inside_the_frozen_layers(digits):
    (x, y), _ = digits
    x, y = x[:128], y[:128]

    def build():
        st.seed(4)
        return st.Sequential([
            L.Conv2d(1, 3, 5, stride=3), L.ReLU(), L.Dropout(0.5), L.Conv2d(3, 4, 3), L.Tanh(),
            L.Flatten(), L.Dropout(0.2), L.Linear(4 * 8 * 8, 10),
        ]).freeze(7)

    assert transfer.cache_split(build()) == 2
    a, b, ha, hb = _both(build, x, y, epochs=2, batch_size=16, seed=9)
    assert hb is not None and ha.history["loss"] == hb.history["loss"]
    assert _states_equal(a, b)


def test_cached_fit_uint8_and_early_stopping(digits):
    (x, y), _ = digits
    x8 = np.round(x[:160] * 255).astype(np.uint8)
    y = y[:160]
    cb = lambda: [training.EarlyStopping(monitor="loss", patience=0, restore_best_weights=True)]  # noqa: E731
    a, b = _pretrained(), _pretrained()
    ha = _uncached_fit(a, x8, y, epochs=3, seed=1, verbose=0, callbacks=cb())
    hb = transfer.cached_fit(b, x8, y, epochs=3, seed=1, verbose=0, callbacks=cb())
    assert hb is not None and ha.history["loss"] == hb.history["loss"]
    assert _states_equal(a, b)


@pytest.mark.parametrize(
    "case",
    ["not frozen", "augment", "checkpoint", "resume", "distributed", "model checkpoint", "callback generator",
     "bad validation", "bad x"],
)
def test_cached_fit_falls_back(digits, tmp_path, case):
    (x, y), (xt, yt) = digits
    x, y = x[:64], y[:64]
    m = _pretrained() if case != "not frozen" else zoo.lenet5()
    kwargs = dict(epochs=1, verbose=0)
    if case == "augment":
        kwargs["augment"] = lambda xb, seed: xb
    elif case == "checkpoint":
        kwargs["checkpoint"] = str(tmp_path / "c.safetensors")
    elif case == "resume":
        kwargs["resume_from"] = str(tmp_path / "c.safetensors")
    elif case == "distributed":
        kwargs["distributed"] = True
    elif case == "model checkpoint":
        kwargs["callbacks"] = [training.ModelCheckpoint(str(tmp_path / "m.safetensors"))]
    elif case == "callback generator":
        kwargs["callbacks"] = (cb for cb in [training.EarlyStopping(monitor="loss")])
    elif case == "bad validation":
        kwargs["validation_data"] = (xt,)
    elif case == "bad x":
        x = x.astype(np.int32)
    before = m.state_dict()
    assert transfer.cached_fit(m, x, y, **kwargs) is None
    if case == "callback generator":
        assert len(list(kwargs["callbacks"])) == 1  # not consumed
    assert _states_equal(m, m) and all(np.array_equal(v, m.state_dict()[k]) for k, v in before.items())
    assert not os.listdir(tmp_path)


def test_fit_uses_the_cache_when_it_has_the_hook(digits, monkeypatch):
    if "cache_features" not in inspect.signature(training.fit).parameters:
        pytest.skip("training.fit has no cache_features hook yet")
    (x, y), _ = digits
    from striate.training import feature_cache

    used = []
    real = feature_cache.plan

    def spy(model, *args, **kwargs):
        h = real(model, *args, **kwargs)
        used.append(h is not None)
        return h

    monkeypatch.setattr(feature_cache, "plan", spy)
    m = _pretrained()
    training.fit(m, x[:64], y[:64], epochs=1, verbose=0, seed=0)
    assert used[-1] is True  # fit planned the cache and took it
    used.clear()
    training.fit(_pretrained(), x[:64], y[:64], epochs=1, verbose=0, seed=0, cache_features=False)
    assert used == []


def test_frozen_parameters_bit_identical_after_fit(digits):
    (x, y), _ = digits
    m = _pretrained(upto=9)
    before = m.state_dict()
    training.fit(m, x[:96], y[:96], epochs=1, verbose=0, seed=0)
    after = m.state_dict()
    for k in before:
        same = np.array_equal(before[k], after[k])
        assert same == (int(k.split(".")[0]) < 9), k


# --------------------------------------------------------------------------- striate finetune


@pytest.fixture
def finetune(monkeypatch, capsys):
    if "striate._cli_transfer" not in cli.COMMAND_MODULES:  # until cli lists it
        monkeypatch.setattr(cli, "COMMAND_MODULES", list(cli.COMMAND_MODULES) + ["striate._cli_transfer"])

    def run(*argv):
        rc = cli.main(["finetune", *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def test_finetune_digits_backbone_on_shapes(finetune, tmp_path):
    out_path = tmp_path / "ft.safetensors"
    rc, out, err = finetune("--from", "lenet5", "--dataset", "shapes", "--shots", "5", "--epochs", "20",
                            "--seed", "1", "--out", str(out_path), "--threads", "1")
    assert rc == 0, err
    assert "5 shots x 10 classes" in out and "layers [0, 11) frozen" in out and "cached" in out
    acc = float(out.split("test accuracy ")[1].split("%")[0])
    assert acc > 30.0  # chance is 10%
    m = st.load(out_path)
    ref = transfer.load_pretrained(zoo.lenet5(), "lenet5_digits")
    for k, v in ref.state_dict().items():
        if not k.startswith("11."):
            assert np.array_equal(m.state_dict()[k], v)
    # The same seed gives the same model.
    rc, out2, _ = finetune("--from", "lenet5", "--dataset", "shapes", "--shots", "5", "--epochs", "20",
                           "--seed", "1", "--threads", "1")
    assert rc == 0 and out2.split("test accuracy")[1].split(" in ")[0] == out.split("test accuracy")[1].split(" in ")[0]


def test_finetune_from_saved_file_with_freeze_upto(finetune, tmp_path):
    src = tmp_path / "src.safetensors"
    st.seed(0)
    zoo.lenet5(num_classes=4).save(src)
    rc, out, err = finetune("--from", str(src), "--dataset", "digits", "--shots", "3", "--epochs", "2",
                            "--freeze-upto", "7")
    assert rc == 0, err
    assert "3 shots x 10 classes" in out and "layers [0, 7) frozen" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shots", "0"], "--shots: must be a positive integer"),
        (["--shots", "x"], "--shots: must be a positive integer"),
        (["--epochs", "-3"], "--epochs: must be a positive integer"),
        (["--dataset", "digits", "--shots", "500"], "class 0 has only"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--dataset", "mnist"], "needs --data-root"),
        (["--freeze-upto", "12"], "--freeze-upto must be in [0, 11]"),
        (["--freeze-upto", "-1"], "--freeze-upto must be in [0, 11]"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--from", "no/such/file.safetensors"], "no such file"),
    ],
)
def test_finetune_bad_arguments(finetune, argv, message, monkeypatch, tmp_path):
    monkeypatch.setenv("STRIATE_CACHE_DIR", str(tmp_path))  # no cached MNIST to fall back on
    rc, out, err = finetune(*argv, "--epochs", "1") if "--epochs" not in argv else finetune(*argv)
    usage = message.startswith("--shots:") or message.startswith("--epochs:") or "invalid choice" in message
    assert rc == (2 if usage else 1)  # argparse's usage errors exit 2, runtime errors 1
    assert message in err
    assert "Traceback" not in err


def test_finetune_model_without_linear_and_bad_file(finetune, tmp_path):
    path = tmp_path / "conv.safetensors"
    st.Sequential([L.Conv2d(1, 2, 3), L.Flatten()]).save(path)
    rc, _, err = finetune("--from", str(path), "--epochs", "1")
    assert rc == 1 and "no Linear layer" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    rc, _, err = finetune("--from", str(bad), "--epochs", "1")
    assert rc == 1 and "is not a striate model file" in err


def test_few_shot_indices_stratified_and_seeded():
    from striate._cli_transfer import few_shot_indices

    y = np.repeat(np.arange(4), 7)
    a = few_shot_indices(y, 3, 0)
    assert np.array_equal(np.bincount(y[a]), [3, 3, 3, 3])
    assert np.array_equal(a, few_shot_indices(y, 3, 0))
    assert not np.array_equal(a, few_shot_indices(y, 3, 1))


def test_adapt_inputs_pads_and_converts_channels():
    from striate._cli_transfer import adapt_inputs

    m = zoo.lenet5()
    (x,) = adapt_inputs(m, np.zeros((2, 3, 28, 28), np.float32))
    assert x.shape == (2, 1, 32, 32)


# --------------------------------------------------------------------------- the demonstration, reduced


def test_transfer_demo_reduced(tools_path):
    import transfer_demo

    res = transfer_demo.run(seeds=(0, 1), shots=10, n_pool=6000, n_test=1000, pretrain_epochs=3, epochs=60)
    head, scratch = np.mean(res["head only"]), np.mean(res["from scratch"])
    assert head > scratch + 0.03, res
    assert "| head only |" in transfer_demo.table(res, 10)


def test_docstring_examples():
    import doctest

    assert doctest.testmod(transfer, raise_on_error=False).failed == 0
