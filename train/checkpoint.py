"""Orbax checkpoints of the whole TrainState plus a JSON record of the run: where it is and what it is.

Orbax writes each step into a temporary directory and renames it when complete, so a checkpoint is either whole
or absent, even under SIGKILL; a save that fails (a full disk) removes what it wrote and leaves the earlier
checkpoints as they were. Retention keeps the newest KEEP checkpoints and, beyond them, always the newest *healthy*
one (no non-finite step since the one before), so a run that diverges can never rotate its last good weights away.
Restoring into the current run's shardings reshards a checkpoint written on another device count or mesh; a
checkpoint that does not restore whole is skipped, with the reason, for the next older one.
"""
import contextlib
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from train.errors import UsageError

KEEP = 3


def manager(directory: Path, keep: int = KEEP) -> ocp.CheckpointManager:
    policy = pp.AnyPreservationPolicy([pp.LatestN(keep),
                                       pp.BestN(get_metric_fn=lambda m: m["healthy_step"], n=1)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                           enable_async_checkpointing=False)
    with _quiet():              # it reads every step's metadata: a damaged one is reported when restoring
        return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _temporaries(directory: Path) -> set[Path]:
    return {p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name} if directory.exists() else set()


def save(mgr: ocp.CheckpointManager, state, meta: dict, healthy: bool) -> None:
    """meta: JSON-able record of the run (position, identity); `step` names the checkpoint. `healthy`: no
    non-finite step since the previous save (such a checkpoint survives any rotation while it is the newest such)."""
    step = int(jax.device_get(state.step))
    directory = Path(mgr.directory)
    before = _temporaries(directory)
    try:
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                 metrics={"healthy_step": float(step if healthy else -1)}, force=True)
        mgr.wait_until_finished()
    except OSError as e:
        for tmp in _temporaries(directory) - before:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(f"could not write the checkpoint of step {step} in {directory} ({e.strerror or e}); the "
                         f"earlier checkpoints are untouched: free space and resume with --from_resume 1") from None


def read_meta(mgr: ocp.CheckpointManager, step: int) -> dict:
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore_newest_whole(mgr: ocp.CheckpointManager, like_state, check_meta=None):
    """(state, meta, skipped) of the newest checkpoint that restores whole, laid out like `like_state` (shapes,
    dtypes, shardings), or None when there is none; `skipped` lists (step, reason) of the newer ones that did not.

    `check_meta(meta)` may raise UsageError to refuse a checkpoint for what it is (another run's): that is not a
    damaged checkpoint, so it stops the search rather than falling back past it.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    skipped = []
    with _quiet():
        return _newest_whole(mgr, abstract, check_meta, skipped)


@contextlib.contextmanager
def _quiet():
    """Orbax logs an ERROR for every damaged file it reads; the caller reports each skipped checkpoint itself."""
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.FATAL)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


def _newest_whole(mgr, abstract, check_meta, skipped):
    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            meta = read_meta(mgr, step)
        except Exception as e:                    # a cut or emptied file: Orbax and its libraries raise anything
            skipped.append((step, _reason(e)))
            continue
        if check_meta is not None:
            check_meta(meta)
        try:
            restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        except Exception as e:
            skipped.append((step, _reason(e)))
            continue
        return restored.state, restored.meta, skipped
    return None if not skipped else (None, None, skipped)


def _reason(e: Exception) -> str:
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"
