"""Orbax checkpoints of the whole TrainState plus a JSON record of where the run is.

Orbax writes each step into a temporary directory and renames it when complete, so a checkpoint is either whole
or absent, even under SIGKILL. Restoring into the current run's shardings reshards a checkpoint written on
another device count or mesh.
"""
from pathlib import Path

import jax
import orbax.checkpoint as ocp


def manager(directory: Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(mgr: ocp.CheckpointManager, state, meta: dict) -> None:
    """meta: JSON-able run position (epoch, batch in epoch, global batch size, ...); `step` names the checkpoint."""
    step = int(jax.device_get(state.step))
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
             force=True)
    mgr.wait_until_finished()


def restore_latest(mgr: ocp.CheckpointManager, like_state):
    """(state, meta) of the newest checkpoint, laid out like `like_state` (shapes, dtypes, shardings), or None."""
    step = mgr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                         meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta
