"""The typed API: mypy over the package and over a user's script, ``py.typed``, signatures and docstrings.

mypy runs once (it takes a while) over ``python/striate`` and two small user
scripts: one correct, one calling ``fit`` and others with wrong argument types.
The package and the correct script must have no errors; each wrong call must be
reported. Not here: runtime argument checks (the modules' own tests).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import striate as st
from striate import layers as L

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "striate"

GOOD = """\
import numpy as np
import striate as st
from striate import layers as L, optim, zoo

model = zoo.lenet5(num_classes=10)
x = np.zeros((4, 1, 32, 32), np.float32)
y = np.zeros(4, np.int64)
history = model.fit(x, y, epochs=1, batch_size=2, optimizer=optim.SGD(model.parameters(), lr=0.1), verbose=0)
probs: np.ndarray = model.predict(x)
scores = model.evaluate(x, y)
loss: float = scores["loss"]
m2 = st.Sequential([L.Conv2d(1, 2, 3, padding=1), L.GELU(approximate="tanh"), L.Flatten()])
"""

BAD = """\
import numpy as np
from striate import layers as L, zoo

model = zoo.lenet5()
x = np.zeros((4, 1, 32, 32), np.float32)
y = np.zeros(4, np.int64)
model.fit(x, y, epochs="10")  # BAD: epochs
model.fit(x, y, batch_size=2.5)  # BAD: batch_size
model.predict(x, batch_size="64")  # BAD: batch_size
conv = L.Conv2d(1, 2, kernel_size="3")  # BAD: kernel_size
zoo.lenet5(num_classes="ten")  # BAD: num_classes
"""


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory):
    pytest.importorskip("mypy")
    d = tmp_path_factory.mktemp("mypy")
    (d / "good_user.py").write_text(GOOD)
    (d / "bad_user.py").write_text(BAD)
    env = dict(os.environ, MYPYPATH=str(ROOT / "python"))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
           str(d / "cache"), "--no-error-summary", "--hide-error-context", str(PACKAGE),
           str(d / "good_user.py"), str(d / "bad_user.py")]
    proc = subprocess.run(cmd, cwd=str(ROOT / "python"), env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1) and "usage:" not in out, out  # 2: mypy itself failed
    return out


def _errors(output, filename):
    return [line for line in output.splitlines() if filename in line and ": error:" in line]


def test_mypy_finds_no_errors_in_the_package(mypy_output):
    errors = [line for line in mypy_output.splitlines() if ": error:" in line and "_user.py" not in line]
    assert not errors, "\n".join(errors)


def test_mypy_accepts_a_correct_user_script(mypy_output):
    assert not _errors(mypy_output, "good_user.py"), mypy_output


def test_mypy_reports_each_wrong_argument_type(mypy_output):
    errors = _errors(mypy_output, "bad_user.py")
    bad_lines = [i + 1 for i, line in enumerate(BAD.splitlines()) if "# BAD" in line]
    reported = {int(e.split(":")[1]) for e in errors}
    assert set(bad_lines) <= reported, mypy_output
    assert any('"epochs"' in e and "str" in e for e in errors), errors


def test_py_typed_ships_in_the_wheel():
    assert (PACKAGE / "py.typed").is_file() and (PACKAGE / "_core.pyi").is_file()
    text = (ROOT / "pyproject.toml").read_text()
    assert 'wheel.packages = ["python/striate"]' in text


def test_fit_evaluate_predict_show_their_full_signatures():
    fit = inspect.signature(st.Sequential.fit)
    for name in ("epochs", "batch_size", "optimizer", "loss", "validation_data", "callbacks", "seed", "verbose"):
        assert name in fit.parameters and fit.parameters[name].annotation is not inspect.Parameter.empty, name
    assert "epochs : int" in st.Sequential.fit.__doc__
    assert "batch_size" in inspect.signature(st.Sequential.evaluate).parameters
    assert "batch_size" in inspect.signature(st.Sequential.predict).parameters


LAYERS = ["Conv2d", "MaxPool2d", "AvgPool2d", "LPPool2d", "AdaptiveAvgPool2d", "GlobalAvgPool2d", "BatchNorm2d",
          "ReLU", "LeakyReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax", "Dropout", "Flatten", "Linear"]


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_docstring_gives_shapes_and_an_example(name):
    cls = getattr(L, name)
    doc = inspect.getdoc(cls)
    assert "Shape\n-----" in doc and "Examples\n--------" in doc and ">>> " in doc, name
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    if params:
        assert "Parameters\n----------" in doc, name
        for p in params:
            assert p in doc, (name, p)
            assert inspect.signature(cls.__init__).parameters[p].annotation is not inspect.Parameter.empty, (name, p)


@pytest.mark.parametrize("module", ["conv", "pool", "normalization", "activation", "core"])
def test_layer_docstring_examples_run(module):
    mod = importlib.import_module(f"striate.layers.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
