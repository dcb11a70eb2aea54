"""The one training loop every stage runs: data order, jitted step, logging, checkpoints, export, resume.

Step k of a run always sees the same rows, RNG and learning rate whether or not the run was stopped before it:
the order of an epoch is a pure function of (seed, epoch), the position is derived from the step, and the RNG
and the stage's state live in the checkpointed TrainState.

Nothing is lost: the run directory is locked while a run uses it; a fresh run never deletes an earlier run's
checkpoints unless told to (--overwrite); a resumed run must be the same run (its identity is stored with every
checkpoint and compared); a damaged newest checkpoint is skipped for the next older one; a non-finite step is never
applied (the step guards itself) and after --nonfinite_patience of them in a row the run stops with its last good
weights saved; SIGTERM and SIGINT end the current step, save a checkpoint and exit.
"""
import dataclasses
import json
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import jax
from tqdm import tqdm

from minimind_jax import MiniMindForCausalLM, get_policy
from minimind_jax.data import SAMPLE_DIRS, epoch_permutation, num_batches, open_dataset
from minimind_jax.paths import WEIGHTS_FILE, weight_dir
from minimind_jax.tokenizer import SAMPLE3_TOKENIZER_DIR, Tokenizer
from train import checkpoint, optim, rng
from train.batches import Rows, split_batch, step_rows
from train.config import TrainConfig
from train.console import config_record, short_data_warning, start_message
from train.distributed import host_copy, over_processes
from train.evaluation import Evaluator
from train.errors import UsageError
from train.lock import RunLock
from train.mesh import make_mesh, process_rows, replicated, state_sharding, to_global
from train.metrics import MetricsLog, duration, summary
from train.resume import check_fresh_start, clear_checkpoints, resolve_dtype, restore, run_identity
from train.rollout import make_scorer
from train.signals import Interrupted, Signals
from train.stage import Run, Stage
from train.state import LossScale, TrainState
from train.step import make_train_step
from train.weights import write_export


class Diverged(UsageError):
    """--nonfinite stop: too many non-finite steps in a row (the last good weights are saved)."""


def build_run(stage: Stage, config: TrainConfig) -> Run:
    cfg, d = config.model, config.data
    if cfg.generation not in stage.generations:
        raise UsageError(f"--stage {stage.name} is not implemented for --minimind {cfg.generation} (it is for "
                         f"{', '.join(map(str, stage.generations))})")
    try:
        tokenizer = Tokenizer.load(d.tokenizer or (SAMPLE3_TOKENIZER_DIR if cfg.generation == 3 else None))
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(f"--tokenizer {d.tokenizer}: {e}") from None
    if tokenizer.generation != cfg.generation:
        raise UsageError(f"--tokenizer {d.tokenizer}: a MiniMind-{tokenizer.generation} tokenizer (its chat template) "
                         f"for a --minimind {cfg.generation} model; pass the matching tokenizer or leave the default")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UsageError(f"tokenizer {d.tokenizer or 'data/sample/tokenizer'} has {tokenizer.vocab_size} ids but the "
                         f"model's vocab_size is {cfg.vocab_size}: use a matching tokenizer or preset")
    model = MiniMindForCausalLM(cfg, policy=get_policy(resolve_dtype(config.optim.dtype)))
    try:
        mesh = make_mesh(config.mesh.spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    data_path = d.path or SAMPLE_DIRS[cfg.generation] / stage.data_file
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
    identity: dict                # what makes this run this run (stored with every checkpoint)
    accepted: dict                # identity fields that differ from the resumed checkpoint's, as the user accepted


def make_batch(s: Session, state: TrainState, step: int) -> tuple[dict, dict, dict | None]:
    """(device batch, host info, stage state or None) of optimizer step `step`, a function of (seed, epoch, step)
    and, for RL, of the state sampled from."""
    o, seed = s.run.config.optim, s.run.config.seed
    epoch, in_epoch = divmod(step, s.steps_per_epoch)
    perm = epoch_permutation(seed, epoch, len(s.dataset))
    rows = step_rows(perm, in_epoch, o.accumulation_steps, o.batch_size)                # [A, B]: the whole step
    if s.stage.resample is not None:
        rows = s.stage.resample(s.run, state, rows, step)
    rows = rows[:, process_rows(s.run.mesh, o.batch_size)]                               # [A, B / processes]: ours
    arrays, host = split_batch(s.dataset.batch(rows.reshape(-1), epoch=epoch), rows.shape)
    info, extra = {}, None
    if s.stage.prepare is not None:
        arrays, info, extra = s.stage.prepare(s.run, state, s.frozen, arrays, host, step)
        info = over_processes(info)
    return to_global(arrays, s.run.mesh), info, extra


def _open_dataset(stage: Stage, run: Run):
    d = run.config.data
    if not run.data_path.is_file():
        raise UsageError(f"--data_path {run.data_path}: no such file")
    try:
        ds = open_dataset(stage.dataset, run.data_path, run.tokenizer, d.max_seq_len, seed=run.config.seed,
                          skip_bad_lines=d.skip_bad_lines, cache_dir=d.cache_dir, add_system_ratio=d.add_system_ratio,
                          empty_think_ratio=d.empty_think_ratio, thinking_ratio=d.thinking_ratio)
        return ds if stage.train_rows is None else Rows(ds, stage.train_rows(len(ds)))
    except OSError as e:      # unreadable file, unwritable cache directory
        raise UsageError(f"--data_path {run.data_path}: {e.strerror or e} ({e.filename or run.data_path})") from None


class Prefetcher:
    """Batches read ahead on a host thread while the device runs the step (a bound of one batch). Only where a batch
    does not depend on the state the step produces: the SFT family's rows are a function of (seed, epoch, step); an
    RL stage samples from the params its previous step wrote, so it reads in order."""

    def __init__(self, s: Session):
        self.s, self.ahead = s, not s.stage.rollouts
        self.pool = ThreadPoolExecutor(max_workers=1) if self.ahead else None
        self.pending: tuple[int, Future] | None = None

    def get(self, step: int):
        s = self.s
        if not self.ahead:
            return make_batch(s, s.state, step)
        if self.pending is not None and self.pending[0] == step:
            batch = self.pending[1].result()
        else:
            batch = make_batch(s, s.state, step)
        if step + 1 < s.stop:
            self.pending = (step + 1, self.pool.submit(make_batch, s, None, step + 1))
        return batch

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def setup(stage: Stage, config: TrainConfig) -> Session:
    """Build the run, read the data, create (or restore with --from_resume 1) the state, and jit the step.

    Cheap checks come first (flags, mesh, the weights to start from), so a mistake is reported before the data is
    tokenized or anything is compiled."""
    run = build_run(stage, config)
    mesh, o, ck = run.mesh, config.optim, config.checkpoint
    _check_mesh(stage, config, mesh)
    check_fresh_start(run)
    params, frozen = stage.init(run)
    dataset = _open_dataset(stage, run)
    steps_per_epoch = num_batches(len(dataset), o.global_batch)
    total_steps = o.epochs * steps_per_epoch
    stop = min(total_steps, o.max_steps) if o.max_steps else total_steps

    schedule = stage.schedule(run, total_steps, len(dataset))
    tx = stage.optimizer(run, total_steps, len(dataset)) if stage.optimizer else optim.adamw(schedule, o.grad_clip)
    extra = stage.init_extra(run, params, frozen, dataset)
    if resolve_dtype(o.dtype) == "float16":
        extra = {**extra, "loss_scale": LossScale.create()}
    state = TrainState.create(params, tx, rng.stream(config.seed, "train"), extra)
    state_shardings = state_sharding(state, mesh)
    state = jax.device_put(state, state_shardings)
    frozen = jax.device_put(frozen, state_sharding(frozen, mesh))
    identity = run_identity(stage, config, run, dataset)
    accepted = {}
    if ck.from_resume:
        state, accepted = restore(run, state, identity)
    elif ck.overwrite:
        clear_checkpoints(run)
    update_extra = stage.update_extra(run) if stage.update_extra else None
    loss_fn = stage.make_loss(run)
    step = (stage.make_step(run, loss_fn, tx, update_extra, schedule) if stage.make_step
            else make_train_step(loss_fn, tx, update_extra))
    step_fn = jax.jit(step, donate_argnums=0,
                      out_shardings=(state_shardings, replicated(mesh)))
    return Session(stage, run, dataset, state, frozen, step_fn, schedule, steps_per_epoch, total_steps, stop,
                   identity, accepted)


# A hook into the loop, for experiments that drive the real engine: called once before the first step (with the
# starting step and an empty record) and after every step with the session (its state already updated), the step
# count and the step's record (metrics, rollout info); returning True ends the run there, checkpoint and export
# included.
StepCallback = Callable[[Session, int, dict], bool | None]


def train(stage: Stage, config: TrainConfig, callback: StepCallback | None = None) -> Session:
    """Run one stage to the end (or to --max_steps, or until `callback` says stop); session.run.run_dir then holds
    its outputs."""
    run_dir = weight_dir(config.checkpoint.out_dir, config.checkpoint.save_weight, config.model)
    lock = RunLock(run_dir).acquire() if jax.process_index() == 0 else None
    try:
        return _train(stage, config, callback)
    finally:
        if lock is not None:
            lock.release()


def _train(stage: Stage, config: TrainConfig, callback: StepCallback | None) -> Session:
    s = setup(stage, config)
    run, o, ck = s.run, config.optim, config.checkpoint
    main = jax.process_index() == 0
    start = int(jax.device_get(s.state.step))
    mgr = checkpoint.manager(run.run_dir / "checkpoints")
    log = MetricsLog(run.run_dir / "metrics.jsonl", resume_step=start, enabled=main,
                     tracker="wandb" if ck.use_wandb else None, run_name=ck.wandb_run or run.run_dir.name,
                     config=config_record(config), project=ck.wandb_project)
    if main:
        print(start_message(s, start))
        warning = short_data_warning(s)
        if warning:
            print(warning, file=sys.stderr)
        if s.accepted:
            log.write({"step": start, "event": "resumed with changed settings",
                       **{f"changed_{k}": json.dumps(v) for k, v in s.accepted.items()}})
    bar = tqdm(total=s.stop, initial=start, desc=stage.name, unit="step", dynamic_ncols=True,
               disable=not main or not sys.stderr.isatty())   # logs get the summary lines only
    tokens_per_step = o.global_batch * (config.data.max_seq_len - 1)
    step, t0, t_last, s_last = start, time.perf_counter(), time.perf_counter(), start
    bad_at_save = int(jax.device_get(s.state.nonfinite_total))
    pending = None              # the previous step's (step, metrics): read once the next step is queued
    t_first = None              # when this invocation's first step was dispatched (compiled)

    def check_finite(step_done: int, metrics) -> None:
        streak = int(jax.device_get(metrics["nonfinite_streak"]))
        if streak and o.nonfinite == "stop" and streak >= o.nonfinite_patience:
            raise Diverged(f"step {step_done}: loss or gradients not finite for {streak} steps in a row (from step "
                           f"{step_done - streak + 1}); those steps were not applied and the weights of step "
                           f"{step_done - streak} are saved. Lower --learning_rate and resume: --from_resume 1 "
                           f"--resume_accept learning_rate (or --nonfinite skip to carry on)")

    def save() -> None:
        nonlocal bad_at_save
        total = int(jax.device_get(s.state.nonfinite_total))
        epoch, in_epoch = divmod(int(jax.device_get(s.state.step)), s.steps_per_epoch)
        checkpoint.save(mgr, s.state, {"stage": stage.name, "identity": s.identity, "global_batch": o.global_batch,
                                       "steps_per_epoch": s.steps_per_epoch, "epoch": epoch,
                                       "batch_in_epoch": in_epoch, "num_processes": jax.process_count(),
                                       "nonfinite_steps": total},
                        healthy=total == bad_at_save)
        bad_at_save = total
        _write_export(run, stage, s.state, s.frozen)

    evaluator = None
    if config.data.eval_path is not None:
        if stage.rollouts:
            raise UsageError(f"--eval_data: the RL stage {stage.name} has no held-out loss (its reward is logged "
                             f"every step)")
        evaluator = Evaluator(run, stage, s.frozen)
    eval_every = config.data.eval_interval or ck.save_interval

    def evaluate(step_done: int) -> None:
        result = evaluator(s.state)
        if main:
            log.write({"step": step_done, **result})
            tqdm.write(f"step {step_done} · eval " + " · ".join(f"{k[5:]} {v:.4g}" for k, v in result.items()))

    if callback is not None:
        callback(s, start, {})
    with Signals() as signals, Prefetcher(s) as prefetch:
        try:
            while step < s.stop:
                batch, info, extra = prefetch.get(step)
                if extra is not None:
                    s.state = s.state.replace(extra=extra)
                t_update = time.perf_counter()
                s.state, metrics = s.step_fn(s.state, batch, s.frozen)
                if pending is not None:
                    check_finite(*pending)
                if stage.rollouts:     # the next rollout waits for these params anyway: timing the update is free
                    jax.block_until_ready(metrics)
                    info = {**info, "update_s": time.perf_counter() - t_update}
                step += 1
                pending = (step, metrics)
                if step == start + 1:       # the first step compiles: the rate for the ETA is measured from its end
                    t_first = time.perf_counter()
                bar.update(1)
                logged = step % ck.log_interval == 0 or step == s.stop
                if logged or callback is not None:
                    record = {"step": step, "epoch": (step - 1) // s.steps_per_epoch,
                              **{k: float(v) for k, v in jax.device_get(metrics).items()}, **info}
                    if "lr" not in record:            # a step that knows its own rate (PPO's minibatches) logs it
                        record["lr"] = float(s.schedule(step - 1))
                if logged:
                    now = time.perf_counter()
                    elapsed = now - t0
                    record.update(tokens_per_s=tokens_per_step * (step - s_last) / (now - t_last), time=time.time())
                    t_last, s_last = now, step
                    log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                    eta = duration((now - t_first) / (step - start - 1) * (s.stop - step)) if step - start > 1 else "?"
                    head = (f"step {step}/{s.stop} · epoch {(step - 1) // s.steps_per_epoch + 1}/{o.epochs} · "
                            f"{duration(elapsed)} elapsed · ETA {eta}")
                    tqdm.write(summary(record, head=head))
                    if "sample_response" in record:
                        tqdm.write(f"  sample (reward {record['sample_reward']:.3g}): "
                                   f"{record['sample_prompt'][-160:]!r} -> {record['sample_response'][:240]!r}")
                stopped = callback is not None and bool(callback(s, step, record))
                if evaluator is not None and (step % eval_every == 0 or step == s.stop):
                    evaluate(step)
                if signals.received is not None or step % ck.save_interval == 0 or step == s.stop or stopped:
                    check_finite(*pending)
                    save()
                if signals.received is not None:
                    name = signal.Signals(signals.received).name
                    raise Interrupted(signals.received, f"{name} at step {step}: checkpoint saved in "
                                                        f"{run.run_dir / 'checkpoints'}; continue with --from_resume 1")
                if stopped:
                    break
        except Diverged:
            if step > start:
                save()                         # the state holds the last good weights: bad steps were not applied
            raise
        finally:
            bar.close()
    if pending is not None:
        check_finite(*pending)
    if start >= s.stop:
        print(f"{stage.name}: already at step {start} of {s.stop}; nothing to do")
        if not (run.run_dir / WEIGHTS_FILE).exists():     # every process: the export gathers the params
            _write_export(run, stage, s.state, s.frozen)
    if stage.evaluate is not None and main:
        report = stage.evaluate(run, s.state, s.frozen)
        (run.run_dir / "eval.json").write_text(json.dumps(report, indent=1))
        print(f"{stage.name} evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in report.items()))
    if main:
        skipped = int(jax.device_get(s.state.nonfinite_total))
        print(f"{stage.name}: saved to {run.run_dir / WEIGHTS_FILE}"
              + (f" ({skipped} non-finite steps skipped)" if skipped else ""))
    return s
