"""Walking a chain of layers: the one forward and backward pass every caller shares.

``layers_of(model)`` lists the layers of anything that holds them (a
``Sequential``, a list, or a bare layer, which counts as a chain of one);
``named_leaves(model)`` goes down into nested containers and lists every
layer that holds no layers, with its torch-style name (``"3.body.0"``);
``first_trainable(layers)`` is where a training step's backward stops;
``forward_chain`` and ``backward_chain`` run the layers in order and in reverse,
optionally through a ``call(i, layer, value)`` wrapper (``striate.introspect``
times each layer that way). ``Sequential.forward``/``backward``, the training
step and the profiler all go through here.

Not here: the containers themselves (``striate.model.Sequential``,
``striate.layers.container``) or any loss, optimizer or mode switching.
"""

from __future__ import annotations

from .container import _Container

__all__ = ["layers_of", "named_leaves", "leaves", "first_trainable", "forward_chain", "backward_chain"]


def layers_of(model):
    """The layers of ``model`` in order, as a new list.

    A model with a ``layers`` attribute (``Sequential``) gives those; another
    indexable sequence gives its items; anything else counts as one layer.
    """
    layers = getattr(model, "layers", None)
    if layers is not None and not callable(layers):
        return list(layers)
    if hasattr(model, "__len__") and hasattr(model, "__getitem__"):
        return [model[i] for i in range(len(model))]
    return [model]


def _named_leaves(layer, name, out):
    if isinstance(layer, _Container):
        for child_name, child in layer.named_children():
            _named_leaves(child, f"{name}.{child_name}", out)
    else:
        out.append((name, layer))
    return out


def named_leaves(model):
    """``[(name, layer), ...]`` for every layer of ``model`` that is not a container, depth-first.

    Names are the torch module names: ``"4"`` for a top-level layer,
    ``"3.body.0"`` inside a ``Residual`` at index 3.
    """
    out = []
    for i, layer in enumerate(layers_of(model)):
        _named_leaves(layer, str(i), out)
    return out


def leaves(model):
    """The layers of ``model`` that are not containers, depth-first (see ``named_leaves``)."""
    return [layer for _, layer in named_leaves(model)]


def first_trainable(layers):
    """The index of the first layer with a trainable parameter (``len(layers)`` when none has one)."""
    return next((i for i, l in enumerate(layers) if any(p.trainable for p in l.parameters())), len(layers))


def _plain(i, layer, value, backward):
    return layer.backward(value) if backward else layer(value)


def forward_chain(layers, x, call=None):
    """Run ``layers`` in order on ``x``; ``call(i, layer, x, False)`` replaces ``layer(x)`` when given."""
    call = call or _plain
    for i, layer in enumerate(layers):
        x = call(i, layer, x, False)
    return x


def backward_chain(layers, dy, input_grad=True, call=None):
    """Back-propagate ``dy`` through ``layers`` in reverse; return the input gradient or None.

    With ``input_grad=False`` the walk stops at ``first_trainable(layers)``:
    that layer runs its backward with ``needs_input_grad`` off (its ``dx`` is
    not computed) and the layers before it get no gradient (their parameters'
    ``.grad`` is reset to None). ``call(i, layer, dy, True)`` replaces
    ``layer.backward(dy)`` when given.
    """
    call = call or _plain
    stop = 0 if input_grad else first_trainable(layers)
    for layer in layers[:stop]:
        for p in layer.parameters():
            p.grad = None
    for i in range(len(layers) - 1, stop - 1, -1):
        layer = layers[i]
        if i == stop and not input_grad:
            saved = layer.needs_input_grad
            layer.needs_input_grad = False
            try:
                call(i, layer, dy, True)
            finally:
                layer.needs_input_grad = saved
            return None
        dy = call(i, layer, dy, True)
    return dy if input_grad else None
