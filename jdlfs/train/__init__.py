"""Training for any objective, on one device or many, with exact resume.

* :mod:`~jdlfs.train.objectives` -- :class:`Task` (objective + evaluation),
  :func:`classification`, :func:`sequence`, :func:`summarize`.
* :mod:`~jdlfs.train.step` -- :class:`TrainState`, :func:`make_train_step`.
* :mod:`~jdlfs.train.loop` -- :func:`fit`, :func:`evaluate`, :class:`Evaluator`,
  :func:`make_evaluate`, :func:`full_batch` (the epoch loop; why it is not a
  ``lax.scan``).
* :mod:`~jdlfs.train.parallel` -- the data-parallel mesh and shardings.

Typical use::

    task = train.classification(model, preprocess=norm.apply)
    result = train.fit(task, params, state, optax.adam(1e-3), (x_train, y_train),
                       epochs=10, batch_size=128, key=jax.random.key(0),
                       test_data=(x_test, y_test), checkpoint="runs/x/checkpoint")
"""

from .loop import (
    Evaluator,
    FitResult,
    evaluate,
    fit,
    full_batch,
    load_checkpoint,
    make_evaluate,
    num_examples,
    save_checkpoint,
)
from .objectives import EvalFn, Objective, Task, classification, sequence, summarize
from .parallel import make_mesh
from .step import TrainState, init_train_state, make_scan_steps, make_train_step, make_update

__all__ = [
    "EvalFn",
    "Evaluator",
    "FitResult",
    "Objective",
    "Task",
    "TrainState",
    "classification",
    "evaluate",
    "fit",
    "full_batch",
    "init_train_state",
    "load_checkpoint",
    "make_evaluate",
    "make_mesh",
    "make_scan_steps",
    "make_train_step",
    "make_update",
    "num_examples",
    "save_checkpoint",
    "sequence",
    "summarize",
]
