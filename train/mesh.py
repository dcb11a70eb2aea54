"""Devices as a `Mesh(data, fsdp)`: the batch is split over both axes, params are replicated over `data` and
(for bigger presets) sharded over `fsdp`. The same program runs on 1 CPU, 8 GPUs or a pod slice."""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # FSDP is data parallel too: every device sees its own rows


def parse_mesh(spec: str | None, num_devices: int) -> dict[str, int]:
    """'data=2,fsdp=4' -> {'data': 2, 'fsdp': 4}; None or '' puts every device on `data`; one size may be -1."""
    sizes = {"data": -1, "fsdp": 1}
    for part in filter(None, (spec or "").split(",")):
        name, _, value = part.partition("=")
        if name.strip() not in sizes or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh {spec!r}: expected e.g. 'data=2,fsdp=4' with axes {AXES}")
        sizes[name.strip()] = int(value)
    known = math.prod(v for v in sizes.values() if v != -1)
    for name, v in sizes.items():
        if v == -1:
            sizes[name] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"--mesh {spec!r}: {sizes} uses {math.prod(sizes.values())} devices but {num_devices} are visible")
    return sizes


def make_mesh(spec: str | None = None, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    sizes = parse_mesh(spec, len(devices))
    return Mesh(np.asarray(devices).reshape(sizes["data"], sizes["fsdp"]), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 1) -> NamedSharding:
    """Rows split over every device; leaves are [A, B, ...] (micro-batch axis first) unless batch_axis=0."""
    return NamedSharding(mesh, P(*([None] * batch_axis), BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest dimension that `fsdp` divides; small or indivisible leaves stay replicated."""
    if fsdp == 1 or math.prod(shape) < 2**14:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            return P(*([None] * dim), "fsdp")
    return P()


def state_sharding(tree, mesh: Mesh):
    """Shardings for params / optimizer state: replicated over `data`, split over `fsdp`."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), fsdp)), tree)


def to_global(local_batch: dict, mesh: Mesh, batch_axis: int = 1) -> dict:
    """This process's rows -> global jax.Arrays sharded over the mesh (the same call on 1 or many hosts)."""
    sharding = batch_sharding(mesh, batch_axis)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
