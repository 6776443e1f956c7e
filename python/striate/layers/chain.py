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

Buffer reuse along the walk: a layer whose output is a fresh array it does not
keep (class attribute ``_fresh_output``: Conv2d, Linear, BatchNorm2d,
Residual) hands the next layer an array nobody else can see; a layer that can
work in place (``_can_inplace``: ReLU) is then told so through its
``_inplace`` flag for that one call and overwrites that array instead of
allocating (ReLU after a conv is the conv's bias + ReLU epilogue). The same
holds backward: a gradient produced by a layer that returns fresh arrays
(``_fresh_grad``) may be overwritten by the layer before it (ReLU's
``dy * (y > 0)``). ``_passthrough`` layers (Identity, Flatten, Dropout)
return either a fresh array they do not keep or their input (or a view of it),
both ways, so they keep whatever the walk knew. The input of the walk and the ``dloss`` it is given
are never written to, and every returned output is the array of the last
layer (fresh unless that layer returns its input).

One pair of layers is fused backward: a MaxPool2d right after a ReLU
(``_absorbs_relu``) masks its own small ``dy`` by the sign of its output,
which is the ReLU's output at each window's argmax, and scatters that, so the
ReLU's pass over the full-size gradient is skipped (TF-tutorial CNN at batch
64: 1.6 M and 0.8 M elements). A MaxPool2d keeps its output for that, so it
does not count as a private output. Not with a ``call`` wrapper (the
profiler times the layers one by one) or a layer whose ``backward`` is set
on the instance.

Not here: the containers themselves (``striate.model.Sequential``,
``striate.layers.container``) or any loss, optimizer or mode switching.
"""

from __future__ import annotations

from .container import _Container

__all__ = ["layers_of", "named_leaves", "leaves", "first_trainable", "forward_chain", "backward_chain", "located"]


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


def _leaves(layer, out):
    if isinstance(layer, _Container):
        for child in layer.children():
            _leaves(child, out)
    else:
        out.append(layer)
    return out


def leaves(model):
    """The layers of ``model`` that are not containers, depth-first (see ``named_leaves``)."""
    out = []
    for layer in layers_of(model):
        _leaves(layer, out)
    return out


def first_trainable(layers):
    """The index of the first layer with a trainable parameter (``len(layers)`` when none has one)."""
    return next((i for i, l in enumerate(layers) if any(p.trainable for p in l.parameters())), len(layers))


def _plain(i, layer, value, backward):
    return layer.backward(value) if backward else layer(value)


def _call_inplace(call, i, layer, value, backward):
    """``call(...)`` with ``layer._inplace`` set for that one call (the value is private to the walk)."""
    layer._inplace = True
    try:
        return call(i, layer, value, backward)
    finally:
        layer._inplace = False


def forward_chain(layers, x, call=None):
    """Run ``layers`` in order on ``x``; ``call(i, layer, x, False)`` replaces ``layer(x)`` when given.

    A ReLU after a layer with a fresh, unkept output runs in place on it (see
    the module docstring); ``x`` itself is never written to.
    """
    call = call or _plain
    private = False
    for i, layer in enumerate(layers):
        try:
            if private and getattr(layer, "_can_inplace", False):
                x = _call_inplace(call, i, layer, x, False)
            else:
                x = call(i, layer, x, False)
        except ValueError as e:
            raise located(e, str(i), layer) from None
        private = getattr(layer, "_fresh_output", False) or (private and getattr(layer, "_passthrough", False))
    return x


def located(error, name, layer):
    """``error`` (a ValueError from ``layer``'s forward) as a ValueError naming where it happened.

    The name is torch's module name, built up as the error leaves each
    container (``"3.body.0"``): ``layer 3.body.0 (Conv2d): <the layer's message>``.
    Subclasses of ValueError (``FormatError``, ...) pass unchanged.
    """
    if type(error) is not ValueError:
        return error
    inner = getattr(error, "_striate_where", None)
    if inner is None:
        where = (name, type(layer).__name__, str(error))
    else:
        where = (f"{name}.{inner[0]}", inner[1], inner[2])
    out = ValueError(f"layer {where[0]} ({where[1]}): {where[2]}")
    out._striate_where = where
    return out


def _absorbs(layer, prev):
    """Whether ``layer`` (a MaxPool2d) takes the backward of ``prev`` (exactly a ReLU) into its own.

    Not when either has its own ``backward`` set on the instance (a wrapper or
    a spy expects to be called).
    """
    return (getattr(layer, "_absorbs_relu", False) and "_absorbed_by_max_pool" in type(prev).__dict__
            and layer.needs_input_grad and prev.needs_input_grad
            and "backward" not in layer.__dict__ and "backward" not in prev.__dict__)


def backward_chain(layers, dy, input_grad=True, call=None):
    """Back-propagate ``dy`` through ``layers`` in reverse; return the input gradient or None.

    With ``input_grad=False`` the walk stops at ``first_trainable(layers)``:
    that layer runs its backward with ``needs_input_grad`` off (its ``dx`` is
    not computed) and the layers before it get no gradient (their parameters'
    ``.grad`` is reset to None). ``call(i, layer, dy, True)`` replaces
    ``layer.backward(dy)`` when given.
    """
    call = call or _plain
    private = False  # dloss belongs to the caller
    stop = 0 if input_grad else first_trainable(layers)
    for layer in layers[:stop]:
        for p in layer.parameters():
            p.grad = None
    i = len(layers)
    while i > stop:
        i -= 1
        layer = layers[i]
        if call is _plain and i > stop and _absorbs(layer, layers[i - 1]):
            dy = layer._backward_after_relu(dy, layers[i - 1])
            i -= 1
            private = True
            continue
        if i == stop and not input_grad:
            saved = layer.needs_input_grad
            layer.needs_input_grad = False
            try:
                call(i, layer, dy, True)
            finally:
                layer.needs_input_grad = saved
            return None
        if private and getattr(layer, "_can_inplace", False):
            dy = _call_inplace(call, i, layer, dy, True)
        else:
            dy = call(i, layer, dy, True)
        private = getattr(layer, "_fresh_grad", False) or (private and getattr(layer, "_passthrough", False))
    return dy if input_grad else None
