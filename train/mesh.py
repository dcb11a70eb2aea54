"""Devices as a `Mesh(data, fsdp[, expert])`: the batch is split over every axis, params are replicated over `data`,
split over `fsdp` (bigger presets), and MoE experts may live on their own `expert` axis. The same program runs on
1 CPU, 8 GPUs or a pod slice; GSPMD inserts the collectives (all-gather before a sharded weight is used,
reduce-scatter of its gradient, all-reduce of the replicated ones).
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "expert")
MIN_SHARDED = 2**14      # leaves smaller than this stay replicated: a collective per tiny bias costs more than it saves


def parse_mesh(spec: str | None, num_devices: int) -> dict[str, int]:
    """'data=2,fsdp=4' -> {'data': 2, 'fsdp': 4}; None or '' puts every device on `data`; one size may be -1 (the
    devices the others leave), and `data` takes them when no axis is -1 and it is not named ('fsdp=4' on 8 devices
    is data=2,fsdp=4).

    The `expert` axis exists only when named ('data=2,expert=4'), so a dense run's mesh is always (data, fsdp).
    """
    named = {}
    for part in filter(None, (spec or "").split(",")):
        name, _, value = (s.strip() for s in part.partition("="))
        if name not in AXES or not value.lstrip("-").isdigit():
            raise ValueError(f"--mesh {spec!r}: expected e.g. 'data=2,fsdp=4' with axes {AXES}")
        named[name] = int(value)
    if list(named.values()).count(-1) > 1:
        raise ValueError(f"--mesh {spec!r}: only one axis may be -1")
    sizes = {"data": 1 if -1 in named.values() else -1, "fsdp": 1, **named}
    known = math.prod(v for v in sizes.values() if v != -1)
    sizes = {name: num_devices // known if v == -1 else v for name, v in sizes.items()}
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"--mesh {spec!r}: {sizes} uses {math.prod(sizes.values())} devices but {num_devices} are visible")
    return sizes


def make_mesh(spec: str | None = None, devices=None) -> Mesh:
    """Devices in jax.devices() order (on GPU hosts that groups each process's devices, so a process's rows are one
    contiguous block of the global batch; `process_rows` does not rely on it)."""
    devices = jax.devices() if devices is None else devices
    sizes = parse_mesh(spec, len(devices))
    return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), tuple(sizes))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 1) -> NamedSharding:
    """Rows split over every device (every axis is data parallel for activations); leaves are [A, B, ...]
    (micro-batch axis first) unless batch_axis=0."""
    return NamedSharding(mesh, P(*([None] * batch_axis), mesh.axis_names))


def fsdp_spec(shape: tuple[int, ...], fsdp: int, taken: tuple = ()) -> P:
    """Shard the largest dimension that `fsdp` divides (skipping dims already `taken` by another axis); small or
    indivisible leaves stay replicated."""
    spec = [None] * len(shape)
    for dim, axis in taken:
        spec[dim] = axis
    if fsdp > 1 and math.prod(shape) >= MIN_SHARDED:
        free = [d for d in range(len(shape)) if spec[d] is None]
        for dim in sorted(free, key=lambda d: -shape[d]):
            if shape[dim] % fsdp == 0:
                spec[dim] = "fsdp"
                break
    while spec and spec[-1] is None:        # P('fsdp') rather than P('fsdp', None): one spelling per layout
        spec.pop()
    return P(*spec)


def is_expert_leaf(path) -> bool:
    """Stacked routed-expert weights [E, ...] live under a module named `experts` (in params and in the optimizer
    state, whose moments mirror the params' paths)."""
    return any(getattr(k, "key", None) == "experts" for k in path)


def is_table_leaf(path) -> bool:
    """Per-prompt state over the data set (SPO-paper's tracker table, [N, ...]) lives under a key named `table`."""
    return any(getattr(k, "key", None) == "table" for k in path)


def param_spec(path, shape: tuple[int, ...], mesh: Mesh) -> P:
    """A param's (or optimizer moment's) layout: experts over `expert` on their leading dim, then `fsdp`.
    Per-prompt tables are split by prompt over every device, like the data (whole when N does not divide)."""
    if is_table_leaf(path):
        return P(mesh.axis_names) if shape and shape[0] % mesh.devices.size == 0 else P()
    expert = mesh.shape.get("expert", 1)
    taken = ((0, "expert"),) if expert > 1 and is_expert_leaf(path) and shape and shape[0] % expert == 0 else ()
    return fsdp_spec(shape, mesh.shape["fsdp"], taken)


def state_sharding(tree, mesh: Mesh):
    """Shardings for params / optimizer state / frozen copies: replicated over `data`, split over `fsdp` (and
    `expert`). Leaves are matched by path, so Adam's mu and nu get their param's layout."""
    return jax.tree_util.tree_map_with_path(lambda path, x: NamedSharding(mesh, param_spec(path, np.shape(x), mesh)),
                                            tree)


def process_rows(mesh: Mesh, batch: int) -> np.ndarray:
    """int [batch / processes]: which rows of a global batch this process feeds, i.e. those its devices hold under
    `batch_sharding`, ordered by position (the order make_array_from_process_local_data reads its local data in).
    Derived from the sharding rather than assumed to be block `process_index`, which holds only when the mesh
    lists each process's devices together."""
    index = NamedSharding(mesh, P(mesh.axis_names)).addressable_devices_indices_map((batch,))
    blocks = sorted({s.indices(batch)[:2] for (s,) in index.values()})          # {(start, stop)} of local shards
    return np.concatenate([np.arange(start, stop) for start, stop in blocks])


def to_global(local_batch: dict, mesh: Mesh, batch_axis: int = 1) -> dict:
    """This process's rows (`process_rows`) -> global jax.Arrays sharded over the mesh (the same call on 1 or many
    hosts). Leaves that are already global jax.Arrays (an RL batch computed on the mesh) are resharded to the batch
    layout instead."""
    sharding = batch_sharding(mesh, batch_axis)
    put = lambda v: (reshard(v, sharding) if isinstance(v, jax.Array)
                     else jax.make_array_from_process_local_data(sharding, np.asarray(v)))
    return {k: put(v) for k, v in local_batch.items()}


def reshard(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    """x laid out as `sharding` (a jitted identity: it moves rows between processes when it must)."""
    return x if x.sharding.is_equivalent_to(sharding, x.ndim) else jax.jit(lambda y: y, out_shardings=sharding)(x)


def to_local(x: jax.Array, mesh: Mesh, batch_axis: int = 1) -> np.ndarray:
    """The inverse of `to_global`: this process's rows of a global array, in `process_rows` order (all of them on
    one process)."""
    x = reshard(x, batch_sharding(mesh, batch_axis))
    shards = {s.index[batch_axis].indices(x.shape[batch_axis])[0]: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)], axis=batch_axis)

