"""Many processes, one program: JAX's own multi-controller runtime (`jax.distributed`), nothing home-made.

Every process runs the same `python -m train.run`; after `initialize` jax.devices() lists the devices of all of
them, the mesh spans them all, and each process feeds only its rows of every batch (engine.Session.batch). What
is left here: starting the runtime (flags or the launcher's environment), copying a sharded pytree to the host,
and a barrier.

Resuming on another device count, host count or mesh needs no conversion: `--batch_size` is global, so step k
reads the same rows whatever the layout, and Orbax restores the state into the new run's shardings.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from train.errors import UsageError


def launcher() -> str | None:
    """The multi-process launcher this process was started by, when JAX can read the rest from its environment
    (coordinator, process count and id); None for a plain single-process run.

    Cloud TPU VMs started by GCE rather than GKE publish their workers only through the metadata server: pass
    `--num_processes N` there and JAX fills in the coordinator and the process id.
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    if "," in env.get("TPU_PROCESS_ADDRESSES", env.get("TPU_WORKER_HOSTNAMES", "")):
        return "TPU slice"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join the other processes (explicit flags, else a detected launcher); False when this is the only one.

    Must run before anything touches a device. On CPU, cross-process collectives need gloo: the default in recent
    jax, set here for the versions whose CPU client had none. The option only concerns the CPU client, so it is
    harmless on GPU and TPU.
    """
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not explicit and launcher() is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--coordinator_address/--num_processes/--process_id: {e}") from None
    return True


def host_copy(tree):
    """NumPy copy of a pytree of (possibly sharded) arrays, whole on every process.

    A collective when some leaf is split across processes (FSDP over hosts): every process must call it, also
    those that then throw the copy away (only process 0 writes exported weights).
    """
    def fetch(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(fetch, tree)


def sync(name: str) -> None:
    """A barrier across processes (e.g. after process 0 removed stale checkpoints); free with one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)

