"""Data parallelism on JAX's own sharding.

One :class:`jax.sharding.Mesh` over the devices with a single axis
``"data"``. Parameters, optimizer state and the datasets are replicated
(``PartitionSpec()``); each batch is sharded along its leading axis
(``PartitionSpec("data")``) inside the compiled step, so one ``jax.jit``
runs the step on every device and XLA inserts the all-reduce of the
gradient (and of every other reduction over the batch: batch-norm statistics
are over the *global* batch, and the metric sums add up across devices).
One device and N devices therefore compute the same thing, up to the order
of floating-point additions.

Several hosts: call ``jax.distributed.initialize()`` first in each process
(one process per host); ``jax.devices()`` then lists every device of every
host and the mesh spans them. The loaders here give every process the whole
dataset, which is what the replicated data placement expects. That path is
untested in this project (no multi-host machine here).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def make_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh: all devices (``None``), the first ``n``
    (an int), or the given devices."""
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices={devices} but {len(available)} device(s) are available "
                f"({available[0].platform}); pass 1..{len(available)} or None for all"
            )
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise TypeError(f"devices must be None, an int or a list of jax devices, got {devices!r}")
    return Mesh(np.asarray(chosen), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def check_divisible(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    n = mesh.size
    if batch_size % n:
        raise ValueError(
            f"{name}={batch_size} is not divisible by the {n} devices: each device must get "
            f"the same share of the batch (use a multiple of {n}, or devices=... to use fewer)"
        )


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` on all devices of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))
