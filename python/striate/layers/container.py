"""The base of layers that hold layers: ``Sequential`` (in ``striate.model``) and ``Residual``.

A container is a ``Layer`` whose parameters, buffers and state live in its
children. ``_Container`` names them as torch names a module tree (the child's
name, a dot, the child's own name: ``"3.body.0.weight"``), lists parameters in
``torch.nn.Module.named_parameters()`` order, loads state all or nothing,
switches modes and converts dtypes through the whole tree, refuses a layer
instance that already sits somewhere in the tree, and prints itself as torch
prints a module tree. ``nodes`` lists a tree's layers; ``fuse_conv_bn`` folds
each BatchNorm2d that follows a Conv2d into it, for inference.

Not here: what a container computes (``Sequential`` chains its children,
``Residual`` adds two branches) or the files and training of a model
(``striate.model``).
"""

from __future__ import annotations

import copy

import numpy as np

from .base import Layer, _bool, _FLOAT_DTYPES, spec_state
from .conv import Conv2d
from .core import Identity
from .normalization import BatchNorm2d

__all__ = ["nodes", "child_spec", "fuse_conv_bn", "folded_conv_bn"]


def nodes(layer):
    """Every layer of the tree rooted at ``layer``, ``layer`` first, depth-first in state order."""
    out = [layer]
    if isinstance(layer, _Container):
        for _, child in layer.named_children():
            out += nodes(child)
    return out


def child_spec(layer):
    """The ``{"type", "config"}`` entry that describes ``layer`` in an architecture."""
    return {"type": type(layer).__name__, "config": layer.config()}


def _live_state(layer, prefix, out):
    """Add ``{full name: the live array}`` of every parameter and buffer under ``layer`` to ``out``."""
    if isinstance(layer, _Container):
        for name, child in layer.named_children():
            _live_state(child, f"{prefix}{name}.", out)
        return out
    for name, p in layer.named_parameters():
        out[prefix + name] = p.data
    for name, b in layer._buffers.items():
        out[prefix + name] = b
    return out


def backward_into(child, dy, need_dx):
    """``child.backward(dy)``; with ``need_dx`` False the child skips its input gradient (returns None)."""
    if need_dx:
        return child.backward(dy)
    saved = child.needs_input_grad
    child.needs_input_grad = False
    try:
        child.backward(dy)
    finally:
        child.needs_input_grad = saved
    return None


def _indent(text):
    return text.replace("\n", "\n  ")


class _Container(Layer):
    """A layer made of child layers (see the module docstring).

    Subclasses implement ``named_children()`` (``[(name, child), ...]`` in
    state order), ``forward``, ``backward``, ``output_shape``, ``config`` and
    the classmethods ``_config_state`` / ``_build_from_config``, and call
    ``_adopt()`` whenever their children change.
    """

    _inference_only = False

    def named_children(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def children(self):
        """The direct children, in state order."""
        return [child for _, child in self.named_children()]

    def _sequence(self):
        """The mutable list of children run one after the other (Sequential), or None."""
        return None

    # -- the tree ----------------------------------------------------------------

    def _check_child(self, layer, what, others=()):
        """``layer`` as a child named ``what``: a Layer that is not ``self`` and shares no node with ``others``."""
        if not isinstance(layer, Layer):
            raise TypeError(f"`{what}` must be a striate Layer or Sequential, got {type(layer).__name__}")
        inner = nodes(layer)
        if any(n is self for n in inner):
            raise ValueError(f"`{what}` is the container itself (or holds it): a model cannot contain itself")
        taken = {id(n) for other in others for n in nodes(other)}
        if id(layer) in taken:
            raise ValueError(f"`{what}` is already in the model at another index; use a new instance")
        clash = next((n for n in inner if id(n) in taken), None)
        if clash is not None:
            raise ValueError(
                f"`{what}` holds a {type(clash).__name__} that is already in the model at another index "
                "(a layer instance may sit in one place only); use a new instance"
            )
        return layer

    def _adopt(self):
        """Name every child and parameter below this container from its own place (``_path``)."""
        base = f"{self._path}." if self._path else ""
        for name, child in self.named_children():
            child._path = base + name
            if isinstance(child, _Container):
                child._adopt()
            else:
                for pname, p in child.named_parameters():
                    p.name = f"{child._path}.{pname}"

    # -- parameters and state ----------------------------------------------------

    def named_parameters(self):
        """``[(name, Parameter), ...]`` named as torch (``"body.0.weight"``), in its order."""
        return [(f"{n}.{pn}", p) for n, child in self.named_children() for pn, p in child.named_parameters()]

    def parameters(self):
        """Every parameter below the container, in ``named_parameters`` order."""
        return [p for _, p in self.named_parameters()]

    def buffers(self):
        """Every buffer below the container (BatchNorm statistics), by full name, in state order."""
        return {f"{n}.{bn}": b for n, child in self.named_children() for bn, b in child.buffers().items()}

    def state_dict(self):
        """Parameters and buffers, named as torch names a module tree, as copies."""
        return {f"{n}.{k}": v for n, child in self.named_children() for k, v in child.state_dict().items()}

    def _state_slots(self):
        """``{name: the live array}`` for every state entry."""
        return _live_state(self, "", {})

    def load_state_dict(self, d):
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
        for name, cur in slots.items():
            arr = d[name]
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"`d[{name!r}]` must be a numpy.ndarray, got {type(arr).__name__}")
            if arr.shape != cur.shape or arr.dtype != cur.dtype:
                raise ValueError(f"`d[{name!r}]` is {arr.dtype} {arr.shape}, the model has {cur.dtype} {cur.shape}")
        for name, cur in slots.items():
            np.copyto(cur, d[name])

    def astype(self, dtype):
        """Convert every float parameter and buffer below the container to ``dtype``, in place."""
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"`dtype` must be float32 or float64, got {dtype}")
        for child in self.children():
            child.astype(dtype)
        return self

    # -- modes -------------------------------------------------------------------

    @property
    def training(self):
        kids = self.children()
        return all(child.training for child in kids) if kids else getattr(self, "_own_training", True)

    @training.setter
    def training(self, mode):
        self._own_training = mode

    def train(self, mode=True):
        """Training mode for every layer below (``mode=False``: evaluation mode)."""
        mode = _bool(mode, "mode")
        if mode and self._inference_only:
            raise RuntimeError(
                "this model was made by fuse() for inference only (its BatchNorm layers are folded away); "
                "train the original model instead"
            )
        self._own_training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode for every layer below."""
        return self.train(False)

    # -- description -------------------------------------------------------------

    @classmethod
    def state_spec(cls, config):
        """``{name: (shape, dtype)}`` of the state a container built from ``config`` has (nothing allocated)."""
        return cls._config_state(config, cls.__name__, [10_000])

    @classmethod
    def _child_state(cls, spec, where, budget, prefix):
        """The state of a child entry, its names prefixed by ``prefix``."""
        return {f"{prefix}.{k}": v for k, v in spec_state(spec, where, budget).items()}

    def __repr__(self):
        inner = "".join(f"\n  ({n}): {_indent(repr(c))}" for n, c in self.named_children())
        return f"{type(self).__name__}({inner}\n)" if inner else f"{type(self).__name__}()"


def folded_conv_bn(conv, bn):
    """``(weight, bias)`` of ``conv`` followed by ``bn`` (its running statistics), in ``conv``'s dtype.

    Computed in float64 from the live weights and buffers. ``fuse_conv_bn``
    stores them; the planned inference forward (``striate._plan``) computes
    them on every call, so both give the same bits.
    """
    dt = conv.weight.data.dtype
    scale = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    bias = conv.bias.data.astype(np.float64) if conv.bias is not None else np.zeros(conv.out_channels)
    w = conv.weight.data.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    b = (bias - bn.running_mean.astype(np.float64)) * scale + bn.bias.data.astype(np.float64)
    return w.astype(dt), b.astype(dt)


def _fold(conv, bn):
    """Fold ``bn`` (evaluation-mode statistics) into ``conv`` in place; the conv gains a bias if it had none."""
    w, b = folded_conv_bn(conv, bn)
    if conv.bias is None:
        conv.bias = conv._add_param("bias", (conv.out_channels,), fill=0.0)
    conv.weight.data = w
    conv.bias.data = b
    conv.weight.grad = conv.bias.grad = None


def fuse_conv_bn(model):
    """An evaluation-mode copy of ``model`` with each BatchNorm2d that directly follows a Conv2d folded into it.

    In every chain of the tree (the top level and any nested ``Sequential``),
    a ``Conv2d`` followed by a ``BatchNorm2d`` with as many features becomes
    one ``Conv2d`` with the folded weight and bias, and the BatchNorm's place
    holds an ``Identity`` (so the other layers keep their indices and state
    names). The copy is for inference only: ``train()`` on it raises.
    """
    fused = copy.deepcopy(model)
    fused.eval()
    for node in nodes(fused):
        seq = node._sequence() if isinstance(node, _Container) else None
        if seq is None:
            continue
        for j in range(len(seq) - 1):
            conv, bn = seq[j], seq[j + 1]
            if isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d) and bn.num_features == conv.out_channels:
                _fold(conv, bn)
                seq[j + 1] = Identity().eval()
    for node in nodes(fused):
        if isinstance(node, _Container):
            node._inference_only = True
    fused._adopt()
    return fused
