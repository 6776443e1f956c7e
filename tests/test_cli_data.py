"""Tests for the command line's data options and what it does with a model's recorded data:
--dataset/--data-root/--download on every subcommand, image folders, evaluate --report/--plot,
predict on images, folders and arrays with class names, and one-line errors with exit status 1.

Every data set is made here, in tmp_path: small IDX files and small image folders (no network,
no Debian package)."""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest

import striate as st
from striate import _cli_data, cli, io, zoo
from striate.datasets import FASHION_MNIST_CLASSES

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def idx_bytes(arr):
    head = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """Fashion-MNIST-shaped IDX files: 120 training and 30 test images whose class sets a bright band."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    sets = []
    for n in (120, 30):
        y = np.arange(n) % 10
        x = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, 2 * c + 4 : 2 * c + 7, 4:24] = 250
        sets += [x, y.astype(np.uint8)]
    for stem, arr in zip(STEMS, sets):
        (root / (stem + ".gz")).write_bytes(gzip.compress(idx_bytes(arr)))
    return root


@pytest.fixture(scope="module")
def fashion_model(fashion_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("fm") / "fashion.safetensors"
    rc = cli.main(["train", "--dataset", "fashion-mnist", "--data-root", str(fashion_root), "--epochs", "3",
                   "--verbose", "0", "--threads", "1", "--out", str(path), "--batch-size", "16"])
    assert rc == 0
    return path


def make_folder(root, rng, n=8):
    """root/<class>/<image>: PNG and JPEG, grey and colour, of different sizes."""
    from PIL import Image

    for k, name in enumerate(("circle", "square", "stripes")):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            size = 36 if i % 2 else 40
            a = rng.integers(0, 30, (size, size), dtype=np.uint8)
            a[k * 12 : k * 12 + 10, :] = 240
            img = Image.fromarray(a)
            if i % 3 == 0:
                img = img.convert("RGB")
            img.save(d / f"{i}.{'jpg' if i % 4 == 1 else 'png'}")
        (d / "notes.txt").write_text("ignored")
    return root


# --------------------------------------------------------------------------- recorded data set


def test_train_records_the_data_set_and_its_class_names(fashion_model):
    model = st.load(fashion_model)
    assert model.dataset == "fashion-mnist"
    assert model.classes == list(FASHION_MNIST_CLASSES)
    assert model.input_shape == (1, 28, 28)


def test_evaluate_defaults_to_the_recorded_data_set(fashion_model, fashion_root, capsys):
    rc, out, err = run(capsys, "evaluate", str(fashion_model), "--data-root", str(fashion_root))
    assert rc == 0, err
    assert out.strip().endswith("on 30 images")
    # Asked for explicitly, the digits are drawn at the model's 28x28.
    rc, out, err = run(capsys, "evaluate", str(fashion_model), "--dataset", "digits")
    assert rc == 0 and out.strip().endswith("on 359 images"), err


def test_evaluate_report_and_plot(fashion_model, fashion_root, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "cm.png"
    rc, out, err = run(capsys, "evaluate", str(fashion_model), "--data-root", str(fashion_root), "--report",
                       "--plot", str(png))
    assert rc == 0, err
    assert "precision    recall  f1-score   support" in out
    assert "Ankle boot" in out and "weighted avg" in out
    assert "confusion matrix (rows: true class, columns: predicted)" in out
    rows = [l for l in out.splitlines() if l.strip().startswith(("Trouser", "Sandal"))]
    assert len(rows) >= 4  # a report row and a matrix row for each
    assert png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in out


def test_predict_prints_class_names_for_arrays_of_every_rank(fashion_model, fashion_root, capsys, tmp_path):
    from striate.datasets import load_fashion_mnist

    _, (xt, yt) = load_fashion_mnist(fashion_root)
    np.save(tmp_path / "hw.npy", xt[0, 0])
    np.save(tmp_path / "chw.npy", xt[1])
    np.save(tmp_path / "nchw.npy", xt[:3])
    rc, out, err = run(capsys, "predict", str(fashion_model), *(str(tmp_path / f) for f in
                                                                ("hw.npy", "chw.npy", "nchw.npy")), "--top", "2")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5
    probs = st.load(fashion_model).predict(xt[:3])
    top = FASHION_MNIST_CLASSES[int(np.argmax(probs[0]))]
    assert lines[0].split("\t")[1].startswith(f"{top} (") and lines[2].split("\t")[1].startswith(f"{top} (")
    assert all(len(l.split("\t")) == 3 for l in lines)


def test_lr_sweep_and_visualize_take_the_data_set(fashion_model, fashion_root, capsys, tmp_path):
    rc, out, err = run(capsys, "lr-sweep", str(fashion_model), "--data-root", str(fashion_root), "--steps", "4",
                       "--batch-size", "8")
    assert rc == 0, err
    assert out.strip().splitlines()[-1].startswith("suggested lr: ")
    pytest.importorskip("matplotlib")
    rc, out, err = run(capsys, "visualize", str(fashion_model), "--data-root", str(fashion_root), "--out",
                       str(tmp_path / "viz"))
    assert rc == 0, err
    assert (tmp_path / "viz" / "activations.png").exists()


def test_download_reaches_the_loader(monkeypatch, capsys, tmp_path):
    calls = []

    def fake(root=None, download=False):
        calls.append((root, download))
        raise FileNotFoundError("not here; pass download=True or pass root= the folder holding them")

    monkeypatch.setattr(st.datasets, "load_fashion_mnist", fake)
    for command in (["train"], ["lr-sweep"], ["finetune", "--epochs", "1"]):
        rc, _, err = run(capsys, *command, "--dataset", "fashion-mnist", "--download")
        assert rc == 1 and "pass --download" in err and "download=True" not in err
    assert calls == [(None, True)] * 3


def test_mnist_without_a_root_says_how_to_get_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("STRIATE_CACHE_DIR", str(tmp_path))
    rc, _, err = run(capsys, "train", "--dataset", "mnist")
    assert rc == 1 and "--data-root" in err and "--download" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- image folders


def test_train_on_an_image_folder_then_predict_files_and_folders(tmp_path, capsys):
    pytest.importorskip("PIL")
    root = make_folder(tmp_path / "pics", np.random.default_rng(1))
    out = tmp_path / "folder.safetensors"
    rc, text, err = run(capsys, "train", "--dataset", "imagefolder", "--data-root", str(root), "--epochs", "2",
                        "--verbose", "0", "--val-split", "0.25", "--out", str(out), "--batch-size", "4")
    assert rc == 0, err
    assert text.strip().splitlines()[-1].startswith("test accuracy")
    model = st.load(out)
    assert model.classes == ["circle", "square", "stripes"]
    assert model.input_shape == (1, 32, 32) and model.dataset == "imagefolder"
    rc, text, err = run(capsys, "predict", str(out), str(root / "square"), str(root / "circle" / "1.jpg"))
    assert rc == 0, err
    lines = text.strip().splitlines()
    assert len(lines) == 8 + 1
    assert all(l.split("\t")[1].split(" ")[0] in model.classes for l in lines)
    assert "resized" in err and "to 32x32" in err
    rc, text, err = run(capsys, "evaluate", str(out), "--data-root", str(root))
    assert rc == 0 and text.strip().endswith("on 24 images"), err


def test_image_size_and_errors_of_image_folders(tmp_path, capsys):
    pytest.importorskip("PIL")
    root = make_folder(tmp_path / "pics", np.random.default_rng(2), n=4)
    out = tmp_path / "m.safetensors"
    rc, _, err = run(capsys, "train", "--dataset", "imagefolder", "--data-root", str(root), "--image-size", "28",
                     "--epochs", "1", "--verbose", "0", "--out", str(out), "--val-split", "0")
    assert rc == 0, err
    assert st.load(out).input_shape == (1, 28, 28)
    rc, _, err = run(capsys, "train", "--dataset", "imagefolder", "--epochs", "1")
    assert rc == 1 and "needs --data-root" in err
    (root / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rc, _, err = run(capsys, "train", "--dataset", "imagefolder", "--data-root", str(root), "--epochs", "1",
                     "--verbose", "0", "--out", str(out))
    assert rc == 1 and "broken.png" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "predict", str(out), str(root / "circle" / "broken.png"))
    assert rc == 1 and err.startswith("striate: error: ") and "broken.png" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "train", "--dataset", "imagefolder", "--image-size", "0")
    assert rc == 2 and "--image-size" in err


# --------------------------------------------------------------------------- bad images on the command line


def save_png(path, h, w, rng):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def lenet32(tmp_path):
    st.seed(0)
    model = zoo.lenet5()
    model.input_shape = (1, 32, 32)
    path = tmp_path / "lenet32.safetensors"
    model.save(path)
    return path


def one_line_error(rc, err):
    return rc == 1 and err.startswith("striate: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_predict_enlarges_28_pixel_images_but_refuses_tiny_ones(lenet32, tmp_path, capsys):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(3)
    digit = save_png(tmp_path / "imgs" / "digit.png", 28, 28, rng)
    rc, out, err = run(capsys, "predict", str(lenet32), str(digit))
    assert rc == 0 and out.startswith(f"{digit}\t"), err
    assert f"resized {digit} from 28x28 to 32x32 (H x W, the model's input)" in err
    wide = save_png(tmp_path / "wide.png", 20, 30, rng)  # 20 rows of 30 pixels
    rc, out, err = run(capsys, "predict", str(lenet32), str(wide))
    assert rc == 0 and f"resized {wide} from 20x30 to 32x32 (H x W" in err, err
    tiny = save_png(tmp_path / "imgs" / "tiny.png", 6, 5, rng)
    rc, out, err = run(capsys, "predict", str(lenet32), str(digit), str(tiny))
    assert one_line_error(rc, err) and out == "", err
    assert (f"{tiny} is 6x5 (H x W), too small for the model's input 32x32: it would be enlarged 6.4 times, "
            "more than --max-upscale 4; pass --max-upscale 6.4 or more to allow it") in err
    assert "max_upscale" not in err
    rc, out, err = run(capsys, "predict", str(lenet32), str(tiny), "--max-upscale", "6.4")
    assert rc == 0 and out.startswith(f"{tiny}\t"), err
    rc, out, err = run(capsys, "predict", str(lenet32), str(tiny), "--max-upscale", "inf")
    assert rc == 0, err
    if importlib.util.find_spec("matplotlib") is not None:  # visualize --input reads images the same way
        viz = ["visualize", str(lenet32), "--out", str(tmp_path / "viz"), "--input", str(tiny)]
        rc, _, err = run(capsys, *viz)
        assert one_line_error(rc, err) and "pass --max-upscale 6.4 or more" in err
        rc, _, err = run(capsys, *viz, "--max-upscale", "6.4")
        assert rc == 0, err
    line = save_png(tmp_path / "imgs" / "line.png", 1, 40, rng)
    rc, _, err = run(capsys, "predict", str(lenet32), str(line), "--max-upscale", "inf")
    assert one_line_error(rc, err) and f"{line} is only 1 pixel tall" in err
    line.unlink()
    rc, out, err = run(capsys, "predict", str(lenet32), str(tmp_path / "imgs"))  # a folder: digit.png, then tiny.png
    assert one_line_error(rc, err) and f"{tiny} is 6x5" in err and out == ""


@pytest.mark.parametrize("value", ["0.5", "nan", "-inf", "four"])
def test_max_upscale_must_be_a_number_of_at_least_one(lenet32, tmp_path, value, capsys):
    rc, _, err = run(capsys, "predict", str(lenet32), str(tmp_path / "x.png"), f"--max-upscale={value}")
    assert rc == 2 and "--max-upscale: must be a number >= 1" in err
    rc, _, err = run(capsys, "train", f"--max-upscale={value}")
    assert rc == 2 and "--max-upscale" in err


def test_image_folder_with_a_tiny_image_is_refused_by_every_command(tmp_path, capsys):
    pytest.importorskip("PIL")
    root = make_folder(tmp_path / "pics", np.random.default_rng(4), n=3)
    tiny = save_png(root / "square" / "tiny.png", 5, 7, np.random.default_rng(5))
    out = tmp_path / "m.safetensors"
    train = ["train", "--dataset", "imagefolder", "--data-root", str(root), "--epochs", "1", "--verbose", "0",
             "--out", str(out), "--val-split", "0"]
    rc, _, err = run(capsys, *train)
    assert one_line_error(rc, err) and not out.exists(), err
    assert (f"{tiny} is 5x7 (H x W), too small for the model's input 32x32: it would be enlarged 6.4 times, "
            "more than --max-upscale 4; pass --max-upscale 6.4 or more to allow it") in err
    rc, _, err = run(capsys, *train, "--model", "typical_cnn", "--image-size", "20")  # 4 times: allowed
    assert rc == 0, err
    rc, _, err = run(capsys, *train, "--max-upscale", "6.4")
    assert rc == 0, err
    pytest.importorskip("matplotlib")
    for argv in (["evaluate", str(out)], ["lr-sweep", str(out), "--steps", "2", "--batch-size", "4"],
                 ["finetune", "--from", str(out), "--epochs", "1", "--shots", "1", "--seed", "0"],
                 ["visualize", str(out), "--out", str(tmp_path / "viz")]):
        rc, _, err = run(capsys, *argv, "--dataset", "imagefolder", "--data-root", str(root))
        assert one_line_error(rc, err) and f"{tiny} is 5x7" in err, (argv, err)
        rc, _, err = run(capsys, *argv, "--dataset", "imagefolder", "--data-root", str(root), "--max-upscale", "7")
        assert rc == 0, (argv, err)


def test_bad_image_folders_are_one_line_errors_naming_the_path(tmp_path, capsys):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(6)
    train = ["train", "--dataset", "imagefolder", "--epochs", "1", "--verbose", "0", "--val-split", "0", "--out",
             str(tmp_path / "m.safetensors"), "--data-root"]
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, *train, str(empty))
    assert one_line_error(rc, err) and f"{empty} has no class folders" in err
    root = tmp_path / "pics"
    save_png(root / "a" / "1.png", 32, 32, rng)
    (root / "b").mkdir()
    rc, _, err = run(capsys, *train, str(root))
    assert one_line_error(rc, err) and f"class folder(s) with no images" in err and str(root / "b") in err
    fake = root / "b" / "notes.jpg"
    fake.write_text("a text file with an image's extension")
    rc, _, err = run(capsys, *train, str(root))
    assert one_line_error(rc, err) and f"{fake}: cannot read this image" in err


def test_predict_refuses_files_that_are_not_images_or_do_not_fit(lenet32, tmp_path, capsys):
    fake = tmp_path / "notes.png"
    fake.write_text("a text file with an image's extension")
    rc, _, err = run(capsys, "predict", str(lenet32), str(fake))
    assert one_line_error(rc, err) and f"{fake}: cannot read this image" in err
    for shape, have in (((1, 40, 40), "1x40x40"), ((2, 32, 32), "2x32x32")):
        arr = tmp_path / f"{have}.npy"
        np.save(arr, np.zeros(shape, np.float32))
        rc, _, err = run(capsys, "predict", str(lenet32), str(arr))
        assert one_line_error(rc, err) and f"the model takes 1x32x32 inputs (C x H x W), {arr} has {have}" in err


# --------------------------------------------------------------------------- files and errors


def test_a_file_that_is_not_a_model_says_so(tmp_path, capsys):
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    plain = tmp_path / "plain.safetensors"
    io.write_file(plain, {"w": np.zeros(3, np.float32)})
    for path in (png, plain):
        for argv in (["evaluate", str(path)], ["predict", str(path), str(png)], ["summary", str(path)],
                     ["export", str(path), str(tmp_path / "o.onnx")]):
            rc, _, err = run(capsys, *argv)
            assert rc == 1 and f"striate: error: {path} is not a striate model file" in err, (argv, err)


def test_a_damaged_model_is_not_called_a_non_model(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    st.seed(0)
    zoo.lenet5().save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    rc, _, err = run(capsys, "evaluate", str(path))
    assert rc == 1 and "SHA-256 mismatch" in err and "not a striate model" not in err


def test_export_to_a_bad_path_names_that_path(tmp_path, capsys):
    target = tmp_path / "missing" / "out.onnx"
    rc, _, err = run(capsys, "export", "lenet5", str(target))
    assert rc == 1 and str(target) in err and ".tmp" not in err
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        rc, _, err = run(capsys, "export", "lenet5", str(tmp_path / "ro" / "x.onnx"))
    finally:
        (tmp_path / "ro").chmod(0o700)
    if rc != 0:  # (root may write anyway)
        assert rc == 1 and str(tmp_path / "ro" / "x.onnx") in err and ".tmp" not in err


def test_finetune_takes_data_root_and_keeps_root_hidden(capsys, fashion_root):
    rc, out, err = run(capsys, "finetune", "--dataset", "fashion-mnist", "--data-root", str(fashion_root),
                       "--shots", "2", "--epochs", "1")
    assert rc == 0, err
    rc, out2, err = run(capsys, "finetune", "--dataset", "fashion-mnist", "--root", str(fashion_root),
                        "--shots", "2", "--epochs", "1")
    assert rc == 0, err
    assert out.splitlines()[0] == out2.splitlines()[0]
    assert cli.main(["finetune", "--help"]) == 0
    helptext = capsys.readouterr().out
    assert "--data-root" in helptext and "--root " not in helptext and "--download" in helptext


@pytest.mark.parametrize("command", ["train", "evaluate", "finetune", "lr-sweep", "visualize"])
def test_every_data_command_takes_the_same_options(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--dataset", "--data-root", "--download", "fashion-mnist", "imagefolder"):
        assert option in text


def test_an_unexpected_exception_is_one_line_too(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))
    cli.register("boom", "fails", lambda p: None, boom)
    rc, _, err = run(capsys, "boom")
    assert rc == 1 and err == "striate: error: RuntimeError: something broke\n"


def test_resnet20_is_a_model_choice_once_the_zoo_has_it():
    assert ("resnet20" in _cli_data.MODELS) == hasattr(zoo, "resnet20")
    assert {"lenet5", "typical_cnn"} <= set(_cli_data.MODELS)


def test_predict_feeds_arrays_to_a_model_whose_input_cannot_be_inferred(tmp_path, capsys):
    st.seed(0)
    path = tmp_path / "flat.safetensors"
    st.Sequential([st.layers.Flatten(), st.layers.Linear(4, 2)]).save(path)
    np.save(tmp_path / "x.npy", np.ones((3, 1, 2, 2), np.float32))
    rc, out, err = run(capsys, "predict", str(path), str(tmp_path / "x.npy"))
    assert rc == 0 and len(out.strip().splitlines()) == 3, err
    png = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    rc, _, err = run(capsys, "predict", str(path), str(png))
    assert rc == 1 and "cannot tell which images the model takes" in err


def test_typical_cnn_bn_builds_for_28_and_32_pixel_images():
    for shape in ((1, 28, 28), (3, 32, 32)):
        st.seed(0)
        m = _cli_data.build_model("typical_cnn_bn", shape, 10)
        assert sum(type(l).__name__ == "BatchNorm2d" for l in m) == 3
        assert m.predict(np.zeros((2,) + shape, np.float32)).shape == (2, 10)
    with pytest.raises(cli.CLIError, match="multiples of 4"):
        _cli_data.build_model("typical_cnn_bn", (1, 30, 30), 10)
