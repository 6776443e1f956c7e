"""Training: ``fit``, ``evaluate``, ``predict``, ``History``, callbacks, checkpoints and the LR range test.

``striate.training`` is the single owner of the training step
(``train_step``): ``fit`` takes it for every batch, ``lr_range_test`` while the
learning rate grows, and ``striate.introspect.profile`` times it layer by layer.
It works on any object with the model protocol (``model(x)``,
``model.backward(dloss)``, ``parameters()``, ``state_dict()``/``load_state_dict()``,
``train()``/``eval()``, its layers as ``model.layers``), so it never imports
``Sequential``, which sits above it and delegates ``fit``/``evaluate``/``predict`` here.

Guarantees: a non-finite loss or gradient raises ``NonFiniteError`` (naming
the epoch and step) before the optimizer step, so the parameters keep their
values from before that step; checkpoints are written atomically through
``striate.io.write_file``; a run resumed from a checkpoint is bitwise equal to
an uninterrupted one.

The modules:

- ``data``: input checks, per-batch conversion, the validation split and
  ``ArrayBatches``, the epoch iterator the loop reads (the seam for other
  data sources);
- ``sources``: ``LoaderBatches``, that seam over a ``DataLoader`` or any
  re-iterable of ``(x_batch, y_batch)`` (``steps_per_epoch``, its state in
  checkpoints, MPI shards);
- ``step``: ``train_step``, ``NonFiniteError`` and the run hooks (one process
  or MPI ranks);
- ``loop``: ``fit`` (from ``_train_epoch``);
- ``evaluation``: ``evaluate``, ``predict`` and the model-mode guard;
- ``callbacks``: ``History``, ``Callback``, ``EarlyStopping``,
  ``ModelCheckpoint``, ``LearningRateScheduler``, ``LayerHealth``;
- ``checkpoint``: ``save_checkpoint``/``load_checkpoint`` and the run's randomness;
- ``feature_cache``: the frozen-backbone shortcut ``fit`` takes by itself;
- ``lr_range``: the learning-rate range test.

Deliberately not here: the layers, losses and optimizers themselves, mixed
precision, gradient accumulation, mid-epoch checkpoints and the MPI
machinery (``striate.distributed``).
"""

from __future__ import annotations

from .callbacks import (
    Callback,
    EarlyStopping,
    History,
    LayerHealth,
    LayerHealthWarning,
    LearningRateScheduler,
    ModelCheckpoint,
    TrainState,
)
from .checkpoint import _CHECKPOINT_KEY, load_checkpoint, save_checkpoint  # noqa: F401  (the key: tests read it)
from .data import batch_seed
from .loop import _mode, evaluate, fit, predict  # noqa: F401  (_mode: the CLI runs a model in eval mode)
from .lr_range import lr_range_test, suggest_lr
from .step import NonFiniteError, train_step

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "LayerHealth",
    "LayerHealthWarning",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "NonFiniteError",
    "TrainState",
    "batch_seed",
    "evaluate",
    "fit",
    "load_checkpoint",
    "lr_range_test",
    "predict",
    "save_checkpoint",
    "suggest_lr",
    "train_step",
]
