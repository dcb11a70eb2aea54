"""Many processes, one program: JAX's own multi-controller runtime (`jax.distributed`), nothing home-made.

Every process runs the same `python -m train.run`; after `initialize` jax.devices() lists the devices of all of
them, the mesh spans them all, and each process feeds only its rows of every batch (engine.Session.batch). What
is left here: starting the runtime (flags or the launcher's environment), copying a sharded pytree to the host,
and a barrier.

Resuming on another device count, host count or mesh needs no conversion: `--batch_size` is global, so step k
reads the same rows whatever the layout, and Orbax restores the state into the new run's shardings.
"""
import os
import sys
import threading

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
               process_id: int | None = None, timeout: int = 300, bind_address: str | None = None) -> bool:
    """Join the other processes (explicit flags, else a detected launcher); False when this is the only one.

    Must run before anything touches a device. Process 0's coordinator listens on the address given
    (`--coordinator_address host:port`), not on every interface: `--coordinator_bind_address 0.0.0.0:port` binds
    wider where the hosts reach process 0 through another interface. A process that does not hear from all the
    others within `timeout` seconds fails with one line naming the coordinator.

    On CPU, cross-process collectives need gloo: the default in recent jax, set here for the versions whose CPU
    client had none. The option only concerns the CPU client, so it is harmless on GPU and TPU.
    """
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not explicit and launcher() is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    bind = bind_address or coordinator_address
    message = (f"error: --coordinator_address {coordinator_address}: the {num_processes or '?'} processes did not "
               f"all join within {timeout} s; start every process with the same --coordinator_address and "
               f"--num_processes (process 0 first reachable there), or raise --distributed_timeout")
    # The runtime aborts the whole process (a C++ fatal error, no Python exception) when its own timeout expires,
    # so a watchdog with a shorter fuse says what happened in one line first.
    watchdog = threading.Timer(timeout, lambda: (print(message, file=sys.stderr, flush=True), os._exit(2)))
    watchdog.daemon = True
    watchdog.start()
    try:
        # A peer silent for `timeout` seconds is gone (not the runtime's 100 s: a long compile on a loaded host can
        # hold a process's heartbeats back that long).
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=timeout + 30, coordinator_bind_address=bind,
                                   heartbeat_timeout_seconds=max(timeout, 100))
    except (ValueError, TypeError) as e:
        raise UsageError(f"--coordinator_address/--num_processes/--process_id: {e}") from None
    except Exception as e:          # the runtime's own error type: a refused connection, a bad address
        first = next((l.strip() for l in str(e).splitlines() if l.strip()), type(e).__name__)
        raise UsageError(f"{message.removeprefix('error: ')} ({first[:200]})") from None
    finally:
        watchdog.cancel()
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



def over_processes(info: dict) -> dict:
    """Per-process step metrics -> the whole step's, on every process: counts (ints) summed, seconds the slowest
    process's, other numbers averaged (every process holds as many rows, so a mean of means is the mean); text
    (a sample completion) stays this process's. A collective: every process calls it with the same keys."""
    if jax.process_count() == 1:
        return info
    keys = [k for k, v in info.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
    values = np.asarray(multihost_utils.process_allgather(np.array([info[k] for k in keys], np.float32)))  # [P, K]
    reduced = {}
    for k, column in zip(keys, values.T):
        if isinstance(info[k], (int, np.integer)):
            reduced[k] = int(round(float(column.sum())))
        else:
            reduced[k] = float(column.max() if k.endswith("_s") else column.mean())
    return {**info, **reduced}
