"""Model and tensor files: safetensors, written atomically and read defensively.

``write_file`` / ``read_file`` handle a dict of NumPy arrays plus string
metadata. The writer adds a SHA-256 per tensor (``"striate.checksums"``) and
replaces the target atomically (temp file in the same folder, fsync,
``os.replace``, fsync of the folder). The reader checks the 8-byte header
length against the file size and a cap, parses and validates the header JSON
itself (dtypes, shapes, offsets that tile the data region exactly) before any
tensor byte is handed to ``safetensors``, then checks the checksums and that
every float is finite.

``save_model`` / ``load_model`` store a ``Sequential`` (by duck typing: this
module never imports it; ``load_model`` builds through the builder
``striate.model`` registers, ``read_model`` returns the checked architecture
and tensors): tensors named as its
``state_dict`` (so ``torch.nn.Sequential`` with the same layers loads them
unchanged) and the architecture as JSON in the metadata
(``"striate.architecture"``). The architecture is validated against the layer
schema and the expected tensor names, dtypes and shapes are derived from it
before the tensors are read. Every failure raises :class:`FormatError`, which
names the file and the tensor. What a model knows about its data (its
``classes``, ``input_shape`` and ``dataset``) is kept as JSON under
``INFO_KEYS`` and checked as strictly when read.

``load_weights`` also reads plain safetensors files written by other tools
(``safetensors.torch.save_file(net.state_dict(), path)``): without striate's
metadata there are no checksums to verify, but names, dtypes, shapes and
finiteness are checked all the same; a file that carries striate metadata
must carry valid checksums.

Deliberately not here: pickle in any form, memory mapping, lazy loading,
bfloat16, or dtype conversion on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from . import _config, _files
from . import layers as L
from ._version import __version__

__all__ = [
    "FormatError",
    "MAX_HEADER_BYTES",
    "write_file",
    "read_file",
    "read_header",
    "save_model",
    "load_model",
    "load_weights",
    "read_model",
    "register_builder",
    "check_classes",
    "check_input_shape",
    "check_dataset_name",
]

PathLike = Union[str, "os.PathLike[str]"]
Tensors = Dict[str, np.ndarray]
Expect = Union[Dict[str, Tuple[Any, Any]], Callable[[Dict[str, str]], Dict[str, Tuple[Any, Any]]]]

MAX_HEADER_BYTES = 16 * 1024 * 1024
ARCH_KEY = "striate.architecture"
CHECKSUM_KEY = "striate.checksums"
# What a model knows about its data, each a JSON value in the metadata (absent when None).
INFO_KEYS = {"classes": "striate.classes", "input_shape": "striate.input_shape", "dataset": "striate.dataset"}
_MAX_CLASSES = 100_000
_MAX_NAME = 1_000
_MAX_LAYERS = 10_000
_MAX_NDIM = 8

_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
_CODES = {dt: code for code, dt in _DTYPES.items()}


class FormatError(ValueError):
    """A file that cannot be written or read as a striate/safetensors file.

    ``.path`` is the file, ``.tensor`` the tensor concerned (None for the header
    as a whole) and ``.problem`` what is wrong.
    """

    def __init__(self, path, tensor, problem):
        self.path = os.fspath(path) if path is not None else None
        self.tensor = tensor
        self.problem = problem
        where = f"tensor {tensor!r}" if tensor is not None else "header (no tensor)"
        super().__init__(f"{self.path}: {where}: {problem}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _metadata_digest(metadata):
    """SHA-256 of the metadata other than the checksums, in a canonical form."""
    rest = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode("utf-8")).hexdigest()


def _sha256(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data).hexdigest()


# ----------------------------------------------------------------------------
# writing


def _atomic_write(path, data):
    """Write ``data`` to ``path`` atomically (``_files.atomic_write``: symlinks followed, non-files refused)."""
    _files.atomic_write(path, data)


def write_file(path: PathLike, tensors: Tensors, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``tensors`` and string ``metadata`` to a safetensors file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The target; it is replaced only once the new file is complete on disk.
    tensors : dict[str, np.ndarray]
        Arrays of a safetensors dtype (bool, ints, float16/32/64); float values
        must be finite.
    metadata : dict[str, str], optional
        Stored in the header; the key ``"striate.checksums"`` is reserved.

    Raises
    ------
    FormatError
        A tensor that cannot be stored (wrong type or dtype, non-finite values).
    OSError
        The write failed; the previous file, if any, is unchanged.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "t.safetensors")
    ...     write_file(path, {"w": np.eye(2, dtype=np.float32)}, {"note": "hi"})
    ...     tensors, meta = read_file(path)
    >>> tensors["w"].tolist(), meta["note"]
    ([[1.0, 0.0], [0.0, 1.0]], 'hi')
    """
    from safetensors.numpy import save

    if not isinstance(tensors, dict):
        raise TypeError(f"`tensors` must be a dict, got {type(tensors).__name__}")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("`metadata` must be a dict of str to str")
    if CHECKSUM_KEY in metadata:
        raise ValueError(f"`metadata` must not set the reserved key {CHECKSUM_KEY!r}")
    out = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise FormatError(path, name, "tensor names must be non-empty strings other than '__metadata__'")
        if not isinstance(arr, np.ndarray):
            raise FormatError(path, name, f"must be a numpy.ndarray, got {type(arr).__name__}")
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dt not in _CODES:
            raise FormatError(path, name, f"dtype {arr.dtype} cannot be stored")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise FormatError(path, name, "holds non-finite values")
        out[name] = arr.astype(dt, order="C", copy=False)  # keeps 0-d arrays 0-d
    meta = dict(metadata)
    sums = {k: _sha256(v) for k, v in out.items()}
    sums["__metadata__"] = _metadata_digest(metadata)
    meta[CHECKSUM_KEY] = json.dumps(sums, sort_keys=True)
    _atomic_write(path, save(out, metadata=meta))


# ----------------------------------------------------------------------------
# reading


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _parse_json(text):
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _parse_header(path, f, size, max_header_bytes):
    """Validate the header; return ``(entries, metadata, data_start)``.

    ``entries`` maps each tensor name to ``(dtype, shape, begin, end)`` with
    offsets relative to the data region.
    """
    if size < 8:
        raise FormatError(path, None, f"file is {size} bytes, too short for the 8-byte header length (empty or truncated)")
    n = int.from_bytes(f.read(8), "little")
    if n > max_header_bytes:
        raise FormatError(path, None, f"header length {n} exceeds the cap of {max_header_bytes} bytes")
    if 8 + n > size:
        raise FormatError(path, None, f"header length {n} runs past the end of the {size}-byte file (truncated?)")
    raw = f.read(n)
    try:
        header = _parse_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(path, None, f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FormatError(path, None, f"header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(path, None, "'__metadata__' must map strings to strings")
    data_len = size - 8 - n
    entries = {}
    for name, info in header.items():
        if not name:
            raise FormatError(path, name, "empty tensor name")
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(path, name, "entry must have exactly 'dtype', 'shape' and 'data_offsets'")
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise FormatError(path, name, f"unsupported dtype {info['dtype']!r}")
        shape = info["shape"]
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(_is_int(s) and s >= 0 for s in shape):
            raise FormatError(path, name, f"shape must be a list of at most {_MAX_NDIM} non-negative ints, got {shape!r}")
        offs = info["data_offsets"]
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs) and 0 <= offs[0] <= offs[1]):
            raise FormatError(path, name, f"data_offsets must be [begin, end] with 0 <= begin <= end, got {offs!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        if offs[1] - offs[0] != nbytes:
            raise FormatError(path, name, f"data_offsets {offs} span {offs[1] - offs[0]} bytes, shape {shape} needs {nbytes}")
        if offs[1] > data_len:
            raise FormatError(path, name, f"data ends at byte {offs[1]}, past the {data_len}-byte data region (truncated?)")
        entries[name] = (dtype, tuple(shape), offs[0], offs[1])
    pos = 0
    for name, (_, _, b, e) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if b != pos:
            raise FormatError(path, name, f"data starts at byte {b}, expected {pos} (overlap or gap)")
        pos = e
    if pos != data_len:
        raise FormatError(path, None, f"tensors cover {pos} bytes but the data region has {data_len}")
    return entries, metadata, 8 + n


def read_header(path: PathLike, *, max_header_bytes: int = MAX_HEADER_BYTES) -> Any:
    """Validate a file's header without reading tensor data.

    Returns
    -------
    entries : dict[str, tuple[np.dtype, tuple[int, ...]]]
        Each tensor's dtype and shape.
    metadata : dict[str, str]
    """
    try:
        f, size = _files.open_regular(path)
        with f:
            entries, metadata, _ = _parse_header(path, f, size, max_header_bytes)
    except _files.NotRegularFileError as exc:
        raise FormatError(path, None, str(exc).split(": ", 1)[-1]) from None
    except OSError as exc:
        raise FormatError(path, None, f"cannot read: {exc}") from None
    return {k: (v[0], v[1]) for k, v in entries.items()}, metadata


def _check_expected(path, entries, expected):
    for name, (shape, dtype) in expected.items():
        if name not in entries:
            raise FormatError(path, name, f"missing tensor (expected {np.dtype(dtype)} {tuple(shape)})")
    for name, (eshape, edtype) in expected.items():
        dtype, shape, _, _ = entries[name]
        if dtype != np.dtype(edtype):
            raise FormatError(path, name, f"dtype {_CODES[dtype]} ({dtype}), expected {np.dtype(edtype)}")
        if shape != tuple(eshape):
            raise FormatError(path, name, f"shape {shape}, expected {tuple(eshape)}")
    for name in entries:
        if name not in expected:
            raise FormatError(path, name, "unexpected tensor")


def _checksums(path, entries, metadata):
    """The per-tensor SHA-256 table, after verifying the metadata digest."""
    try:
        sums = _parse_json(metadata[CHECKSUM_KEY])
    except KeyError:
        raise FormatError(path, None, f"metadata lacks {CHECKSUM_KEY!r} (not written by striate?)") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(path, None, f"metadata {CHECKSUM_KEY!r} is not valid JSON: {exc}") from None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise FormatError(path, None, f"metadata {CHECKSUM_KEY!r} must map names to hex digests")
    if sums.get("__metadata__") != _metadata_digest(metadata):
        raise FormatError(path, None, "SHA-256 mismatch of the metadata: the header is corrupted")
    for name in sums:
        if name != "__metadata__" and name not in entries:
            raise FormatError(path, name, "missing tensor (it has a checksum)")
    return sums


def read_file(
    path: PathLike,
    *,
    expect: Optional[Expect] = None,
    require_checksums: Union[bool, str] = True,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> Tuple[Tensors, Dict[str, str]]:
    """Read a safetensors file after validating it; returns ``(tensors, metadata)``.

    Parameters
    ----------
    path : str or os.PathLike
    expect : dict or callable, optional
        ``{name: (shape, dtype)}`` the file must hold exactly, or a callable
        ``expect(metadata) -> dict`` evaluated on the header before any tensor
        data is read.
    require_checksums : bool or "auto", default True
        Require and verify the per-tensor SHA-256 that ``write_file`` stores.
        ``"auto"``: require them when the metadata holds any ``"striate."``
        key (the file claims to be striate's), else read the file as plain
        safetensors.
    max_header_bytes : int
        Cap on the header length.

    Raises
    ------
    FormatError
        Any problem with the file, naming the file and the tensor.
    """
    from safetensors.numpy import load

    try:
        f, size = _files.open_regular(path)
        with f:
            entries, metadata, _ = _parse_header(path, f, size, max_header_bytes)
            if require_checksums == "auto":
                require_checksums = any(k.startswith("striate.") for k in metadata)
            checksums = _checksums(path, entries, metadata) if require_checksums else None
            if callable(expect):
                expect = expect(metadata)
            if expect is not None:
                _check_expected(path, entries, expect)
            f.seek(0)
            blob = f.read(size + 1)
    except _files.NotRegularFileError as exc:
        raise FormatError(path, None, str(exc).split(": ", 1)[-1]) from None
    except OSError as exc:
        raise FormatError(path, None, f"cannot read: {exc}") from None
    if len(blob) != size:
        raise FormatError(path, None, "file changed while being read")
    try:
        tensors = load(blob)
    except Exception as exc:  # the header was validated; anything left is still a format problem
        raise FormatError(path, None, f"safetensors rejected the file: {exc}") from None
    if set(tensors) != set(entries):
        raise FormatError(path, None, "safetensors returned other tensors than the header lists")
    for name in sorted(entries):
        arr = tensors[name]
        if checksums is not None:
            if name not in checksums:
                raise FormatError(path, name, "has no checksum in the metadata")
            if _sha256(arr) != checksums[name]:
                raise FormatError(path, name, "SHA-256 mismatch: the data is corrupted")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise FormatError(path, name, "holds non-finite values")
    return tensors, metadata


# ----------------------------------------------------------------------------
# models


def parse_architecture(text: str, path: Optional[PathLike] = None) -> Tuple[Dict[str, Any], Dict[str, Tuple[Any, Any]]]:
    """Validate an architecture JSON string; return ``(config, expected_state)``.

    ``config`` is the ``Sequential.to_config()`` dict, ``expected_state`` maps
    each state_dict name to ``(shape, dtype)``. Each layer entry, nested
    containers' entries included, is checked by ``striate.layers.spec_state``.
    """
    try:
        cfg = _parse_json(text)
    except (ValueError, RecursionError) as exc:
        raise FormatError(path, None, f"architecture is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or set(cfg) != {"format", "version", "layers"}:
        raise FormatError(path, None, "architecture must be an object with 'format', 'version' and 'layers'")
    if cfg["format"] != "striate.sequential" or cfg["version"] != 1:
        raise FormatError(path, None, f"unknown architecture format {cfg['format']!r} version {cfg['version']!r}")
    specs = cfg["layers"]
    if not isinstance(specs, list) or not 0 < len(specs) <= _MAX_LAYERS:
        raise FormatError(path, None, f"architecture 'layers' must be a list of 1 to {_MAX_LAYERS} layers")
    expected = {}
    budget = [_MAX_LAYERS]  # counts nested layers too
    for i, spec in enumerate(specs):
        try:
            state = L.spec_state(spec, str(i), budget)
        except (TypeError, ValueError) as exc:
            raise FormatError(path, None, f"architecture {exc}") from None
        for name, (shape, dtype) in state.items():
            expected[f"{i}.{name}"] = (shape, dtype)
    return cfg, expected


@contextlib.contextmanager
def _private_init_rng():
    """Build layers without drawing from the global RNG (their init is overwritten anyway)."""
    saved = _config._rng
    _config._rng = np.random.default_rng(0)
    try:
        yield
    finally:
        _config._rng = saved


def save_model(model: Any, path: PathLike) -> None:
    """Save a model (float32 weights + architecture) to ``path``, atomically.

    Any object with ``state_dict()`` and ``to_config()`` (a ``Sequential``).
    Its ``classes``, ``input_shape`` and ``dataset`` attributes, when set, go
    into the metadata as JSON (``INFO_KEYS``); ``load_model`` restores them.
    """
    if not (callable(getattr(model, "state_dict", None)) and callable(getattr(model, "to_config", None))):
        raise TypeError(f"`model` must be a striate.Sequential, got {type(model).__name__}")
    state = model.state_dict()
    for name, arr in state.items():
        if arr.dtype.kind == "f" and arr.dtype != np.float32:
            raise FormatError(path, name, f"is {arr.dtype}; files hold float32 (call model.astype(np.float32))")
    meta = {
        ARCH_KEY: json.dumps(model.to_config(), sort_keys=True),
        "striate.version": __version__,
    }
    for attr, key in INFO_KEYS.items():
        value = getattr(model, attr, None)
        if value is not None:
            value = _CHECKS[attr](value, f"model.{attr}")
            meta[key] = json.dumps(list(value) if isinstance(value, tuple) else value)
    write_file(path, state, meta)


def read_model(path: PathLike, *, with_info: bool = False) -> Any:
    """Read a model file: ``(config, tensors)``, the architecture and its checked tensors.

    The architecture is validated and every tensor checked against the
    names, shapes and dtypes it implies before any tensor is returned.
    Building the model is the business of its class (``striate.model.load_model``).
    With ``with_info=True`` it returns ``(config, tensors, info)``, ``info``
    being ``{"classes", "input_shape", "dataset"}`` from the metadata (each
    None when absent, each checked strictly), for ``apply_info``.

    Raises
    ------
    FormatError
        The file is damaged, not a striate model, or does not match its architecture.
    """
    holder = {}

    def expect(metadata):
        if ARCH_KEY not in metadata:
            raise FormatError(path, None, f"metadata lacks {ARCH_KEY!r} (not a striate model file)")
        holder["cfg"], expected = parse_architecture(metadata[ARCH_KEY], path)
        return expected

    tensors, metadata = read_file(path, expect=expect)
    check_running_var(path, tensors)
    if not with_info:
        return holder["cfg"], tensors
    return holder["cfg"], tensors, read_info(metadata, path)


def check_running_var(path, tensors):
    """FormatError when a BatchNorm ``running_var`` holds a negative or NaN value (``predict`` would give NaN)."""
    for name, arr in tensors.items():
        if name.split(".")[-1] == "running_var" and arr.size and not (arr >= 0).all():
            bad = arr[~(arr >= 0)].reshape(-1)[0]
            raise FormatError(path, name, f"a variance must be non-negative, got {float(bad)!r}")


def check_classes(value, name="classes"):
    """``value`` as a list of distinct non-empty class names (str), or TypeError/ValueError naming ``name``."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of str or None, got {type(value).__name__}")
    if not 0 < len(value) <= _MAX_CLASSES:
        raise ValueError(f"`{name}` must hold 1 to {_MAX_CLASSES} names, got {len(value)}")
    for i, c in enumerate(value):
        if not isinstance(c, str):
            raise TypeError(f"`{name}[{i}]` must be a str, got {type(c).__name__}")
        if not 0 < len(c) <= _MAX_NAME:
            raise ValueError(f"`{name}[{i}]` must be 1 to {_MAX_NAME} characters, got {len(c)}")
    if len(set(value)) != len(value):
        raise ValueError(f"`{name}` must not repeat a name, got {list(value)}")
    return list(value)


def check_input_shape(value, name="input_shape"):
    """``value`` as a ``(C, H, W)`` tuple of positive ints, or TypeError/ValueError naming ``name``."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        got = f"{len(value)} entries" if isinstance(value, (list, tuple)) else type(value).__name__
        raise TypeError(f"`{name}` must be a (C, H, W) tuple of 3 ints or None, got {got}")
    for i, v in enumerate(value):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"`{name}[{i}]` must be an int, got {type(v).__name__}")
        if not 0 < int(v) <= 1 << 20:
            raise ValueError(f"`{name}[{i}]` must be in [1, {1 << 20}], got {int(v)}")
    return tuple(int(v) for v in value)


def check_dataset_name(value, name="dataset"):
    """``value`` as a data set name (letters, digits, '-', '_', at most 64), or TypeError/ValueError."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str or None, got {type(value).__name__}")
    if not 0 < len(value) <= 64 or not all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in value):
        raise ValueError(f"`{name}` must be 1 to 64 letters, digits, '-' or '_', got {value!r}")
    return value


_CHECKS = {"classes": check_classes, "input_shape": check_input_shape, "dataset": check_dataset_name}


def read_info(metadata, path=None):
    """``{"classes", "input_shape", "dataset"}`` from a model file's metadata, checked; FormatError if bad."""
    info = {}
    for attr, key in INFO_KEYS.items():
        raw = metadata.get(key)
        if raw is None:
            info[attr] = None
            continue
        try:
            info[attr] = _CHECKS[attr](_parse_json(raw), key)
        except (TypeError, ValueError, RecursionError) as exc:
            raise FormatError(path, None, f"metadata {key!r} is invalid: {exc}") from None
    return info


def apply_info(model, info):
    """Set ``model.classes``, ``.input_shape`` and ``.dataset`` from ``read_info``'s dict."""
    for attr, value in info.items():
        setattr(model, attr, value)
    return model


# Builders of a model from ``(config, tensors, path)``, by the architecture's
# "format": ``striate.model`` registers ``Sequential``'s under "striate.sequential"
# when it is imported (``import striate`` imports it), so this module never
# needs to know the model classes.
_BUILDERS: dict = {}


def register_builder(format_name: str, build: Callable[[Dict[str, Any], Tensors, Any], Any]) -> None:
    """Make ``load_model`` build architectures of ``format_name`` with ``build(config, tensors, path)``."""
    _BUILDERS[format_name] = build


def load_model(path: PathLike) -> Any:
    """Load a model saved by :func:`save_model` (all checks first, then build).

    The same as ``striate.load``: the file is read and checked here
    (``read_model``), the model is built by the builder its architecture's
    format registered (``Sequential``'s, in ``striate.model``).

    Raises
    ------
    FormatError
        The file is damaged, not a striate model, or does not match its architecture.
    """
    cfg, tensors, info = read_model(path, with_info=True)
    return apply_info(_BUILDERS[cfg["format"]](cfg, tensors, path), info)


def load_weights(model: Any, path: PathLike) -> Any:
    """Load the tensors of ``path`` into ``model`` in place; the model is unchanged on failure.

    The file must hold exactly the model's state_dict names, dtypes and shapes,
    all finite. It may be striate's (its checksums are then verified) or a
    plain safetensors file without striate's metadata, such as
    ``safetensors.torch.save_file(torch_net.state_dict(), path)`` writes for a
    ``torch.nn.Sequential`` with the same layers. Tensors are not converted: a
    float64 or float16 file for a float32 model is refused (convert it first).

    Raises
    ------
    FormatError
        A missing or extra tensor, another dtype or shape, a non-finite value,
        a damaged file, or striate metadata without valid checksums; the model
        is then unchanged.
    TypeError
        ``model`` has no ``state_dict`` / ``load_state_dict``.

    Examples
    --------
    >>> import torch, safetensors.torch  # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))  # doctest: +SKIP
    >>> safetensors.torch.save_file(net.state_dict(), "w.safetensors")  # doctest: +SKIP
    >>> load_weights(st.Sequential([L.Flatten(), L.Linear(4, 2)]), "w.safetensors")  # doctest: +SKIP
    """
    if not (callable(getattr(model, "state_dict", None)) and callable(getattr(model, "load_state_dict", None))):
        raise TypeError(f"`model` must be a striate.Sequential, got {type(model).__name__}")
    expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    tensors, _ = read_file(path, expect=expected, require_checksums="auto")
    check_running_var(path, tensors)
    model.load_state_dict(tensors)
    return model
