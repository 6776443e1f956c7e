"""Packaging: one version source, the tested Requires-Python, the license, and what the sdist ships.

The sdist test builds an sdist in-process with scikit-build-core from a copy of
the source tree that has trained models lying around, as ``striate train``
leaves them. Not here: building the wheel, which compiles the C++ (done by hand
with ``pip wheel . -w DIR --no-deps``; see CHANGELOG.md).
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

import striate as st

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "python" / "striate").rglob("*.py"))


def _pyproject():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floor():
    """The lowest Python that ``requires-python`` admits, as ``(3, minor)``."""
    spec = _pyproject()["project"]["requires-python"]
    m = re.fullmatch(r">=\s*3\.(\d+)", spec.strip())
    assert m, f"requires-python {spec!r} is not of the form '>=3.N'"
    return (3, int(m.group(1)))


def test_version_has_one_source():
    cfg = _pyproject()
    assert "version" not in cfg["project"] and "version" in cfg["project"]["dynamic"]
    skb = cfg["tool"]["scikit-build"]["metadata"]["version"]
    assert skb["provider"] == "scikit_build_core.metadata.regex"
    text = (ROOT / skb["input"]).read_text()
    found = re.findall(r'^__version__ = "([^"]+)"', text, re.M)
    assert found == [st.__version__]


def test_installed_metadata_matches_when_installed():
    metadata = pytest.importorskip("importlib.metadata")
    try:
        dist = metadata.distribution("striate")
    except metadata.PackageNotFoundError:
        pytest.skip("striate is not installed (a source-tree run)")
    if Path(st.__file__).resolve().parent != Path(dist.locate_file("striate")).resolve():
        pytest.skip("the imported striate is not the installed one")
    assert dist.version == st.__version__


def test_changelog_starts_with_this_version_and_license_is_mit():
    first = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert first and st.__version__.startswith(first.group(1))
    lic = (ROOT / "LICENSE").read_text()
    assert lic.startswith("MIT License") and "Copyright (c) 2026 the striate authors" in lic


def test_sources_parse_at_the_lowest_supported_python():
    """``requires-python`` holds for the syntax: every module parses as the oldest admitted Python.

    Also refused: ``X | Y`` evaluated at run time (isinstance and annotations in
    modules without ``from __future__ import annotations``) and ``zip(strict=)``,
    both 3.10, when the floor is lower.
    """
    floor = _floor()
    classifiers = _pyproject()["project"]["classifiers"]
    listed = sorted(int(c.rsplit(".", 1)[1]) for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert listed and listed[0] == floor[1], "the lowest version classifier must be the tested floor"
    problems = []
    for path in SOURCES:
        src = path.read_text()
        try:
            tree = ast.parse(src, filename=str(path), feature_version=floor)
        except SyntaxError as exc:
            problems.append(f"{path.name}:{exc.lineno}: {exc.msg}")
            continue
        if floor >= (3, 10):
            continue
        lazy = "from __future__ import annotations" in src
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                if len(node.args) == 2 and isinstance(node.args[1], ast.BinOp):
                    problems.append(f"{path.name}:{node.lineno}: isinstance with X | Y")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "zip":
                if any(k.arg == "strict" for k in node.keywords):
                    problems.append(f"{path.name}:{node.lineno}: zip(strict=)")
            if not lazy and isinstance(node, (ast.arg, ast.AnnAssign)) and isinstance(node.annotation, ast.BinOp):
                problems.append(f"{path.name}:{node.lineno}: X | Y annotation without the __future__ import")
    assert not problems, problems


def _copy_tree(dst):
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", ".gitignore", "CMakeLists.txt"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    for name in ("python", "csrc"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)


def test_sdist_leaves_out_trained_models_and_keeps_the_packaged_one(tmp_path, monkeypatch):
    build = pytest.importorskip("scikit_build_core.build")
    src = tmp_path / "src"
    src.mkdir()
    _copy_tree(src)
    litter = ["model.safetensors", "digits_lenet.safetensors", "run.ckpt", "runs/epoch3.ckpt", "runs/model.safetensors",
              "python/striate/model.safetensors"]
    for rel in litter:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"not shipped")
    out = tmp_path / "dist"
    out.mkdir()
    monkeypatch.chdir(src)
    name = build.build_sdist(str(out))
    with tarfile.open(out / name) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
        pkg_info = tar.extractfile(f"{name[: -len('.tar.gz')]}/PKG-INFO").read().decode()
    assert "python/striate/data/lenet5_digits.safetensors" in members
    assert "LICENSE" in members and "CHANGELOG.md" in members
    assert not set(litter) & members, sorted(set(litter) & members)
    assert not [m for m in members if m.endswith((".ckpt", ".so"))]
    assert re.search(rf"^Version: {re.escape(st.__version__)}$", pkg_info, re.M)
    assert re.search(rf"^Requires-Python: >={_floor()[0]}\.{_floor()[1]}$", pkg_info, re.M)
