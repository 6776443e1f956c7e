"""Tests for the striate command line (striate.cli, python -m striate)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import striate as st
from striate import cli, io
from striate.datasets import load_digits

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(st.__file__)))
RESULT = re.compile(r"^test accuracy (\d+\.\d\d)% \(loss (\d+\.\d{3})\) in \d+\.\d s$")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet-5 trained for two epochs by `striate train`, and its output."""
    path = tmp_path_factory.mktemp("cli") / "lenet.safetensors"
    import io as _io
    from contextlib import redirect_stdout

    buf = _io.StringIO()
    with redirect_stdout(buf):
        rc = cli.main(["train", "--epochs", "2", "--out", str(path), "--verbose", "0", "--threads", "1"])
    return rc, buf.getvalue(), path


def test_train_saves_the_model_and_reports_accuracy(trained):
    rc, out, path = trained
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0] == f"saved {path}"
    m = RESULT.match(lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) > 50.0  # two epochs already learn a lot
    model = io.load_model(path)
    _, (xt, yt) = load_digits()
    assert f"{model.evaluate(xt, yt)['accuracy'] * 100:.2f}%" in lines[-1]


def test_evaluate_prints_the_same_accuracy(trained, capsys):
    _, out, path = trained
    assert cli.main(["evaluate", str(path)]) == 0
    got = capsys.readouterr().out.strip()
    acc = RESULT.match(out.strip().splitlines()[-1]).group(1)
    assert re.match(rf"^test accuracy {acc}% \(loss \d+\.\d{{3}}\) in \d+\.\d s on 359 images$", got), got


def test_train_checkpoint_and_resume(tmp_path, capsys):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "m.safetensors"
    base = ["train", "--epochs", "1", "--threads", "1", "--verbose", "0", "--out", str(out)]
    assert cli.main(base + ["--checkpoint", str(ckpt)]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(base + ["--resume", str(ckpt)]) == 0  # nothing left to train: the same model
    again = capsys.readouterr().out.strip().splitlines()[-1]
    assert first.split(" in ")[0] == again.split(" in ")[0]


def test_train_distributed_under_mpiexec(tmp_path):
    from test_distributed import run_mpi

    out = tmp_path / "m.safetensors"
    stdout = run_mpi(
        f"""
        from striate import cli
        cli.main(["train", "--epochs", "1", "--verbose", "0", "--distributed", "--out", {str(out)!r}])
        """
    )
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0] == f"saved {out}"  # rank 0 alone saves and reports
    assert RESULT.match(lines[1])
    assert io.load_model(out) is not None


def test_predict_npy_files(trained, tmp_path, capsys):
    _, _, path = trained
    _, (xt, yt) = load_digits()
    np.save(tmp_path / "batch.npy", xt[:3])
    np.save(tmp_path / "one.npy", xt[5, 0])
    np.save(tmp_path / "u8.npy", np.round(xt[5, 0] * 255).astype(np.uint8))
    files = [str(tmp_path / f) for f in ("batch.npy", "one.npy", "u8.npy")]
    assert cli.main(["predict", str(path), *files, "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    model = io.load_model(path)
    probs = model.predict(xt[:3])
    for i, line in enumerate(lines[:3]):
        name, first, second = line.split("\t")
        assert name == f"{files[0]}[{i}]"
        assert first.startswith(f"{int(np.argmax(probs[i]))} (")
    assert lines[3].startswith(files[1] + "\t") and lines[4].startswith(files[2] + "\t")
    assert lines[3].split("\t")[1].split(" ")[0] == lines[4].split("\t")[1].split(" ")[0]


def test_predict_png_without_pillow_names_the_extra(trained, tmp_path, monkeypatch, capsys):
    # Images are decoded through Pillow (striate.datasets.folder), the [images] extra.
    _, _, path = trained
    png = tmp_path / "digit.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert cli.main(["predict", str(path), str(png)]) == 1
    assert "pip install 'striate[images]'" in capsys.readouterr().err


def test_predict_png_with_matplotlib(trained, tmp_path, capsys):
    mpimg = pytest.importorskip("matplotlib.image")
    _, _, path = trained
    _, (xt, _) = load_digits()
    png = tmp_path / "digit.png"
    mpimg.imsave(png, xt[0, 0], cmap="gray", vmin=0, vmax=1)
    assert cli.main(["predict", str(path), str(png)]) == 0
    assert capsys.readouterr().out.startswith(str(png) + "\t")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "--epochs: must be a positive integer"),
        (["train", "--lr", "-1"], "--lr: must be a positive finite number"),
        (["train", "--momentum", "-1"], "--momentum: must be a finite number >= 0"),
        (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["train", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["predict"], "the following arguments are required"),
        (["nope"], "invalid choice: 'nope'"),
    ],
)
def test_usage_errors_exit_2_with_a_message(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--seed", "-2"], "--seed must be >= 0"),
        (["evaluate", "/nonexistent/model.safetensors"], "cannot read"),
    ],
)
def test_runtime_errors_exit_1_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("striate: error: ") and err.count("\n") == 1
    assert message in err


def test_predict_rejects_unknown_files(trained, tmp_path, capsys):
    _, _, path = trained
    txt = tmp_path / "x.txt"
    txt.write_text("7")
    assert cli.main(["predict", str(path), str(txt)]) == 1
    assert "unsupported file type .txt" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 1, 1, 1, 1), np.float32))
    assert cli.main(["predict", str(path), str(bad)]) == 1
    assert "expected an (H, W), (C, H, W) or (N, C, H, W) array" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for name in ("train", "evaluate", "predict"):
        assert name in err


def test_registry_adds_commands(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))
    ran = []

    def configure(p):
        p.add_argument("--n", type=int, default=1)

    def run(args):
        ran.append(args.n)
        return 0

    cli.register("hello", "a test command", configure, run)
    with pytest.raises(ValueError, match="already registered"):
        cli.register("hello", "again", configure, run)
    assert cli.main(["hello", "--n", "3"]) == 0
    assert ran == [3]


def test_command_modules_plug_in_idempotently(monkeypatch, capsys):
    import types

    mod = types.ModuleType("fake_striate_commands")

    def run(args):
        print("fake ran")
        return 0

    mod.add_commands = lambda register: register("fake", "a fake command", lambda p: None, run)
    monkeypatch.setitem(sys.modules, "fake_striate_commands", mod)
    monkeypatch.setattr(cli, "COMMAND_MODULES", list(cli.COMMAND_MODULES) + ["fake_striate_commands"] * 2)
    cli.build_parser()
    assert cli.main(["fake"]) == 0 and cli.main(["fake"]) == 0
    assert capsys.readouterr().out == "fake ran\nfake ran\n"
    assert "fake" not in cli._COMMANDS  # module commands never enter the registry
    mod.add_commands = lambda register: register("train", "a clash", lambda p: None, run)
    with pytest.raises(ValueError, match="'train' is already registered"):
        cli.build_parser()


def test_python_dash_m_striate():
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "striate", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0
    assert "train" in proc.stdout and "predict" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "striate", "train", "--epochs", "x"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "--epochs" in proc.stderr


@pytest.mark.skipif(st.get_backend() != "cpp", reason="the full default run needs the C++ kernels to be fast")
def test_default_train_reaches_the_accuracy_target(tmp_path, capsys):
    """`striate train` with its defaults (augmentation on) reaches >= 99.0% on the digits test split.

    One thread: results are bitwise equal for every thread count, and one
    thread is the fastest on a shared, loaded machine.
    """
    argv = ["train", "--out", str(tmp_path / "m.safetensors"), "--verbose", "0", "--threads", "1"]
    assert cli.main(argv) == 0
    acc = float(RESULT.match(capsys.readouterr().out.strip().splitlines()[-1]).group(1))
    assert acc >= 99.0
