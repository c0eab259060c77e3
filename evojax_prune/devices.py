"""Where the population trains: the devices, the mesh over them, padding, several hosts.

The population axis is embarrassingly parallel: a head's result is a function
of its mask alone (``trainer.py``), so P heads split over n devices train as
they would on one. The trainer and the scoring run their existing per-device
program under ``jax.shard_map`` on a one-dimensional mesh whose axis is
``POPULATION_AXIS``: masks and head parameters are split on their leading P
axis, the features, labels, initial weights and epoch orders are replicated.
P is padded up to a multiple of n and the padding is sliced off every output
before anything sees it.

Several hosts are JAX's multi-controller model (``jax.distributed``): every
process runs the same program and the mesh spans every process's devices, so
each host trains the heads on its own devices, and the few numbers the search
needs on the host (the objectives) are gathered to all of them. Nothing here is
a communication layer of our own.

Device specs (``TrainConfig.devices``, ``--devices``):
  * ``None``: every device JAX sees (on several hosts: all of them);
  * an int n: the first n devices of each process;
  * a sequence of ints, or a string such as ``"0,2"``: those positions in each
    process's list of local devices (``jax.local_devices()``; on one host the
    device ids). On several hosts the same positions are taken on every host.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evojax_prune.config import canonical_devices

POPULATION_AXIS = "population"

# Environment variables read by ``initialize_distributed`` when its arguments are None.
COORDINATOR_ENV = "EVOJAX_PRUNE_COORDINATOR"
NUM_PROCESSES_ENV = "EVOJAX_PRUNE_NUM_PROCESSES"
PROCESS_ID_ENV = "EVOJAX_PRUNE_PROCESS_ID"

DeviceSpec = int | str | Sequence[int] | None

def select_devices(spec: DeviceSpec = None) -> list[jax.Device]:
    """The devices a spec names (module docstring), in mesh order.

    On several processes the same local positions are taken on every process,
    so that every process owns part of the mesh (a process without a device in
    it could not take part in the computation).

    Raises:
      ValueError: the spec asks for more devices, or other positions, than
        exist; the message names what was asked and what there is.
    """
    spec = canonical_devices(spec)
    devices = jax.devices()
    if spec is None:
        return devices
    by_process: dict[int, list[jax.Device]] = {}
    for device in devices:
        by_process.setdefault(device.process_index, []).append(device)
    local_count = min(len(local) for local in by_process.values())
    positions = tuple(range(spec)) if isinstance(spec, int) else spec
    if max(positions) >= local_count:
        asked = f"{spec} devices" if isinstance(spec, int) else f"device positions {list(spec)}"
        where = " per process" if len(by_process) > 1 else ""
        local = ", ".join(str(device) for device in by_process[jax.process_index()])
        raise ValueError(
            f"devices: asked for {asked}, but JAX sees {local_count} {jax.devices()[0].platform} "
            f"device(s){where}: {local}"
        )
    return [by_process[process][p] for process in sorted(by_process) for p in positions]


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-dimensional mesh over ``devices`` (default: all), its axis ``POPULATION_AXIS``."""
    return Mesh(np.asarray(list(devices) if devices is not None else jax.devices()), (POPULATION_AXIS,))


def mesh_for(spec: DeviceSpec = None) -> Mesh:
    """``population_mesh(select_devices(spec))``, cached: a jit cache key, built once per spec."""
    return _mesh_for(canonical_devices(spec), jax.device_count())


_MESHES: dict[Any, Mesh] = {}


def _mesh_for(spec, device_count: int) -> Mesh:
    # Keyed on the device count too: ``jax.distributed.initialize`` adds devices.
    key = (spec, device_count)
    if key not in _MESHES:
        _MESHES[key] = population_mesh(select_devices(spec))
    return _MESHES[key]


def padded_size(size: int, multiple: int) -> int:
    """``size`` rounded up to a multiple of ``multiple``."""
    return -(-size // multiple) * multiple


def pad_population(array: Any, multiple: int) -> tuple[Any, int]:
    """Pads the leading (population) axis to a multiple of ``multiple`` by repeating the last row.

    Repeating a real row, rather than zeros, keeps every padded head an
    ordinary one (no all-zero input or degenerate score); callers slice the
    padding off. Works on numpy arrays, jax arrays and pytrees of them (every
    leaf shares the leading size).

    Returns:
      (padded, original_size): padded has ``padded_size(P, multiple)`` rows.
    """
    leaves = jax.tree.leaves(array)
    size = leaves[0].shape[0]
    extra = padded_size(size, multiple) - size
    if extra == 0:
        return array, size

    def pad(leaf):
        xp = np if isinstance(leaf, np.ndarray) else jax.numpy
        return xp.concatenate([leaf, xp.repeat(leaf[-1:], extra, axis=0)])

    return jax.tree.map(pad, array), size


def sharded(mesh: Mesh) -> NamedSharding:
    """Split on the leading (population) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(POPULATION_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def put(tree: Any, sharding: NamedSharding) -> Any:
    """Places every leaf with ``sharding``; a leaf already placed so is returned as is (no copy).

    Host (numpy) data must be the same on every process: each process places
    the part its own devices hold. On the one-device default (a mesh of the
    default device alone) the tree is returned untouched: ``jit`` places host
    data on its own fast path, as it did before there were meshes.
    """
    if _default_device_alone(sharding):
        return tree

    def place(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            return leaf
        return jax.device_put(leaf, sharding)

    return jax.tree.map(place, tree)


@functools.lru_cache(maxsize=64)
def _default_device_alone(sharding: NamedSharding) -> bool:
    return sharding.mesh.size == 1 and sharding.mesh.devices.flat[0] == jax.devices()[0]


def to_host(tree: Any) -> Any:
    """Every leaf as a numpy array on this host, whole, also when it spans several processes."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(leaf, jax.Array) or leaf.is_fully_addressable or leaf.is_fully_replicated
           for leaf in leaves):
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def is_main_process() -> bool:
    """Process 0 writes the run directory; the others compute and write nothing."""
    return jax.process_index() == 0


def assert_same_on_every_process(tree: Any, what: str) -> None:
    """Checks that every process holds the same host values, bit for bit (a no-op on one process).

    Compares a SHA-256 fingerprint of the leaves' bytes, dtypes and shapes:
    gathering the values themselves would pass them through JAX, which turns
    float64 into float32 and so would find differences that are not there.

    Raises:
      RuntimeError: the processes disagree (they should never: each runs the
        same search on the same gathered objectives).
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        leaf = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    fingerprint = np.frombuffer(digest.digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(fingerprint))  # (processes, 32)
    differing = [process for process, other in enumerate(every) if not np.array_equal(other, fingerprint)]
    if differing:
        raise RuntimeError(
            f"{what} differ between processes: process {jax.process_index()} disagrees with "
            f"process(es) {differing}"
        )


def _cluster_has_several_processes() -> bool:
    """A launcher that JAX's own detection reads says there are several processes.

    SLURM (``srun``), Open MPI (``mpirun``) and multi-host TPU slices. A single
    task under SLURM is left alone: one process needs no coordinator.
    """
    env = os.environ
    counts = (env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS"), env.get("OMPI_COMM_WORLD_SIZE"))
    if any(count and count.isdigit() and int(count) > 1 for count in counts):
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def check_coordinator_address(address: str, name: str = "coordinator_address") -> str:
    """``address`` if it is ``HOST:PORT`` (a port in 1 .. 65535), else a ValueError naming ``name``."""
    host, colon, port = str(address).rpartition(":")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{name} {address!r}: expected HOST:PORT, process 0's host and a port in "
                         "1 .. 65535 (e.g. 10.0.0.1:1234)")
    return address


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    detect: bool = False,
) -> bool:
    """Starts JAX's multi-process runtime when several processes are configured.

    Arguments left None are read from ``EVOJAX_PRUNE_COORDINATOR``
    (``HOST:PORT`` of process 0), ``EVOJAX_PRUNE_NUM_PROCESSES`` and
    ``EVOJAX_PRUNE_PROCESS_ID``. With none of them set, and a SLURM or Open MPI
    launch of several tasks seen (or ``detect``, e.g. on a TPU pod slice),
    ``jax.distributed.initialize()`` reads the launcher's environment itself
    (one process per GPU under SLURM and Open MPI). Otherwise nothing happens
    (one process). Must run before any other JAX call. On CPU the
    cross-process collectives are Gloo's.

    Returns:
      True when the distributed runtime was started here.
    """
    def from_env(value, name, kind):
        if value is not None or name not in os.environ:
            return value
        try:
            return kind(os.environ[name])
        except ValueError:
            raise ValueError(f"{name} must be {kind.__name__}, got {os.environ[name]!r}") from None

    explicit_address = coordinator_address is not None
    coordinator_address = from_env(coordinator_address, COORDINATOR_ENV, str)
    num_processes = from_env(num_processes, NUM_PROCESSES_ENV, int)
    process_id = from_env(process_id, PROCESS_ID_ENV, int)
    explicit = (coordinator_address, num_processes, process_id)
    if all(value is None for value in explicit) and not (detect or _cluster_has_several_processes()):
        return False
    if any(value is not None for value in explicit):
        if None in explicit:
            raise ValueError(
                "several processes need all three of --coordinator-address, --num-processes and "
                f"--process-id (or {COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, {PROCESS_ID_ENV}); got "
                f"coordinator {coordinator_address!r}, {num_processes!r} processes, process id {process_id!r}"
            )
        check_coordinator_address(coordinator_address, "coordinator_address" if explicit_address
                                  else COORDINATOR_ENV)
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"process id must lie in [0, {num_processes}) and there must be at least one process, "
                f"got process id {process_id} of {num_processes}"
            )
    # CPU devices of different processes talk through Gloo (harmless on accelerators).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True
