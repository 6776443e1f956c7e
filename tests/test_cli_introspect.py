"""Tests of striate._cli_introspect: summary, visualize, bench and lr-sweep through striate.cli."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import striate as st
from striate import _cli_introspect as C
from striate import cli


@pytest.fixture(autouse=True)
def _plugged(monkeypatch):
    """The commands registered in a private copy of the CLI registry; one kernel thread."""
    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))
    monkeypatch.setattr(cli, "COMMAND_MODULES", list(cli.COMMAND_MODULES) + ["striate._cli_introspect"])
    monkeypatch.setattr(C, "_striate_cli_registered", False, raising=False)
    st.set_num_threads(1)


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_summary_zoo_and_saved_model(capsys, tmp_path):
    rc, out, _ = run(capsys, "summary", "lenet5")
    assert rc == 0 and "total params: 61,706" in out and "(1, 32, 32) (inferred)" in out
    st.seed(0)
    path = tmp_path / "cnn.safetensors"
    st.zoo.typical_cnn(in_channels=1).save(path)
    rc, out, _ = run(capsys, "summary", str(path), "--input-shape", "1", "32", "32")
    assert rc == 0 and "Conv2d(1, 32, 3, padding=1)" in out and "input shape (1, 32, 32)\n" in out + "\n"


def test_summary_errors(capsys):
    rc, _, err = run(capsys, "summary", "resnet")
    assert rc == 1 and "MODEL must be a saved model file or a zoo name" in err and "'resnet'" in err
    rc, _, err = run(capsys, "summary", "lenet5", "--input-shape", "1", "28", "28")
    assert rc == 1 and "`input_shape` does not fit layer 7" in err
    rc, _, err = run(capsys, "summary", "lenet5", "--input-shape", "1", "0", "28")
    assert rc == 2 and "positive integer" in err


def test_visualize_writes_the_images(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "pics"
    rc, out, _ = run(capsys, "visualize", "lenet5", "--out", str(out_dir), "--max-maps", "4")
    assert rc == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["activations.png", "filters_layer0.png", "filters_layer3.png"]
    assert out.count("wrote ") == 3
    assert all((out_dir / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_visualize_with_an_input_file(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "img.npy", np.random.default_rng(0).integers(0, 255, (2, 3, 32, 32)).astype(np.uint8))
    rc, _, _ = run(capsys, "visualize", "typical_cnn", "--out", str(tmp_path), "--input", str(tmp_path / "img.npy"))
    assert rc == 0 and (tmp_path / "filters_layer5.png").exists()
    np.save(tmp_path / "bad.npy", np.zeros((3, 40, 40), np.float32))
    rc, _, err = run(capsys, "visualize", "lenet5", "--out", str(tmp_path), "--input", str(tmp_path / "bad.npy"))
    assert rc == 1 and "--input" in err and err.startswith("striate: error: ")
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.float32))  # (H, W) as `predict` takes it
    st.seed(0)
    st.zoo.lenet5(input_size=28).save(tmp_path / "l28.safetensors")
    rc, _, err = run(capsys, "visualize", str(tmp_path / "l28.safetensors"), "--out", str(tmp_path),
                     "--input", str(tmp_path / "digit.npy"))
    assert rc == 0, err


def test_bench_prints_the_profile(capsys):
    rc, out, _ = run(capsys, "bench", "--models", "lenet5", "--batch-size", "2", "--repeat", "1", "--no-torch")
    assert rc == 0 and "== lenet5" in out and "typical_cnn" not in out and "PyTorch comparison off" in out
    assert "fwd ms" in out and "batch 2, 1 threads" in out
    rc, _, err = run(capsys, "bench", "--models", "vgg")
    assert rc == 2 and "invalid choice" in err


def test_lr_sweep_prints_a_suggestion(capsys, tmp_path):
    rc, out, _ = run(capsys, "lr-sweep", "--steps", "6", "--batch-size", "8")
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[-1].startswith("suggested lr: ") and "6 steps from 1e-05 to 1" in lines[-2]
    assert sum(l.startswith("lr ") for l in lines) == 6


def test_lr_sweep_plot_and_errors(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "lr.png"
    rc, out, _ = run(capsys, "lr-sweep", "typical_cnn", "--steps", "3", "--batch-size", "4", "--out", str(png))
    assert rc == 0 and png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in out
    st.seed(0)
    st.zoo.typical_cnn().save(tmp_path / "rgb.safetensors")
    rc, _, err = run(capsys, "lr-sweep", str(tmp_path / "rgb.safetensors"), "--steps", "3")
    assert rc == 0, err  # the grey digits are fed to the colour model as three equal channels
    rc, _, err = run(capsys, "lr-sweep", "--lr-min", "0")
    assert rc == 2 and "--lr-min" in err and "positive" in err
    rc, _, err = run(capsys, "lr-sweep", "--lr-min", "1", "--lr-max", "0.1", "--steps", "3")
    assert rc == 1 and "`lr_min` must be below `lr_max`" in err


def test_add_subcommands_plugs_into_argparse(capsys):
    parser = argparse.ArgumentParser()
    C.add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["summary", "lenet5", "--input-shape", "1", "32", "32"])
    assert args.func is C.cmd_summary and args.input_shape == [1, 32, 32]
    assert args.func(args) == 0 and "61,706" in capsys.readouterr().out
    assert parser.parse_args(["lr-sweep"]).model == "lenet5"


def test_resolve_model():
    assert len(C.resolve_model("lenet5")) == 12
    assert C.resolve_model("typical_cnn", in_channels=1)[0].in_channels == 1
    with pytest.raises(cli.CLIError, match="zoo name"):
        C.resolve_model("/no/such/file.safetensors")
