"""The one training loop every stage runs: data order, jitted step, logging, checkpoints, export, resume.

Step k of a run always sees the same rows, RNG and learning rate whether or not the run was stopped before it:
the order of an epoch is a pure function of (seed, epoch), the position is derived from the step, and the RNG
and the stage's state live in the checkpointed TrainState.
"""
import dataclasses
import json
import math
import shutil
import sys
import time
from typing import Callable

import jax
import numpy as np
from tqdm import tqdm

from minimind_jax import MiniMindForCausalLM, get_policy
from minimind_jax.data import SAMPLE_DIR, epoch_permutation, num_batches
from minimind_jax.paths import weight_dir
from minimind_jax.tokenizer import Tokenizer
from train import checkpoint, optim, rng
from train.batches import split_batch, step_rows
from train.config import TrainConfig
from train.distributed import host_copy, sync
from train.errors import UsageError
from train.mesh import make_mesh, process_rows, replicated, state_sharding, to_global
from train.metrics import MetricsLog, summary
from train.rollout import make_scorer
from train.stage import Run, Stage
from train.state import LossScale, TrainState
from train.step import make_train_step
from train.weights import write_export


def resolve_dtype(name: str) -> str:
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


def build_run(stage: Stage, config: TrainConfig) -> Run:
    cfg, d = config.model, config.data
    try:
        tokenizer = Tokenizer.load(d.tokenizer)
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(f"--tokenizer {d.tokenizer}: {e}") from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UsageError(f"tokenizer {d.tokenizer or 'data/sample/tokenizer'} has {tokenizer.vocab_size} ids but the "
                         f"model's vocab_size is {cfg.vocab_size}: use a matching tokenizer or preset")
    model = MiniMindForCausalLM(cfg, policy=get_policy(resolve_dtype(config.optim.dtype)))
    try:
        mesh = make_mesh(config.mesh.spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    data_path = d.path or SAMPLE_DIR / stage.data_file
    score = make_scorer(config, tokenizer) if stage.rollouts else None
    return Run(config=config, model=model, tokenizer=tokenizer, mesh=mesh,
               run_dir=weight_dir(config.checkpoint.out_dir, config.checkpoint.save_weight, cfg),
               data_path=data_path, score=score)


def _check_mesh(stage: Stage, config: TrainConfig, mesh):
    devices = mesh.devices.size
    if config.optim.batch_size % devices:
        raise UsageError(f"--batch_size {config.optim.batch_size} must divide by the {devices} devices of the mesh")
    if jax.process_count() > 1 and stage.single_process:
        raise UsageError(f"--stage {config.stage} runs on one process for now: {stage.single_process}")
    # A stage's rollouts run on each process's own rows with its local params: right when params are whole on every
    # process (data parallel), not yet when fsdp/expert split them across hosts.
    if jax.process_count() > 1 and stage.rollouts:
        if math.prod(n for axis, n in mesh.shape.items() if axis != "data") > 1:
            raise UsageError(f"--stage {config.stage} on {jax.process_count()} processes needs whole params on every "
                             f"process: use --mesh data=N (got {dict(mesh.shape)})")


def _write_export(run: Run, stage: Stage, state: TrainState, frozen) -> None:
    """The exported weights, written by process 0 (every process takes part in gathering them)."""
    params = host_copy(state.params)      # on every process: a collective when FSDP splits params across hosts
    if jax.process_index() == 0:
        write_export(run.run_dir, stage.export(run, params, frozen), run.config.model)


@dataclasses.dataclass
class Session:
    """A stage ready to run: its data, its state (fresh or restored) and its compiled step."""
    stage: Stage
    run: Run
    dataset: object
    state: TrainState
    frozen: object
    step_fn: object               # jitted (state, batch, frozen) -> (state, metrics), state donated
    schedule: object              # optimizer step -> learning rate
    steps_per_epoch: int
    total_steps: int
    stop: int                     # the step this invocation ends at (--max_steps or the end of --epochs)


def make_batch(s: Session, state: TrainState, step: int) -> tuple[dict, dict, dict | None]:
    """(device batch, host info, stage state or None) of optimizer step `step`, a function of (seed, epoch, step)
    and, for RL, of the state sampled from."""
    o, seed = s.run.config.optim, s.run.config.seed
    epoch, in_epoch = divmod(step, s.steps_per_epoch)
    perm = epoch_permutation(seed, epoch, len(s.dataset))
    rows = step_rows(perm, in_epoch, o.accumulation_steps, o.batch_size)                # [A, B]: the whole step
    rows = rows[:, process_rows(s.run.mesh, o.batch_size)]                               # [A, B / processes]: ours
    arrays, host = split_batch(s.dataset.batch(rows.reshape(-1), epoch=epoch), rows.shape)
    info, extra = {}, None
    if s.stage.prepare is not None:
        arrays, info, extra = s.stage.prepare(s.run, state, s.frozen, arrays, host, step)
    return to_global(arrays, s.run.mesh), info, extra


def setup(stage: Stage, config: TrainConfig) -> Session:
    """Build the run, read the data, create (or restore with --from_resume 1) the state, and jit the step."""
    run = build_run(stage, config)
    mesh, o, d = run.mesh, config.optim, config.data
    _check_mesh(stage, config, mesh)
    if not run.data_path.exists():
        raise UsageError(f"--data_path {run.data_path}: no such file")
    dataset = stage.dataset(run.data_path, run.tokenizer, d.max_seq_len, skip_bad_lines=d.skip_bad_lines,
                            cache_dir=d.cache_dir)
    steps_per_epoch = num_batches(len(dataset), o.global_batch)
    total_steps = o.epochs * steps_per_epoch
    stop = min(total_steps, o.max_steps) if o.max_steps else total_steps

    params, frozen = stage.init(run)
    schedule = stage.schedule(run, total_steps)
    tx = stage.optimizer(run, total_steps) if stage.optimizer else optim.adamw(schedule, o.grad_clip)
    extra = stage.init_extra(run, params, frozen, dataset)
    if resolve_dtype(o.dtype) == "float16":
        extra = {**extra, "loss_scale": LossScale.create()}
    state = TrainState.create(params, tx, rng.stream(config.seed, "train"), extra)
    state_shardings = state_sharding(state, mesh)
    state = jax.device_put(state, state_shardings)
    frozen = jax.device_put(frozen, state_sharding(frozen, mesh))
    if config.checkpoint.from_resume:
        state = _restore(run, state, o.global_batch)
    else:
        _clear_checkpoints(run)
    update_extra = stage.update_extra(run) if stage.update_extra else None
    step_fn = jax.jit(make_train_step(stage.make_loss(run), tx, update_extra), donate_argnums=0,
                      out_shardings=(state_shardings, replicated(mesh)))
    return Session(stage, run, dataset, state, frozen, step_fn, schedule, steps_per_epoch, total_steps, stop)


def _clear_checkpoints(run: Run) -> None:
    """A fresh run replaces an earlier run's checkpoints (as the reference overwrites its resume file), so that a
    later --from_resume 1 can never continue a mixture of two runs."""
    ckpt = run.run_dir / "checkpoints"
    if jax.process_index() == 0 and ckpt.exists() and any(ckpt.iterdir()):
        print(f"starting afresh (--from_resume 0): removing the earlier run's checkpoints in {ckpt}")
        shutil.rmtree(ckpt)
    sync("checkpoints cleared")      # no process may open the checkpoint directory before it is cleared


def _restore(run: Run, state: TrainState, global_batch: int) -> TrainState:
    restored = checkpoint.restore_latest(checkpoint.manager(run.run_dir / "checkpoints"), state)
    if restored is None:
        print(f"--from_resume 1: no checkpoint in {run.run_dir / 'checkpoints'}; starting from step 0")
        return state
    state, meta = restored
    if meta.get("global_batch") != global_batch:
        raise UsageError(f"--from_resume: the checkpoint was written with a global batch of {meta.get('global_batch')} "
                         f"rows per step, this run uses {global_batch} (batch_size x accumulation_steps must match "
                         f"to continue the data order)")
    return state


def _config_record(config: TrainConfig) -> dict:
    """The configuration as flat JSON-able scalars ('optim.learning_rate': 5e-4), for trackers such as wandb."""
    flat = {}
    for section, value in dataclasses.asdict(config).items():
        for k, v in (value.items() if isinstance(value, dict) else [("", value)]):
            if isinstance(v, (int, float, str, bool)):
                flat[f"{section}.{k}" if k else section] = v
    return flat


# A hook into the loop, for experiments that drive the real engine: called once before the first step (with the
# starting step and an empty record) and after every step with the session (its state already updated), the step
# count and the step's record (metrics, rollout info); returning True ends the run there, checkpoint and export
# included.
StepCallback = Callable[[Session, int, dict], bool | None]


def train(stage: Stage, config: TrainConfig, callback: StepCallback | None = None) -> Session:
    """Run one stage to the end (or to --max_steps, or until `callback` says stop); session.run.run_dir then holds
    its outputs."""
    s = setup(stage, config)
    run, o, ck = s.run, config.optim, config.checkpoint
    start = int(jax.device_get(s.state.step))
    mgr = checkpoint.manager(run.run_dir / "checkpoints")
    log = MetricsLog(run.run_dir / "metrics.jsonl", resume_step=start, enabled=jax.process_index() == 0,
                     tracker="wandb" if ck.use_wandb else None, run_name=run.run_dir.name,
                     config=_config_record(config))
    bar = tqdm(total=s.stop, initial=start, desc=stage.name, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not sys.stderr.isatty())   # logs get the summary lines only
    tokens_per_step = o.global_batch * (config.data.max_seq_len - 1)
    step, t_last, s_last = start, time.perf_counter(), start
    if callback is not None:
        callback(s, start, {})
    while step < s.stop:
        batch, info, extra = make_batch(s, s.state, step)
        if extra is not None:
            s.state = s.state.replace(extra=extra)
        t_update = time.perf_counter()
        s.state, metrics = s.step_fn(s.state, batch, s.frozen)
        if stage.rollouts:        # the next rollout waits for these params anyway, so timing the update costs nothing
            jax.block_until_ready(metrics)
            info = {**info, "update_s": time.perf_counter() - t_update}
        step += 1
        bar.update(1)
        logged = step % ck.log_interval == 0 or step == s.stop
        if logged or callback is not None:
            record = {"step": step, "epoch": (step - 1) // s.steps_per_epoch,
                      **{k: float(v) for k, v in jax.device_get(metrics).items()}, **info,
                      "lr": float(s.schedule(step - 1))}
        if logged:
            now = time.perf_counter()
            record.update(tokens_per_s=tokens_per_step * (step - s_last) / (now - t_last), time=time.time())
            t_last, s_last = now, step
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
            tqdm.write(summary(record))
        stopped = callback is not None and bool(callback(s, step, record))
        if step % ck.save_interval == 0 or step == s.stop or stopped:
            epoch, in_epoch = divmod(step, s.steps_per_epoch)
            checkpoint.save(mgr, s.state, {"stage": stage.name, "global_batch": o.global_batch,
                                           "steps_per_epoch": s.steps_per_epoch, "epoch": epoch,
                                           "batch_in_epoch": in_epoch, "num_processes": jax.process_count(),
                                           "config": config.model.to_dict()})
            _write_export(run, stage, s.state, s.frozen)
        if stopped:
            break
    bar.close()
    if start >= s.stop:
        print(f"{stage.name}: already at step {start} of {s.stop}; nothing to do")
        _write_export(run, stage, s.state, s.frozen)
    if stage.evaluate is not None and jax.process_index() == 0:
        report = stage.evaluate(run, s.state, s.frozen)
        (run.run_dir / "eval.json").write_text(json.dumps(report, indent=1))
        print(f"{stage.name} evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in report.items()))
    return s
