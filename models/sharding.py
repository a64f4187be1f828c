"""FSDP-style partitioning rules: shard each big weight's largest divisible dimension over one mesh axis.

The 557M AmoebaNet does not fit one accelerator's memory with optimizer state; sharding its large
kernels over a data-parallel axis (ZeRO-3 / FSDP) does. Small tensors (BN statistics, biases) stay
replicated because gathering them costs more than storing them.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DEFAULT_MIN_SIZE = 2**18  # elements; ~1 MiB in float32


def partition_spec(shape: tuple[int, ...], mesh_axis: str, axis_size: int, min_size: int) -> PartitionSpec:
    """The spec for one array: its largest dimension divisible by `axis_size`, or replicated."""
    size = 1
    for dim in shape:
        size *= dim
    if axis_size <= 1 or size < min_size:
        return PartitionSpec()
    candidates = [i for i, dim in enumerate(shape) if dim % axis_size == 0]
    if not candidates:
        return PartitionSpec()
    best = max(candidates, key=lambda i: (shape[i], i))
    return PartitionSpec(*(mesh_axis if i == best else None for i in range(len(shape))))


def param_partition_specs(
    params: Any, mesh_axis: str = "fsdp", min_size: int = DEFAULT_MIN_SIZE, axis_size: int | None = None
) -> Any:
    """A pytree of PartitionSpec matching `params` (arrays or ShapeDtypeStructs).

    `axis_size` is the size of `mesh_axis` in the mesh the specs will be used with; it defaults to
    `jax.device_count()` (a one-axis FSDP mesh over every device).
    """
    size = jax.device_count() if axis_size is None else axis_size
    return jax.tree.map(lambda x: partition_spec(tuple(x.shape), mesh_axis, size, min_size), params)


def param_shardings(params: Any, mesh: Mesh, mesh_axis: str = "fsdp", min_size: int = DEFAULT_MIN_SIZE) -> Any:
    """NamedShardings for `params` on `mesh` (for jit's in/out_shardings or jax.device_put)."""
    specs = param_partition_specs(params, mesh_axis, min_size, axis_size=mesh.shape[mesh_axis])
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
