"""Sequential: a list of layers run in order, with torch-compatible state names.

``Sequential`` chains ``forward`` and ``backward``, names its state exactly as
``torch.nn.Sequential`` does (``"0.weight"``, ``"1.running_mean"``, and
``"3.body.0.weight"`` through nested ``Sequential`` and ``Residual``
children), loads state all or nothing, freezes prefixes, swaps the
classifier head, folds BatchNorm into convolutions and plans the forward for
inference (``fuse``; ``predict`` runs the planned forward too),
describes itself (``summary``, ``to_config``, nested for nested children) and
saves to safetensors through ``striate.io``. It is a container layer
(``striate.layers.container``), so it can itself be a child.
It sits above the machinery it delegates to, as Keras's ``Model`` sits above
its trainer: training (``fit``/``evaluate``/``predict``, ``striate.training``),
files (``striate.io``), the summary and profile (``striate._summary``,
``striate._profile``) and ONNX export (``striate._onnx_export``) all work on
it by duck typing and never import it. Building a model from a config or a
file lives here (``Sequential.from_config``, ``load_model``, which is
``striate.load``). Deliberately not here: branches other than ``Residual``'s,
hooks.
"""

from __future__ import annotations

import numbers
import os
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

import striate.training  # looked up at call time, as ``striate.training.fit``, so it can be replaced

from . import _core, _onnx_export, _plan, _profile, _summary, io
from .layers import Layer, Linear, _Container, _bool, _int, child_spec, fuse_conv_bn, layer_from_config
from .layers.chain import backward_chain, forward_chain

__all__ = ["Sequential", "load_model"]

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = Any  # an ndarray, or anything numpy.asarray takes (a torch tensor, a list)

CONFIG_FORMAT = "striate.sequential"
CONFIG_VERSION = 1

# Planned forwards per model (``_plan.Plan`` by input shape), outside the instances so that
# copies (``fuse`` deep-copies) and pickles never carry closures over another model's layers.
_PLANS: "weakref.WeakKeyDictionary[Any, Dict[tuple, Any]]" = weakref.WeakKeyDictionary()
_MAX_PLANS = 8  # input shapes remembered per model; the oldest go first
# A planned forward runs a batch whose largest activation exceeds this many bytes
# as equal smaller batches: ResNet-20 inference at batch 256 (16 MB activations)
# ran 9% faster as two batches of 128 (8 MB), whose activations stay in the
# caches between layers (Zen 4, 2 threads); 32 rows per call ran slower again.
# A chain with residual blocks counts its activations twice (Plan.row_bytes):
# ResNet-20 then runs as four batches of 64, another 1.03-1.07x (both ISA
# paths, old and new rule interleaved in one process), where halving this
# limit for every model cost the TF-tutorial CNN and LeNet-5 5-10%.
# Rows are computed the same way in any batch, so the output bits do not change.
_PLAN_BYTES = 8 << 20


# Which thread is inside which model (id -> (thread ident, depth)): one thread at a time per model.
_ENTRY_LOCK = threading.Lock()
_ENTERED: Dict[int, Tuple[int, int]] = {}


class _sole_entry:
    """Raise RuntimeError when another thread is inside ``model``: its layers keep per-call caches.

    A class rather than a generator: it guards every forward, and a planned
    forward of one image takes some tens of microseconds.
    """

    __slots__ = ("key", "me", "depth")

    def __init__(self, model, what):
        self.key, self.me = id(model), threading.get_ident()
        with _ENTRY_LOCK:
            owner, self.depth = _ENTERED.get(self.key, (self.me, 0))
            if owner != self.me:
                raise RuntimeError(
                    f"Sequential.{what}: another thread is running this model; a model holds per-call "
                    "state in its layers, so use one model (or a copy.deepcopy of it) per thread"
                )
            _ENTERED[self.key] = (self.me, self.depth + 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with _ENTRY_LOCK:
            if self.depth:
                _ENTERED[self.key] = (self.me, self.depth)
            else:
                del _ENTERED[self.key]
        return False


class Sequential(_Container):
    """Layers applied in order; a ``Sequential`` may hold ``Sequential`` and ``Residual`` children.

    Parameters
    ----------
    layers : iterable of Layer
        Also accepted as separate arguments: ``Sequential(a, b, c)``. A layer
        instance may sit in one place of the model only.

    Examples
    --------
    >>> from striate import layers as L
    >>> m = Sequential([L.Linear(4, 3), L.ReLU(), L.Linear(3, 2)])
    >>> list(m.state_dict())
    ['0.weight', '0.bias', '2.weight', '2.bias']
    >>> block = L.Residual(Sequential([L.Linear(2, 2), L.ReLU()]))
    >>> list(Sequential([L.Linear(4, 2), block]).state_dict())
    ['0.weight', '0.bias', '1.body.0.weight', '1.body.0.bias']
    """

    def __init__(self, layers: Union[Layer, Iterable[Layer]] = (), *more: Layer) -> None:
        super().__init__()
        if isinstance(layers, Layer):
            layers = (layers,) + more
        elif more:
            raise TypeError("pass the layers as one list, or each as its own argument")
        self._layers = []
        for i, layer in enumerate(layers):
            self._layers.append(self._check_layer(layer, i))
        self._adopt()
        self._classes = self._input_shape = self._dataset = None

    # -- container protocol ------------------------------------------------------

    def named_children(self):
        return [(str(i), layer) for i, layer in enumerate(self._layers)]

    def children(self):
        return list(self._layers)  # named_children's order, without the names (mode checks walk this per call)

    def _sequence(self):
        return self._layers

    def _check_layer(self, layer, i):
        if not isinstance(layer, Layer):
            raise TypeError(f"`layers[{i}]` must be a striate Layer, got {type(layer).__name__}")
        # A layer remembers one forward call, so one instance cannot sit in two places.
        others = [other for j, other in enumerate(self._layers) if j != i]
        return self._check_child(layer, f"layers[{i}]", others)

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
        self._adopt()

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def append(self, layer: Layer) -> "Sequential":
        """Add a layer at the end."""
        self._layers.append(self._check_layer(layer, len(self._layers)))
        self._adopt()
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
        """Run every layer in order.

        A model made by ``fuse()``, and any model inside ``predict``, runs a
        forward planned once per input shape (``striate._plan``): the same
        kernels and bits, with the per-layer checks done at planning time,
        except that a BatchNorm2d right after a Conv2d is folded into it on
        every call as ``fuse()`` folds it (float32 rounding).
        Such a forward saves nothing for ``backward``. The array returned is
        the last layer's output, new on every call. Another thread entering the
        same model meanwhile gets ``RuntimeError``.
        """
        with _sole_entry(self, "forward"):
            try:
                if self._inference_only or getattr(self, "_predicting", False):
                    return self._planned_forward(x, split=True)
                return forward_chain(self._layers, x)
            except ValueError as e:
                if type(e) is not ValueError or self._input_shape is None or not hasattr(e, "_striate_where"):
                    raise
                shape = getattr(x, "shape", None)
                raise ValueError(f"{e} (this model takes input of shape (N, {', '.join(map(str, self._input_shape))}), "
                                 f"got {shape})") from None

    def _planned_forward(self, x, split=False):
        """``forward`` through the plan for ``x.shape``, planning it on a checked first run.

        Every answer, the first included, is the plan's. With ``split``, a
        batch whose largest activation is above ``_PLAN_BYTES`` runs its
        leading layers, up to the last one whose output is still that large,
        as equal smaller batches (a plan each), their outputs joined; the
        layers after them take the whole batch (a fully-connected layer reads
        its weights once per call, so smaller batches would read them again).
        """
        return self._run_plan(tuple(self._layers), x, split)

    def _run_plan(self, layers, x, split):
        """``layers`` (a tuple of this model's top-level layers, in order) on ``x`` through their plan."""
        if not _plan.plannable(x):
            return forward_chain(list(layers), x)
        plans = _PLANS.get(self)
        if plans is None:
            plans = _PLANS[self] = {}
        key = (x.shape, layers)
        plan = plans.get(key)
        if plan is not None:
            n = x.shape[0]
            parts = plan.parts(n, _PLAN_BYTES) if split else 1
            cut = plan.cut(_PLAN_BYTES // n) if parts > 1 else 0
            if cut > 0:
                rows = -(-n // min(parts, n))
                head = np.concatenate([self._run_plan(layers[:cut], x[i:i + rows], False) for i in range(0, n, rows)])
                return self._run_plan(layers[cut:], head, False) if cut < len(layers) else head
            try:
                return plan(x)
            except _core.StalePlan:  # a parameter was cast or replaced since planning: plan again
                plans.clear()
                return self._run_plan(layers, x, split)
        shapes = []

        def record(i, layer, value, backward):
            out = layer(value)
            shapes.append(np.shape(out))
            return out

        forward_chain(list(layers), x, record)
        if len(plans) >= _MAX_PLANS:
            del plans[next(iter(plans))]
        plans[key] = _plan.build(list(layers), x, shapes)
        # The answer comes from the plan, the first time too: the checked run
        # computes a BatchNorm after a conv unfolded, which rounds differently.
        return self._run_plan(layers, x, split)

    def backward(self, dloss: np.ndarray, input_grad: bool = True) -> Optional[np.ndarray]:
        """Back-propagate ``dloss`` (the gradient of the loss w.r.t. the outputs).

        Writes every trainable parameter's ``.grad`` and returns ``dx``, the
        gradient w.r.t. the input. With ``input_grad=False`` (what ``fit``
        uses) it returns None and stops at the first layer that has trainable
        parameters, which skips computing its ``dx``. A nested ``Sequential``
        whose ``needs_input_grad`` its parent turned off does the same.
        """
        input_grad = _bool(input_grad, "input_grad") and self.needs_input_grad
        with _sole_entry(self, "backward"):
            return backward_chain(self._layers, dloss, input_grad)

    def output_shape(self, input_shape):
        """The output shape (without the batch dimension) for ``input_shape``."""
        shape = tuple(input_shape)
        for layer in self._layers:
            shape = tuple(int(s) for s in layer.output_shape(shape))
        return shape

    # -- parameters and state ----------------------------------------------------

    def parameters(self) -> List[Any]:
        """Every parameter, in torch's ``named_parameters()`` order: layer by layer, depth-first,
        each layer's weight before its bias."""
        return super().parameters()

    def named_parameters(self) -> List[Tuple[str, Any]]:
        """``[("0.weight", Parameter), ...]``, named and ordered as torch's ``named_parameters()``."""
        return super().named_parameters()

    def state_dict(self) -> Dict[str, np.ndarray]:
        """``{"0.weight": array, ...}``: parameters and buffers named as ``torch.nn.Sequential`` (copies).

        A nested ``Sequential`` at index i gives ``"i.j.weight"``, a
        ``Residual`` ``"i.body.j.weight"`` and ``"i.shortcut.j.weight"`` (or
        ``"i.shortcut.weight"`` for a single-layer shortcut).
        """
        return super().state_dict()

    # -- modes -------------------------------------------------------------------

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

        The last Linear of the chain, looking into nested ``Sequential``
        children too (not into a ``Residual``, whose branches must keep their
        shape).

        Raises
        ------
        ValueError
            The model has no Linear layer, or ``num_classes`` < 1.
        """
        num_classes = _int(num_classes, "num_classes")
        head = self._replace_last_linear(num_classes)
        if head is None:
            raise ValueError("replace_head: the model has no Linear layer to replace")
        return head

    def _replace_last_linear(self, num_classes):
        for i in range(len(self._layers) - 1, -1, -1):
            old = self._layers[i]
            if isinstance(old, Sequential):
                head = old._replace_last_linear(num_classes)
                if head is not None:
                    return head
            elif isinstance(old, Linear):
                head = Linear(old.in_features, num_classes, bias=old.bias is not None)
                dt = old.weight.data.dtype
                if dt != np.float32:
                    head.astype(dt)
                self[i] = head
                return head
        return None

    def fuse(self):
        """An inference-only copy: BatchNorm2d folded into the Conv2d before it, activations fused, a planned forward.

        In the top-level chain and in every nested ``Sequential`` (a
        ``Residual``'s body and shortcut included), ``Conv2d`` then
        ``BatchNorm2d`` becomes one ``Conv2d`` whose weight and bias hold the
        BatchNorm's evaluation-mode affine map (computed in float64), and an
        ``Identity`` takes the BatchNorm's place, so every other layer keeps
        its index and state names. The copy is in evaluation mode and its
        outputs equal this model's evaluation-mode outputs to float32
        rounding; calling ``train()`` on it raises RuntimeError. This model is
        not changed.

        Its ``forward`` is planned once per input shape (``striate._plan``):
        the first call with a shape runs the layers with all their checks and
        records a list of direct kernel calls; later calls run that list, with
        each ReLU that follows a Conv2d or Linear (Identity layers between
        allowed) applied in place on that layer's output, and nothing saved
        for ``backward``. Weights are read on every call, so editing them
        later is seen; up to 8 input shapes are remembered.

        Examples
        --------
        >>> import numpy as np, striate as st
        >>> from striate import layers as L
        >>> m = st.Sequential([L.Conv2d(1, 2, 3, bias=False), L.BatchNorm2d(2), L.ReLU()])
        >>> f = m.fuse()
        >>> [type(l).__name__ for l in f], list(f.state_dict())
        (['Conv2d', 'Identity', 'ReLU'], ['0.weight', '0.bias'])
        """
        return fuse_conv_bn(self)

    # -- what the model knows about its data (saved in the file) -----------------

    @property
    def classes(self):
        """The class names (list of str, index ``k`` naming output ``k``) or None.

        ``fit`` sets them from an ``ImageFolder``'s classes when trained on one
        through a loader; saved in the file and restored by ``striate.load``.
        """
        return None if self._classes is None else list(self._classes)

    @classes.setter
    def classes(self, value):
        self._classes = None if value is None else io.check_classes(value, "classes")

    @property
    def input_shape(self):
        """One sample's ``(C, H, W)``, or None; ``fit`` sets it from the data. Saved in the file."""
        return self._input_shape

    @input_shape.setter
    def input_shape(self, value):
        self._input_shape = None if value is None else io.check_input_shape(value, "input_shape")

    @property
    def dataset(self):
        """The name of the data set the model was trained on (``striate train`` sets it), or None."""
        return self._dataset

    @dataset.setter
    def dataset(self, value):
        self._dataset = None if value is None else io.check_dataset_name(value, "dataset")

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
        """The architecture as a JSON-serialisable dict; nested containers nest their entries."""
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, **self.config()}

    def config(self) -> Dict[str, Any]:
        """``{"layers": [{"type": ..., "config": ...}, ...]}``: the entry of a nested ``Sequential``."""
        return {"layers": [child_spec(l) for l in self._layers]}

    @classmethod
    def from_config(cls, config):
        """Build a freshly initialised model from ``to_config()`` output."""
        if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
            raise ValueError(f"`config` must be a {CONFIG_FORMAT!r} dict")
        if config.get("version") != CONFIG_VERSION:
            raise ValueError(f"`config` version must be {CONFIG_VERSION}, got {config.get('version')!r}")
        return cls._build_from_config({"layers": config.get("layers")})

    @classmethod
    def _build_from_config(cls, config):
        if set(config) != {"layers"}:
            raise TypeError(f"`config` of Sequential must have the one key 'layers', got {sorted(config)}")
        specs = config["layers"]
        if not isinstance(specs, list):
            raise ValueError("`config['layers']` must be a list")
        out = []
        for i, s in enumerate(specs):
            if not isinstance(s, dict) or "type" not in s or "config" not in s:
                raise ValueError(f"`config['layers'][{i}]` must have 'type' and 'config'")
            out.append(layer_from_config(s["type"], s["config"]))
        return cls(out)

    @classmethod
    def _config_state(cls, config, where, budget):
        if not isinstance(config, dict) or set(config) != {"layers"} or not isinstance(config["layers"], list):
            raise ValueError(f"layer {where} (Sequential): config must be an object with one list, 'layers'")
        state = {}
        for j, spec in enumerate(config["layers"]):
            state.update(cls._child_state(spec, f"{where}.{j}", budget, str(j)))
        return state

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
        validation_data: Any = None,
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
        steps_per_epoch: Optional[int] = None,
        metrics: Optional[Sequence[str]] = None,
        clip_grad_norm: Optional[float] = None,
    ) -> "striate.training.History":
        """Train with mini-batch gradient descent; returns a ``striate.training.History``.

        Parameters
        ----------
        x : ndarray, shape (N, ...), ArrayDataset, DataLoader or iterable of (x_batch, y_batch)
            Inputs: float32 as is, float64 cast, uint8 scaled by 1/255, batch by
            batch; or a batch source (then ``y`` is None).
        y : ndarray, optional
            Int class labels (N,) or targets (N, classes); None with a source.
        epochs : int, default 10
        batch_size : int, default 64
        optimizer : optimizer, optional
            Default ``striate.optim.SGD(lr=0.01, momentum=0.9)``.
        loss : str or loss object, default "cross_entropy"
        validation_data : (x_val, y_val) or a loader, optional
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
        steps_per_epoch : int, optional
            Batch sources only: batches per epoch (default one full pass).
        metrics : list of str, optional
            ``"accuracy"`` (always recorded), ``"top_k"`` (top-5), ``"top_<k>"``.
        clip_grad_norm : float, optional
            Clip the gradients' total 2-norm to this value before every step.

        Every argument is described in full at ``striate.training.fit``, which
        this method calls.
        """
        return striate.training.fit(self, x, y, **_given(
            epochs=(epochs, 10), batch_size=(batch_size, 64), optimizer=(optimizer, None),
            loss=(loss, "cross_entropy"), validation_data=(validation_data, None),
            validation_split=(validation_split, 0.0), shuffle=(shuffle, True), augment=(augment, None),
            callbacks=(callbacks, ()), seed=(seed, None), verbose=(verbose, 1), resume_from=(resume_from, None),
            checkpoint=(checkpoint, None), distributed=(distributed, False), cache_features=(cache_features, True),
            steps_per_epoch=(steps_per_epoch, None), metrics=(metrics, None),
            clip_grad_norm=(clip_grad_norm, None),
        ))

    def evaluate(self, x: Any, y: Optional[ArrayLike] = None, batch_size: int = 256, *,
                 loss: Any = None) -> Dict[str, float]:
        """Mean loss and accuracy on ``(x, y)``, or a loader, in evaluation mode: ``{"loss", "accuracy"}``.

        ``loss`` defaults to the loss the model was last trained with by
        ``fit``, else cross-entropy; see ``striate.training.evaluate``.
        """
        return striate.training.evaluate(self, x, y, **_given(batch_size=(batch_size, 256), loss=(loss, None)))

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, classes)`` for ``x`` (an array or a loader) in evaluation mode.

        Runs the planned forward (see ``forward``): the plan for each batch
        shape is made once and kept, and reads the weights live, so later
        weight changes are seen. See ``striate.training.predict``.
        """
        out = self._predict_on_plan(x, batch_size)
        if out is not None:
            return out
        was = getattr(self, "_predicting", False)
        self._predicting = True  # forward goes through the planned path (nothing is saved for backward)
        try:
            return striate.training.predict(self, x, **_given(batch_size=(batch_size, 256)))
        finally:
            self._predicting = was

    def _predict_on_plan(self, x, batch_size):
        """``predict`` of one batch straight on its plan, or None when the general path must run.

        The common call of a model in service: every layer already in
        evaluation mode, one C-contiguous float32 batch of at most
        ``batch_size`` rows whose plan exists and runs whole. The answer is the
        general path's (the same plan, then ``probabilities``) without its
        generic handling of inputs, modes and batches, which took 3-7 us of
        every call: one image through LeNet-5 1.11x faster, the TF-tutorial
        CNN and ``typical_cnn`` 1.02x (Zen 4, 2 threads, both ISA paths,
        interleaved). A stale plan or an error goes the general way, which
        plans again or words the error.
        """
        if not (type(x) is np.ndarray and type(batch_size) is int and x.ndim >= 2 and 0 < x.shape[0] <= batch_size
                and _plan.plannable(x)):
            return None
        plans = _PLANS.get(self)
        plan = plans.get((x.shape, tuple(self._layers))) if plans else None
        evaluation = striate.training.evaluation
        if plan is None or plan.parts(x.shape[0], _PLAN_BYTES) > 1 or not evaluation.in_mode(self, False):
            return None
        with _sole_entry(self, "forward"):
            try:
                out = plan(x)
            except (_core.StalePlan, ValueError):
                return None
        return evaluation.probabilities(out, evaluation.ends_in_softmax(self))

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
    config, tensors, info = io.read_model(path, with_info=True)
    return io.apply_info(_build(config, tensors, path), info)
