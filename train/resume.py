"""Resuming, and not destroying: a run's identity (what a checkpoint must share with the run that resumes it), the
refusal to start afresh over an earlier run's checkpoints, and the restore that falls back past damaged ones.
"""
import dataclasses
import shutil
import sys
import time

import jax

from train import checkpoint
from train.config import RESUME_ACCEPTABLE, TrainConfig
from train.distributed import sync
from train.errors import UsageError
from train.stage import Run, Stage
from train.state import TrainState


def resolve_dtype(name: str) -> str:
    """`--dtype auto`: bfloat16 on accelerators, float32 on CPU."""
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


def run_identity(stage: Stage, config: TrainConfig, run: Run, dataset) -> dict:
    """What a checkpoint must share with a run to be resumed by it (see config.RESUME_ACCEPTABLE)."""
    o = config.optim
    return {"stage": stage.name, "model": config.model.to_dict(), "tokenizer": run.tokenizer.fingerprint[:16],
            "data": dataset.fingerprint, "seed": config.seed, "batch_size": o.batch_size,
            "accumulation_steps": o.accumulation_steps, "learning_rate": o.learning_rate, "epochs": o.epochs,
            "grad_clip": o.grad_clip, "dtype": resolve_dtype(o.dtype),
            "objective": dataclasses.asdict(config.objective)}


def has_checkpoints(run: Run) -> bool:
    ckpt = run.run_dir / "checkpoints"
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def check_fresh_start(run: Run) -> None:
    """A fresh run must not silently replace an earlier run's checkpoints."""
    ck = run.config.checkpoint
    if not ck.from_resume and not ck.overwrite and has_checkpoints(run):
        raise UsageError(f"{run.run_dir / 'checkpoints'} holds an earlier run's checkpoints: continue it with "
                         f"--from_resume 1, replace it with --overwrite, or pick another --out_dir/--save_weight")


def clear_checkpoints(run: Run) -> None:
    """--overwrite: the earlier run's checkpoints go (so a later --from_resume 1 can never continue a mixture of two
    runs)."""
    ckpt = run.run_dir / "checkpoints"
    if jax.process_index() == 0 and ckpt.exists() and any(ckpt.iterdir()):
        print(f"--overwrite: removing the earlier run's checkpoints in {ckpt}")
        shutil.rmtree(ckpt)
    sync("checkpoints cleared")      # no process may open the checkpoint directory before it is cleared


def identity_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """{field: (checkpoint's, this run's)} of every identity field that differs."""
    return {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}


def _describe(field: str, values: tuple) -> str:
    old, new = values
    if isinstance(old, dict) and isinstance(new, dict):
        parts = [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return f"{field} ({', '.join(parts[:4])}{', ...' if len(parts) > 4 else ''})"
    return f"{field} {old} -> {new}"


def restore(run: Run, state: TrainState, identity: dict) -> tuple[TrainState, dict]:
    """The newest whole checkpoint of this same run (and the identity changes the user accepted)."""
    ckpt, accept = run.run_dir / "checkpoints", set(run.config.checkpoint.resume_accept)
    accepted = {}

    def check(meta: dict) -> None:
        saved = meta.get("identity")
        if saved is None:
            raise UsageError(f"--from_resume: {ckpt} was written by an older version of this trainer (no run "
                             f"identity); start afresh with --overwrite")
        changes = identity_changes(saved, identity)
        refused = {k: v for k, v in changes.items() if k not in accept}
        if refused:
            what = "; ".join(_describe(k, v) for k, v in refused.items())
            if set(refused) <= set(RESUME_ACCEPTABLE):
                raise UsageError(f"--from_resume: this run differs from the checkpoint's in {what}: accept with "
                                 f"--resume_accept {','.join(refused)}")
            raise UsageError(f"--from_resume: this run differs from the checkpoint's in {what}: that is another run "
                             f"(use another --out_dir or --save_weight, or --overwrite to replace this one)")
        accepted.update(changes)

    result = checkpoint.restore_newest_whole(checkpoint.manager(ckpt), state, check)
    if result is None:
        print(f"--from_resume 1: no checkpoint in {ckpt}; starting from step 0")
        return state, {}
    restored, meta, skipped = result
    if restored is None:
        raise UsageError(f"--from_resume: no checkpoint in {ckpt} restores whole (newest: {skipped[0][0]}, "
                         f"{skipped[0][1]}); start afresh with --overwrite")
    aside = run.run_dir / "checkpoints.damaged"
    for step, reason in skipped:
        # Out of the way of the steps this run will save again, but kept: a damaged file is evidence.
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            shutil.move(str(ckpt / str(step)), str(aside / f"{step}.{int(time.time())}"))
        print(f"--from_resume: skipped checkpoint {step} (does not restore whole: {reason}); moved to {aside}",
              file=sys.stderr)
    sync("damaged checkpoints moved")
    step = int(jax.device_get(restored.step))
    print(f"resumed from step {step} ({ckpt / str(step)})"
          + (f"; accepted changes: {'; '.join(_describe(k, v) for k, v in accepted.items())}" if accepted else ""))
    return restored, accepted
