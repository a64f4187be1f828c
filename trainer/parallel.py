"""Runs the train step under `jax.pmap` or under `jax.jit` over a `Mesh` (data-parallel batch,
replicated or FSDP-sharded state), behind one small interface so the loop does not care which.

The host-side view of the state (what checkpoints hold) is the same in both modes: one copy of every
array. `put_state` places that copy for the mode, `host_state` takes it back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trainer.state import TrainState

DATA_AXIS = "data"
PARALLELISMS = ("pmap", "jit")
PMAP_AXIS = "batch"  # the pmap axis the step averages over; models sync BatchNorm over it


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all devices (every process's), axis 'data', Auto axis types."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = 2**14) -> P:
    """Shard an array's largest axis divisible by the mesh size; small or indivisible ones stay replicated."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % num_shards == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool, min_size: int = 2**14) -> Any:
    size = mesh.shape[DATA_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(x.shape, size, min_size) if fsdp else P()), abstract_state
    )


class JitRunner:
    """jit with explicit shardings: the batch split over 'data', the state replicated or FSDP-sharded."""

    def __init__(
        self,
        step_fn: Callable,
        abstract_state: TrainState,
        *,
        fsdp: bool,
        fsdp_min_size: int = 2**14,
        mesh: Mesh | None = None,
        compiler_options: dict[str, Any] | None = None,
    ):
        self.mesh = mesh or data_mesh()
        self.state_sharding = state_shardings(abstract_state, self.mesh, fsdp, fsdp_min_size)
        self.batch_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        replicated = NamedSharding(self.mesh, P())
        self._step = jax.jit(
            step_fn,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=0,
            compiler_options=compiler_options,
        )

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def put_state(self, state: Any) -> Any:
        return jax.tree.map(
            lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
            state,
            self.state_sharding,
        )

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Per-process batch -> global array sharded over the mesh."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in batch.items()}

    def step(self, state: Any, batch: dict[str, jax.Array]) -> tuple[Any, dict]:
        return self._step(state, batch)

    def compile(self, abstract_state: Any, batch: dict[str, jax.Array]) -> None:
        """Compiles the step for the state's shapes and this batch's ahead of the first call, which then
        finds the executable in jax's caches (state arrays carry `state_sharding`, as `put_state` makes)."""
        self._step.lower(self.restore_target(abstract_state), batch).compile()

    def host_state(self, state: Any) -> Any:
        """The state as orbax should save it: global arrays, saved shard by shard."""
        return state

    def restore_target(self, abstract_state: Any) -> Any:
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, self.state_sharding
        )

    def put_restored(self, restored: Any) -> Any:
        """Restored arrays already carry the state shardings."""
        return restored

    def metrics(self, steps: list[dict]) -> list[dict[str, float]]:
        """Several steps' metrics in one device-to-host transfer (replicated scalars)."""
        return [{k: float(v) for k, v in m.items()} for m in jax.device_get(steps)]


def _first_replica(x: jax.Array) -> np.ndarray:
    """The copy on this process's first device of a pmap output (leading axis = devices)."""
    return np.asarray(x.addressable_data(0)).reshape(x.shape[1:])


class PmapRunner:
    """pmap over the process's local devices: the state replicated per device, the batch split per device."""

    def __init__(self, step_fn: Callable, axis_name: str = PMAP_AXIS):
        self.devices = jax.local_devices()
        self._mesh = Mesh(np.array(self.devices), ("replica",))
        self._sharded = NamedSharding(self._mesh, P("replica"))
        self._step = jax.pmap(step_fn, axis_name=axis_name, donate_argnums=0)

    @property
    def num_devices(self) -> int:
        return jax.device_count()

    def put_state(self, state: Any) -> Any:
        n = len(self.devices)
        return jax.tree.map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), self._sharded), state
        )

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        n = len(self.devices)

        def split(x):
            if x.shape[0] % n:
                raise ValueError(f"per-process batch {x.shape[0]} is not divisible by {n} local devices")
            return jax.device_put(x.reshape(n, x.shape[0] // n, *x.shape[1:]), self._sharded)

        return {k: split(v) for k, v in batch.items()}

    def step(self, state: Any, batch: dict[str, jax.Array]) -> tuple[Any, dict]:
        return self._step(state, batch)

    def compile(self, abstract_state: Any, batch: dict[str, jax.Array]) -> None:
        """Nothing: pmap compiles at its first call."""
        del abstract_state, batch

    def host_state(self, state: Any) -> Any:
        """One replica, fetched to host numpy (replicas are identical)."""
        return jax.tree.map(_first_replica, state)

    def restore_target(self, abstract_state: Any) -> Any:
        return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract_state)

    def put_restored(self, restored: Any) -> Any:
        return self.put_state(restored)

    def metrics(self, steps: list[dict]) -> list[dict[str, float]]:
        """Several steps' metrics in one device-to-host transfer (the first replica's copies)."""
        first = [{k: v.addressable_data(0) for k, v in m.items()} for m in steps]
        return [{k: float(np.reshape(v, ())) for k, v in m.items()} for m in jax.device_get(first)]


def make_runner(
    parallelism: str,
    step_factory: Callable[[str | None], Callable],
    abstract_state: Any,
    fsdp: bool,
    fsdp_min_size: int = 2**14,
    compiler_options: dict[str, Any] | None = None,
):
    """`step_factory(axis_name)` builds the step; pmap gets an axis name, jit gets None.
    `compiler_options` (XLA options for the step's compile) apply under jit; pmap takes none."""
    if parallelism == "pmap":
        if fsdp:
            raise ValueError("fsdp needs parallelism='jit'")
        return PmapRunner(step_factory(PMAP_AXIS))
    if parallelism == "jit":
        return JitRunner(
            step_factory(None),
            abstract_state,
            fsdp=fsdp,
            fsdp_min_size=fsdp_min_size,
            compiler_options=compiler_options,
        )
    raise ValueError(f"parallelism must be one of {PARALLELISMS}, got {parallelism!r}")
