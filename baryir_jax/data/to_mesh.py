"""Host-local batch → global `jax.Array` sharded over the data axis of a mesh."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def host_batch_to_global(batch: Any, mesh: Mesh, axis: str = "data") -> Any:
    """Place this process's batch (a pytree of NumPy arrays with a leading batch dimension) on `mesh`.

    Every leaf becomes a global array whose leading dimension is split over `axis`
    (`NamedSharding(mesh, P(axis))`), built with `jax.make_array_from_process_local_data`: the global batch is
    the concatenation of all processes' local batches in process order. The local batch size must be divisible
    by the number of this process's devices along `axis`.
    """
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {mesh.axis_names}.")
    sharding = NamedSharding(mesh, P(axis))
    local_devices = {d for d in mesh.devices.flat if d.process_index == jax.process_index()}
    axis_size = mesh.shape[axis]
    # devices of this process along the data axis: local devices / (devices per data shard)
    per_shard = mesh.devices.size // axis_size
    local_shards = max(1, len(local_devices) // per_shard)

    def put(path, x):
        x = np.asarray(x)
        name = jax.tree_util.keystr(path)
        if x.dtype.kind not in "biuf":
            raise TypeError(
                f"batch leaf {name} has dtype {x.dtype}: only numeric arrays can go on devices; drop it "
                "from the batch first."
            )
        if x.ndim == 0:
            raise ValueError(f"batch leaf {name} is a scalar; every leaf needs a leading batch dimension.")
        if x.shape[0] % local_shards:
            raise ValueError(
                f"batch leaf {name} has local batch size {x.shape[0]}, not divisible by the "
                f"{local_shards} data shards of this process (global batch must be a multiple of "
                f"{axis_size})."
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, batch)
