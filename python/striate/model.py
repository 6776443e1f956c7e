"""Sequential: a list of layers run in order, with torch-compatible state names.

``Sequential`` chains ``forward`` and ``backward``, names its state exactly as
``torch.nn.Sequential`` does (``"0.weight"``, ``"1.running_mean"``), loads state
all or nothing, freezes prefixes, swaps the classifier head, describes itself
(``summary``, ``to_config``) and saves to safetensors through ``striate.io``.
It sits above the machinery it delegates to, as Keras's ``Model`` sits above
its trainer: training (``fit``/``evaluate``/``predict``, ``striate.training``),
files (``striate.io``), the summary and profile (``striate._summary``,
``striate._profile``) and ONNX export (``striate._onnx_export``) all work on
it by duck typing and never import it. Building a model from a config or a
file lives here (``Sequential.from_config``, ``load_model``, which is
``striate.load``). Deliberately not here: nesting, branches, hooks.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

import striate.training  # looked up at call time, as ``striate.training.fit``, so it can be replaced

from . import _onnx_export, _profile, _summary, io
from .layers import Layer, Linear, _bool, _int, layer_from_config
from .layers.chain import backward_chain, forward_chain

__all__ = ["Sequential", "load_model"]

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = Any  # an ndarray, or anything numpy.asarray takes (a torch tensor, a list)

CONFIG_FORMAT = "striate.sequential"
CONFIG_VERSION = 1


class Sequential:
    """Layers applied in order.

    Parameters
    ----------
    layers : iterable of Layer
        Also accepted as separate arguments: ``Sequential(a, b, c)``.

    Examples
    --------
    >>> from striate import layers as L
    >>> m = Sequential([L.Linear(4, 3), L.ReLU(), L.Linear(3, 2)])
    >>> list(m.state_dict())
    ['0.weight', '0.bias', '2.weight', '2.bias']
    """

    def __init__(self, layers: Union[Layer, Iterable[Layer]] = (), *more: Layer) -> None:
        if isinstance(layers, Layer):
            layers = (layers,) + more
        elif more:
            raise TypeError("pass the layers as one list, or each as its own argument")
        self._layers = []
        for i, layer in enumerate(layers):
            self._layers.append(self._check_layer(layer, i))
        self._rename()

    def _check_unique(self, layer, i):
        # A layer remembers one forward call, so one instance cannot sit in two places.
        if any(other is layer for j, other in enumerate(self._layers) if j != i):
            raise ValueError(f"`layers[{i}]` is already in the model at another index; use a new instance")

    # -- container protocol ------------------------------------------------------

    def _check_layer(self, layer, i):
        if not isinstance(layer, Layer):
            raise TypeError(f"`layers[{i}]` must be a striate Layer, got {type(layer).__name__}")
        self._check_unique(layer, i)
        return layer

    def _rename(self):
        for i, layer in enumerate(self._layers):
            for name, p in layer.named_parameters():
                p.name = f"{i}.{name}"

    def _index(self, i):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"`index` must be an int or a slice, got {type(i).__name__}")
        n = len(self._layers)
        if not -n <= i < n:
            raise IndexError(f"`index` {i} is out of range for {n} layers")
        return int(i) % n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(self._layers[i])
        return self._layers[self._index(i)]

    def __setitem__(self, i, layer):
        i = self._index(i)
        mode = self.training
        self._layers[i] = self._check_layer(layer, i)
        layer.train(mode)
        self._rename()

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def append(self, layer: Layer) -> "Sequential":
        """Add a layer at the end."""
        self._layers.append(self._check_layer(layer, len(self._layers)))
        self._rename()
        return self

    @property
    def layers(self):
        return list(self._layers)

    # -- computation -------------------------------------------------------------

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """``forward(x)``; an array-like that is not an ndarray (a torch tensor, a list) is converted first.

        As ``predict`` accepts them: anything with ``__array__`` (or ``numpy()``)
        becomes an ndarray of its own dtype; a torch tensor that requires grad
        is detached first. ndarrays pass unchanged.
        """
        if not isinstance(x, np.ndarray):
            x = _array_from(x)
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run every layer in order."""
        return forward_chain(self._layers, x)

    def backward(self, dloss: np.ndarray, input_grad: bool = True) -> Optional[np.ndarray]:
        """Back-propagate ``dloss`` (the gradient of the loss w.r.t. the outputs).

        Writes every trainable parameter's ``.grad`` and returns ``dx``, the
        gradient w.r.t. the input. With ``input_grad=False`` (what ``fit``
        uses) it returns None and stops at the first layer that has trainable
        parameters, which skips computing its ``dx``.
        """
        return backward_chain(self._layers, dloss, _bool(input_grad, "input_grad"))

    # -- parameters and state ----------------------------------------------------

    def parameters(self) -> List[Any]:
        """Every parameter, layer by layer, each layer's weight before its bias."""
        return [p for layer in self._layers for p in layer.parameters()]

    def named_parameters(self) -> List[Tuple[str, Any]]:
        return [(f"{i}.{n}", p) for i, layer in enumerate(self._layers) for n, p in layer.named_parameters()]

    def state_dict(self) -> Dict[str, np.ndarray]:
        """``{"0.weight": array, ...}``: parameters and buffers named as ``torch.nn.Sequential`` (copies)."""
        d = {}
        for i, layer in enumerate(self._layers):
            for name, arr in layer.state_dict().items():
                d[f"{i}.{name}"] = arr
        return d

    def _state_slots(self):
        """``{name: (layer, local_name, current array)}`` for every state entry."""
        slots = {}
        for i, layer in enumerate(self._layers):
            for name, p in layer.named_parameters():
                slots[f"{i}.{name}"] = (layer, name, p.data)
            for name, b in layer._buffers.items():
                slots[f"{i}.{name}"] = (layer, name, b)
        return slots

    def load_state_dict(self, d: Dict[str, np.ndarray]) -> None:
        """Copy the arrays of ``d`` into the model, in place.

        All or nothing: the names must match exactly and every shape and dtype
        must equal the model's; otherwise ValueError and nothing changes.
        """
        if not isinstance(d, dict):
            raise TypeError(f"`d` must be a dict, got {type(d).__name__}")
        slots = self._state_slots()
        missing = [k for k in slots if k not in d]
        unexpected = [k for k in d if k not in slots]
        if missing or unexpected:
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, (_, _, cur) in slots.items():
            arr = d[name]
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"`d[{name!r}]` must be a numpy.ndarray, got {type(arr).__name__}")
            if arr.shape != cur.shape or arr.dtype != cur.dtype:
                raise ValueError(
                    f"`d[{name!r}]` is {arr.dtype} {arr.shape}, the model has {cur.dtype} {cur.shape}"
                )
        for name, (_, _, cur) in slots.items():
            np.copyto(cur, d[name])

    def astype(self, dtype: Any) -> "Sequential":
        """Convert every float parameter and buffer to ``dtype`` (float32 or float64)."""
        for layer in self._layers:
            layer.astype(dtype)
        return self

    # -- modes -------------------------------------------------------------------

    @property
    def training(self):
        return all(layer.training for layer in self._layers) if self._layers else True

    def train(self, mode: bool = True) -> "Sequential":
        """Training mode for every layer (``mode=False``: evaluation mode)."""
        mode = _bool(mode, "mode")
        for layer in self._layers:
            layer.train(mode)
        return self

    def eval(self) -> "Sequential":
        return self.train(False)

    def freeze(self, upto=None):
        """Make the parameters of layers ``[0, upto)`` non-trainable (all layers when None).

        Frozen BatchNorm layers normalise with their running statistics.
        """
        if upto is None:
            upto = len(self._layers)
        upto = _int(upto, "upto", lo=0, hi=len(self._layers))
        for layer in self._layers[:upto]:
            for p in layer.parameters():
                p.trainable = False
                p.grad = None
        return self

    def unfreeze(self):
        """Make every parameter trainable again."""
        for p in self.parameters():
            p.trainable = True
        return self

    def replace_head(self, num_classes):
        """Replace the last Linear by a fresh ``Linear(in_features, num_classes)``; returns it.

        Raises
        ------
        ValueError
            The model has no Linear layer, or ``num_classes`` < 1.
        """
        num_classes = _int(num_classes, "num_classes")
        for i in range(len(self._layers) - 1, -1, -1):
            old = self._layers[i]
            if isinstance(old, Linear):
                head = Linear(old.in_features, num_classes, bias=old.bias is not None)
                dt = old.weight.data.dtype
                if dt != np.float32:
                    head.astype(dt)
                self[i] = head
                return head
        raise ValueError("replace_head: the model has no Linear layer to replace")

    # -- description -------------------------------------------------------------

    def output_shapes(self, input_shape):
        """Per-layer output shapes (without the batch dimension) for ``input_shape``."""
        shape = tuple(input_shape)
        shapes = []
        for layer in self._layers:
            shape = tuple(int(s) for s in layer.output_shape(shape))
            shapes.append(shape)
        return shapes

    def summary(self, input_shape: Optional[Sequence[int]] = None) -> str:
        """A table per layer: output shape, FLOPs, activation memory, receptive field, params.

        ``input_shape`` is (C, H, W) without the batch; when None it is inferred
        where possible. See ``striate.introspect.summary``.
        """
        return _summary.summary(self, input_shape)

    def to_config(self) -> Dict[str, Any]:
        """The architecture as a JSON-serialisable dict."""
        return {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "layers": [{"type": type(l).__name__, "config": l.config()} for l in self._layers],
        }

    @classmethod
    def from_config(cls, config):
        """Build a freshly initialised model from ``to_config()`` output."""
        if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
            raise ValueError(f"`config` must be a {CONFIG_FORMAT!r} dict")
        if config.get("version") != CONFIG_VERSION:
            raise ValueError(f"`config` version must be {CONFIG_VERSION}, got {config.get('version')!r}")
        specs = config.get("layers")
        if not isinstance(specs, list):
            raise ValueError("`config['layers']` must be a list")
        out = []
        for i, s in enumerate(specs):
            if not isinstance(s, dict) or "type" not in s or "config" not in s:
                raise ValueError(f"`config['layers'][{i}]` must have 'type' and 'config'")
            out.append(layer_from_config(s["type"], s["config"]))
        return cls(out)

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {l!r}" for i, l in enumerate(self._layers))
        return f"Sequential({inner}\n)" if inner else "Sequential()"

    # -- files and training (delegated) ------------------------------------------

    def save(self, path: PathLike) -> None:
        """Save weights and architecture to a safetensors file (see ``striate.io``)."""
        io.save_model(self, path)

    def fit(
        self,
        x: Any,
        y: Optional[ArrayLike] = None,
        *,
        epochs: int = 10,
        batch_size: int = 64,
        optimizer: Any = None,
        loss: Any = "cross_entropy",
        validation_data: Optional[Tuple[ArrayLike, ArrayLike]] = None,
        validation_split: float = 0.0,
        shuffle: bool = True,
        augment: Optional[Callable[..., np.ndarray]] = None,
        callbacks: Sequence[Any] = (),
        seed: Optional[int] = None,
        verbose: int = 1,
        resume_from: Optional[PathLike] = None,
        checkpoint: Optional[PathLike] = None,
        distributed: bool = False,
        cache_features: bool = True,
    ) -> "striate.training.History":
        """Train with mini-batch gradient descent; returns a ``striate.training.History``.

        Parameters
        ----------
        x : ndarray, shape (N, ...)
            Inputs: float32 as is, float64 cast, uint8 scaled by 1/255.
        y : ndarray
            Int class labels (N,) or targets (N, classes).
        epochs : int, default 10
        batch_size : int, default 64
        optimizer : optimizer, optional
            Default ``striate.optim.SGD(lr=0.01, momentum=0.9)``.
        loss : str or loss object, default "cross_entropy"
        validation_data : (x_val, y_val), optional
        validation_split : float in [0, 1), default 0
        shuffle : bool, default True
        augment : callable, optional
            ``augment(x_batch, seed) -> x_batch``, training batches only.
        callbacks : sequence of striate.training.Callback
        seed : int, optional
        verbose : {0, 1, 2}, default 1
        resume_from, checkpoint : str or os.PathLike, optional
            Resume from / write a resumable training checkpoint.
        distributed : bool, default False
            Data-parallel over MPI ranks.
        cache_features : bool, default True
            Train only the head on cached features of a frozen backbone, when exact.

        Every argument is described in full at ``striate.training.fit``, which
        this method calls.
        """
        return striate.training.fit(self, x, y, **_given(
            epochs=(epochs, 10), batch_size=(batch_size, 64), optimizer=(optimizer, None),
            loss=(loss, "cross_entropy"), validation_data=(validation_data, None),
            validation_split=(validation_split, 0.0), shuffle=(shuffle, True), augment=(augment, None),
            callbacks=(callbacks, ()), seed=(seed, None), verbose=(verbose, 1), resume_from=(resume_from, None),
            checkpoint=(checkpoint, None), distributed=(distributed, False), cache_features=(cache_features, True),
        ))

    def evaluate(self, x: Any, y: Optional[ArrayLike] = None, batch_size: int = 256, *,
                 loss: Any = None) -> Dict[str, float]:
        """Mean loss and accuracy on ``(x, y)`` in evaluation mode: ``{"loss": float, "accuracy": float}``.

        ``loss`` defaults to the loss the model was last trained with by
        ``fit``, else cross-entropy; see ``striate.training.evaluate``.
        """
        return striate.training.evaluate(self, x, y, **_given(batch_size=(batch_size, 256), loss=(loss, None)))

    def predict(self, x: ArrayLike, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, classes)`` for ``x`` in evaluation mode; see ``striate.training.predict``."""
        return striate.training.predict(self, x, **_given(batch_size=(batch_size, 256)))

    def profile(self, x, y=None, repeat=5, *, loss="cross_entropy", warmup=1):
        """Per-layer forward/backward time of one training step; see ``striate.introspect.profile``."""
        return _profile.profile(self, x, y, repeat, loss=loss, warmup=warmup)

    def to_onnx(self, path: PathLike, input_shape: Sequence[int], *, opset: int = _onnx_export.DEFAULT_OPSET) -> str:
        """Export to ONNX (opset >= 13) for onnxruntime; see ``striate.onnx_io.export``."""
        return _onnx_export.export(self, path, input_shape, opset=opset)


def _array_from(x):
    """An ndarray from a torch tensor, a list or any object with ``__array__`` / ``numpy()``."""
    if callable(getattr(x, "detach", None)) and callable(getattr(x, "numpy", None)):
        return np.asarray(x.detach().cpu().numpy() if callable(getattr(x, "cpu", None)) else x.detach().numpy())
    if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
        return np.asarray(x)
    if callable(getattr(x, "numpy", None)):
        return np.asarray(x.numpy())
    raise TypeError(f"`x` must be a numpy.ndarray or array-like (a torch tensor, a list), got {type(x).__name__}")


def _given(**pairs):
    """The keywords whose value is not their default object: what the caller chose.

    ``Sequential.fit`` and friends pass only those on, so the training
    functions' own defaults apply and a call reads as the caller wrote it.
    """
    return {k: v for k, (v, default) in pairs.items() if v is not default}


def _build(config, tensors, path):
    """A ``Sequential`` from a checked file's architecture and tensors (``io.read_model``)."""
    with io._private_init_rng():
        model = Sequential.from_config(config)
    try:
        model.load_state_dict(tensors)
    except (TypeError, ValueError) as exc:  # pragma: no cover - ruled out by io's checks
        raise io.FormatError(path, None, str(exc)) from None
    return model


io.register_builder(CONFIG_FORMAT, _build)


def load_model(path: PathLike) -> Sequential:
    """Load a ``Sequential`` saved by ``Sequential.save`` (``striate.load``); all checks first, then build.

    Raises
    ------
    striate.io.FormatError
        The file is damaged, not a striate model, or does not match its architecture.
    """
    config, tensors = io.read_model(path)
    return _build(config, tensors, path)
