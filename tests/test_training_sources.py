"""Tests for training from loaders and streams: fit/evaluate/predict on a DataLoader or an iterable of
batches, steps_per_epoch, resume with the loader's state, MPI sharding, per-batch conversion of arrays
and memmaps (no float32 copy of x), and the data a model remembers (classes, input_shape, dataset)."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

import striate as st
from striate import augment, io, layers as L, optim
from striate.datasets import ArrayDataset, DataLoader, load_digits
from striate.model import Sequential
from striate.training import Callback, NonFiniteError, evaluate, fit, predict


@pytest.fixture(scope="module")
def digits8():
    (x, y), (xt, yt) = load_digits(size=8)
    return x[:320], y[:320], xt[:100], yt[:100]


def conv_model(seed=0):
    st.seed(seed)
    return Sequential([L.Conv2d(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Dropout(0.25), L.Flatten(),
                       L.Linear(64, 10)])


def weights(m):
    return np.concatenate([v.ravel() for v in m.state_dict().values()])


def sgd(m):
    return optim.SGD(m.parameters(), lr=0.05, momentum=0.9)


# --------------------------------------------------------------------------- loaders in fit


def test_an_unshuffled_loader_trains_exactly_like_the_arrays(digits8):
    x, y, xt, yt = digits8
    a, b = conv_model(), conv_model()
    ha = fit(a, x, y, epochs=2, batch_size=32, shuffle=False, seed=3, verbose=0, validation_data=(xt, yt))
    loader = DataLoader(ArrayDataset(x, y), batch_size=32, shuffle=False)
    val = DataLoader(ArrayDataset(xt, yt), batch_size=256, shuffle=False)
    hb = fit(b, loader, epochs=2, seed=3, verbose=0, validation_data=val)
    assert weights(a).tobytes() == weights(b).tobytes()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ha.history[key] == hb.history[key]
    assert b.input_shape == (1, 8, 8)


def test_a_list_of_batches_and_an_array_dataset_are_accepted(digits8):
    x, y, xt, yt = digits8
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 320, 64)]
    a, b, c = conv_model(), conv_model(), conv_model()
    fit(a, batches, epochs=2, seed=1, verbose=0)
    fit(b, x, y, epochs=2, batch_size=64, shuffle=False, seed=1, verbose=0)
    fit(c, ArrayDataset(x, y), epochs=2, batch_size=64, shuffle=False, seed=1, verbose=0)
    assert weights(a).tobytes() == weights(b).tobytes() == weights(c).tobytes()


def test_evaluate_and_predict_on_a_loader_match_the_arrays_and_leave_it_alone(digits8):
    x, y, xt, yt = digits8
    m = conv_model()
    fit(m, x, y, epochs=1, verbose=0, seed=0)
    loader = DataLoader(ArrayDataset(xt, yt), batch_size=30, shuffle=False)
    state = loader.state_dict()
    got, want = evaluate(m, loader), evaluate(m, xt, yt)
    assert got["accuracy"] == want["accuracy"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert loader.state_dict() == state
    np.testing.assert_array_equal(predict(m, loader), predict(m, xt))
    np.testing.assert_array_equal(predict(m, iter([xt[:50], xt[50:]])), predict(m, xt))
    assert m.evaluate(loader)["accuracy"] == want["accuracy"]


def test_a_generator_needs_steps_per_epoch_for_more_than_one_epoch(digits8):
    x, y, _, _ = digits8

    def gen(n):
        for i in range(n):
            j = (i * 32) % 320
            yield x[j:j + 32], y[j:j + 32]

    with pytest.raises(ValueError, match="one-shot iterator .* pass `steps_per_epoch`"):
        fit(conv_model(), gen(10), epochs=2, verbose=0)
    h = fit(conv_model(), gen(10), epochs=1, verbose=0)
    assert len(h.history["loss"]) == 1
    h = fit(conv_model(), gen(9), epochs=3, steps_per_epoch=3, verbose=0)
    assert len(h.history["loss"]) == 3
    with pytest.raises(ValueError, match="ran out of batches at step 2 of epoch 3"):
        fit(conv_model(), gen(7), epochs=3, steps_per_epoch=3, verbose=0)


def test_steps_per_epoch_continues_through_a_loader(digits8):
    x, y, _, _ = digits8
    loader = DataLoader(ArrayDataset(x, y), batch_size=32, shuffle=False)  # 10 batches a pass
    seen = []

    class Spy(Callback):
        def on_batch_end(self, step, logs):
            seen.append(step)

    fit(conv_model(), loader, epochs=3, steps_per_epoch=4, verbose=0, callbacks=[Spy()])
    assert seen == [0, 1, 2, 3] * 3
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 2  # 12 = 10 + 2


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda m, x, y, l: fit(m, x, verbose=0), TypeError, "`y` is required"),
        (lambda m, x, y, l: fit(m, l, y, verbose=0), TypeError, "pass `y` only with array inputs"),
        (lambda m, x, y, l: fit(m, x, y, steps_per_epoch=2, verbose=0), ValueError, "`steps_per_epoch` is for"),
        (lambda m, x, y, l: fit(m, l, validation_split=0.2, verbose=0), ValueError, "`validation_split` needs"),
        (lambda m, x, y, l: fit(m, l, steps_per_epoch=0, verbose=0), ValueError, "steps_per_epoch"),
        (lambda m, x, y, l: fit(m, [(x[:5], y[:5]), (x[:5, :, :4], y[:5])], verbose=0), ValueError,
         "batch 2 of epoch 1 has samples of shape"),
        (lambda m, x, y, l: fit(m, [(x[:5], y[:5] + 20)], verbose=0), ValueError, r"batch 1 of epoch 1.*\[0, 10\)"),
        (lambda m, x, y, l: fit(m, iter([x[:5]]), epochs=1, verbose=0), TypeError, r"must be an \(x_batch, y_batch\) pair"),
        (lambda m, x, y, l: fit(m, ArrayDataset(x, y).get_batch, verbose=0), TypeError, "`y` is required"),
    ],
)
def test_bad_sources_are_refused_clearly(digits8, call, exc, pattern):
    x, y, _, _ = digits8
    loader = DataLoader(ArrayDataset(x, y), batch_size=32)
    with pytest.raises(exc, match=pattern):
        call(conv_model(), x, y, loader)


def test_progress_callbacks_and_the_nonfinite_guard_on_a_loader(digits8, capsys):
    x, y, _, _ = digits8
    fit(conv_model(), DataLoader(ArrayDataset(x, y), batch_size=64), epochs=1, verbose=1)
    assert "5/5" in capsys.readouterr().err
    bad = x[:64].copy()
    bad[3, 0, 0, 0] = np.nan
    m = conv_model()
    before = weights(m)
    with pytest.raises(NonFiniteError, match="epoch 1, step 2"):
        fit(m, [(x[:64], y[:64]), (bad, y[:64])], epochs=1, verbose=0, optimizer=sgd(m))
    assert not np.array_equal(weights(m), before)  # the first step ran, the second did not


def _resume_case(tmp_path, steps_per_epoch):
    (x, y), _ = load_digits(size=16)
    x, y = x[:256], y[:256]
    aug = augment.Compose([augment.RandomAffine(degrees=10, translate=(0.1, 0.1)), augment.RandomCrop(16, 2)])

    def model():
        st.seed(0)
        return Sequential([L.Conv2d(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Dropout(0.25),
                           L.Flatten(), L.Linear(256, 10)])

    def loader(seed):
        return DataLoader(ArrayDataset(x, y), batch_size=40, shuffle=True, seed=seed, augment=aug)

    kw = dict(steps_per_epoch=steps_per_epoch, verbose=0)
    full = model()
    h_full = fit(full, loader(7), epochs=3, seed=5, optimizer=optim.Adam(full.parameters(), 1e-2), **kw)
    ckpt = tmp_path / f"run{steps_per_epoch}.ckpt"
    first = model()
    fit(first, loader(7), epochs=1, seed=5, optimizer=optim.Adam(first.parameters(), 1e-2), checkpoint=ckpt, **kw)
    resumed = model()
    h_res = fit(resumed, loader(99), epochs=3, resume_from=ckpt, **kw)  # the seed comes from the checkpoint
    return full, h_full, resumed, h_res


@pytest.mark.parametrize("steps_per_epoch", [None, 4])
def test_resume_from_a_checkpoint_is_bit_exact_with_a_shuffling_augmenting_loader(tmp_path, steps_per_epoch):
    full, h_full, resumed, h_res = _resume_case(tmp_path, steps_per_epoch)
    assert weights(full).tobytes() == weights(resumed).tobytes()
    assert h_full.history["loss"] == h_res.history["loss"]


def test_a_checkpoint_for_another_loader_is_refused(digits8, tmp_path):
    x, y, _, _ = digits8
    ckpt = tmp_path / "c.ckpt"
    fit(conv_model(), DataLoader(ArrayDataset(x, y), batch_size=32), epochs=1, verbose=0, checkpoint=ckpt)
    with pytest.raises(ValueError, match="the same data and batch_size"):
        fit(conv_model(), DataLoader(ArrayDataset(x, y), batch_size=64), epochs=2, verbose=0, resume_from=ckpt)
    with pytest.raises(ValueError, match="written for other data"):
        fit(conv_model(), DataLoader(ArrayDataset(x[:319], y[:319]), batch_size=32), epochs=2, verbose=0,
            resume_from=ckpt)


def test_distributed_fit_on_a_loader_under_mpiexec_matches_one_process(digits8, tmp_path):
    """Two ranks, each on its shard of every loader batch, end where one process ends (within 1e-5)."""
    from test_distributed import run_mpi

    x, y, _, _ = digits8
    run_mpi(
        """
        import os
        import numpy as np, striate as st
        from striate import layers as L, optim
        from striate.datasets import ArrayDataset, DataLoader, load_digits
        from striate.distributed import rank
        (x, y), _ = load_digits(size=8)
        st.seed(rank())
        m = st.Sequential([L.Flatten(), L.Linear(64, 10)])
        loader = DataLoader(ArrayDataset(x[:320], y[:320]), batch_size=32, seed=11 + rank())
        m.fit(loader, epochs=2, optimizer=optim.SGD(m.parameters(), lr=0.1, momentum=0.9), seed=rank(),
              verbose=0, distributed=True)
        np.save(os.path.join(os.environ["STRIATE_TEST_OUT"], f"rank{rank()}.npy"),
                np.concatenate([p.data.ravel() for p in m.parameters()]))
        """,
        env_extra={"STRIATE_TEST_OUT": str(tmp_path)},
    )
    w0, w1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert w0.tobytes() == w1.tobytes()
    st.seed(0)
    single = Sequential([L.Flatten(), L.Linear(64, 10)])
    fit(single, DataLoader(ArrayDataset(x, y), batch_size=32, seed=11), epochs=2, seed=0, verbose=0,
        optimizer=optim.SGD(single.parameters(), lr=0.1, momentum=0.9))
    np.testing.assert_allclose(w0, np.concatenate([p.data.ravel() for p in single.parameters()]), rtol=0,
                               atol=1e-5)


# --------------------------------------------------------------------------- arrays converted per batch


def test_uint8_trains_exactly_like_the_float32_the_dataset_loaders_return(digits8, tmp_path):
    x, y, xt, yt = digits8
    u8 = np.round(x * 255).astype(np.uint8)
    scaled = u8.astype(np.float32) / np.float32(255.0)  # how load_mnist / load_cifar10 scale
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=u8.shape)
    mm[:] = u8
    mm.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    runs = []
    for data in (scaled, u8, mm, scaled.astype(np.float64)):
        m = conv_model()
        fit(m, data, y, epochs=2, batch_size=32, seed=4, verbose=0, validation_split=0.2)
        runs.append(weights(m).tobytes())
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert evaluate(m, mm, y) == evaluate(m, scaled, y)
    np.testing.assert_array_equal(predict(m, mm), predict(m, scaled))


def test_fit_on_a_50_mb_uint8_memmap_never_allocates_its_float32_copy(tmp_path):
    n = 64_000  # 64,000 x 28 x 28 bytes = 50 MB; as float32 it would be 200 MB
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 1, 28, 28))
    mm[::97] = 200
    mm.flush()
    del mm
    x = np.load(path, mmap_mode="r")
    y = np.arange(n) % 10
    st.seed(0)
    m = Sequential([L.Flatten(), L.Linear(784, 10)])
    tracemalloc.start()
    try:
        fit(m, x, y, epochs=1, batch_size=4096, verbose=0, seed=0)
        evaluate(m, x[:8192], y[:8192], batch_size=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MB traced"


# --------------------------------------------------------------------------- what a model remembers


def _folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "emu"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    return tmp_path / "imgs"


def test_fit_on_an_image_folder_loader_keeps_its_classes_and_the_file_round_trips(tmp_path):
    pytest.importorskip("PIL")
    from striate.datasets import ImageFolder

    ds = ImageFolder(_folder(tmp_path), channels=1)
    st.seed(0)
    m = Sequential([L.Flatten(), L.Linear(64, 3)])
    assert m.classes is None and m.input_shape is None and m.dataset is None
    fit(m, DataLoader(ds, batch_size=5, seed=0), epochs=1, verbose=0)
    assert m.classes == ["cat", "dog", "emu"] and m.input_shape == (1, 8, 8)
    m.dataset = "imagefolder"
    m.save(tmp_path / "m.safetensors")
    back = st.load(tmp_path / "m.safetensors")
    assert (back.classes, back.input_shape, back.dataset) == (["cat", "dog", "emu"], (1, 8, 8), "imagefolder")
    _, meta = io.read_file(tmp_path / "m.safetensors")
    assert json.loads(meta["striate.classes"]) == ["cat", "dog", "emu"]


def test_classes_of_another_length_than_the_outputs_are_not_taken(tmp_path):
    pytest.importorskip("PIL")
    from striate.datasets import ImageFolder

    st.seed(0)
    m = Sequential([L.Flatten(), L.Linear(64, 4)])
    fit(m, DataLoader(ImageFolder(_folder(tmp_path), channels=1), batch_size=6), epochs=1, verbose=0)
    assert m.classes is None


@pytest.mark.parametrize(
    "attr, value, exc",
    [
        ("classes", "cat", TypeError), ("classes", [], ValueError), ("classes", ["a", 1], TypeError),
        ("classes", ["a", "a"], ValueError), ("input_shape", (1, 8), TypeError),
        ("input_shape", (1, 0, 8), ValueError), ("input_shape", (1, 8.0, 8), TypeError),
        ("dataset", 3, TypeError), ("dataset", "my data", ValueError),
    ],
)
def test_bad_model_info_is_refused_when_set(attr, value, exc):
    with pytest.raises(exc, match=f"`{attr}"):
        setattr(Sequential([L.Flatten()]), attr, value)


@pytest.mark.parametrize(
    "key, raw",
    [
        ("striate.classes", '"cat"'), ("striate.classes", '["a", "a"]'), ("striate.classes", "[not json"),
        ("striate.input_shape", "[1, 28]"), ("striate.input_shape", "[1, -28, 28]"),
        ("striate.input_shape", "[1, true, 28]"), ("striate.dataset", '"../etc"'), ("striate.dataset", "null"),
    ],
)
def test_bad_model_info_in_a_file_is_a_format_error(tmp_path, key, raw):
    st.seed(0)
    m = Sequential([L.Flatten(), L.Linear(4, 2)])
    meta = {io.ARCH_KEY: json.dumps(m.to_config(), sort_keys=True), key: raw}
    path = tmp_path / "bad.safetensors"
    io.write_file(path, m.state_dict(), meta)
    with pytest.raises(io.FormatError, match=f"metadata '{key}' is invalid"):
        st.load(path)
    with pytest.raises(io.FormatError, match=f"metadata '{key}' is invalid"):
        io.load_model(path)


# --------------------------------------------------------------------------- metrics in History


def test_fit_records_top_k_accuracies(digits8):
    from striate import metrics

    x, y, xt, yt = digits8
    m = conv_model()
    val = DataLoader(ArrayDataset(xt, yt), batch_size=32, shuffle=False)
    h = fit(m, x, y, epochs=2, seed=0, verbose=0, validation_data=val, metrics=["accuracy", "top_k", "top_2"])
    assert list(h.history) == ["loss", "accuracy", "top_5_accuracy", "top_2_accuracy", "val_loss",
                               "val_accuracy", "val_top_5_accuracy", "val_top_2_accuracy", "lr", "time"]
    probs = predict(m, xt)
    assert h.history["val_top_2_accuracy"][-1] == pytest.approx(metrics.top_k_accuracy(yt, probs, 2), abs=1e-12)
    assert h.history["val_top_5_accuracy"][-1] == pytest.approx(metrics.top_k_accuracy(yt, probs, 5), abs=1e-12)
    assert all(a <= b <= c for a, b, c in zip(h.history["accuracy"], h.history["top_2_accuracy"],
                                             h.history["top_5_accuracy"]))
    h0 = fit(conv_model(), x, y, epochs=2, seed=0, verbose=0, validation_data=val)
    assert h0.history["loss"] == h.history["loss"]  # recording metrics changes nothing else


@pytest.mark.parametrize("metrics, exc", [("top", ValueError), (["top_0"], ValueError), ([5], TypeError),
                                          ({"a": 1}, TypeError), (["f1"], ValueError)])
def test_fit_refuses_unknown_metrics(digits8, metrics, exc):
    x, y, _, _ = digits8
    with pytest.raises(exc, match="`metrics"):
        fit(conv_model(), x, y, epochs=1, verbose=0, metrics=metrics)
