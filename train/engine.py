"""The one training loop every stage runs: data order, jitted step, logging, checkpoints, export, resume.

Step k of a run always sees the same rows, RNG and learning rate whether or not the run was stopped before it:
the order of an epoch is a pure function of (seed, epoch), the position is derived from the step, and the RNG
and the stage's state live in the checkpointed TrainState.
"""
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from minimind_jax import MiniMindConfig, MiniMindForCausalLM, get_policy
from minimind_jax.data import SAMPLE_DIR, epoch_permutation, num_batches
from minimind_jax.tokenizer import Tokenizer
from train import checkpoint, optim
from train.batches import split_batch, step_rows
from train.distributed import host_copy, sync
from train.mesh import make_mesh, process_rows, replicated, state_sharding, to_global
from train.metrics import MetricsLog, summary
from train.stage import Run, Stage, UsageError, weight_dir
from train.state import LossScale, TrainState
from train.step import make_train_step


def resolve_dtype(name: str) -> str:
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


def model_config(args) -> MiniMindConfig:
    overrides = {k: v for k, v in (("hidden_size", args.hidden_size), ("num_hidden_layers", args.num_hidden_layers),
                                   ("use_moe", None if args.use_moe is None else bool(args.use_moe))) if v is not None}
    return MiniMindConfig.from_preset(args.preset, **overrides)


def build_run(stage: Stage, args) -> Run:
    cfg = model_config(args)
    try:
        tokenizer = Tokenizer.load(args.tokenizer)
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(f"--tokenizer {args.tokenizer}: {e}") from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UsageError(f"tokenizer {args.tokenizer or 'data/sample/tokenizer'} has {tokenizer.vocab_size} ids but the "
                         f"model's vocab_size is {cfg.vocab_size}: use a matching tokenizer or preset")
    model = MiniMindForCausalLM(cfg, policy=get_policy(resolve_dtype(args.dtype)))
    try:
        mesh = make_mesh(args.mesh)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Run(args=args, cfg=cfg, model=model, tokenizer=tokenizer, mesh=mesh,
               run_dir=weight_dir(args.out_dir, args.save_weight, cfg))


def _check_mesh(stage: Stage, args, mesh):
    devices = mesh.devices.size
    if args.batch_size % devices:
        raise UsageError(f"--batch_size {args.batch_size} must divide by the {devices} devices of the mesh")
    # A stage's `prepare` (the RL rollouts) runs on each process's own rows with its local params: right when params
    # are whole on every process (data parallel), not yet when fsdp/expert split them across hosts, nor for the
    # per-prompt SPO table.
    if jax.process_count() > 1 and stage.prepare is not None:
        if math.prod(n for axis, n in mesh.shape.items() if axis != "data") > 1:
            raise UsageError(f"--stage {args.stage} on {jax.process_count()} processes needs whole params on every "
                             f"process: use --mesh data=N (got {dict(mesh.shape)})")
        if getattr(args, "spo_mode", "minimind") == "paper":
            raise UsageError("--spo_mode paper runs on one process for now (its per-prompt table is not split "
                             "across hosts); use --spo_mode minimind or one process")


def _write_export(run: Run, stage: Stage, state: TrainState, frozen) -> None:
    """weights.safetensors (reference names, fp16) and config.json, written whole or not at all (process 0)."""
    params = host_copy(state.params)      # on every process: a collective when FSDP splits params across hosts
    if jax.process_index() != 0:
        return
    tensors = stage.export(run, params, frozen)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run.run_dir / "weights.safetensors.tmp"
    save_file({k: np.ascontiguousarray(v, np.float16) for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, run.run_dir / "weights.safetensors")
    tmp = run.run_dir / "config.json.tmp"
    tmp.write_text(run.cfg.to_json())
    os.replace(tmp, run.run_dir / "config.json")


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

    def batch(self, step: int) -> tuple[dict, dict]:
        """(device batch, host info) of optimizer step `step`: rows by (seed, epoch, step), RL rollouts included."""
        a = self.run.args
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        perm = epoch_permutation(a.seed, epoch, len(self.dataset))
        rows = step_rows(perm, in_epoch, a.accumulation_steps, a.batch_size)      # [A, B]: the whole step
        rows = rows[:, process_rows(self.run.mesh, a.batch_size)]                  # [A, B / processes]: ours
        arrays, host = split_batch(self.dataset.batch(rows.reshape(-1)), rows.shape)
        info = {}
        if self.stage.prepare is not None:
            arrays, info = self.stage.prepare(self.run, self.state, self.frozen, arrays, host, step)
        return to_global(arrays, self.run.mesh), info


def setup(stage: Stage, args) -> Session:
    """Build the run, read the data, create (or restore with --from_resume 1) the state, and jit the step."""
    run = build_run(stage, args)
    mesh = run.mesh
    _check_mesh(stage, args, mesh)
    data_path = Path(args.data_path) if args.data_path else SAMPLE_DIR / stage.data_file
    if not data_path.exists():
        raise UsageError(f"--data_path {data_path}: no such file")
    dataset = stage.dataset(data_path, run.tokenizer, args.max_seq_len,
                            skip_bad_lines=args.skip_bad_lines, cache_dir=args.cache_dir)
    A, B = args.accumulation_steps, args.batch_size
    steps_per_epoch = num_batches(len(dataset), A * B)
    total_steps = args.epochs * steps_per_epoch
    stop = min(total_steps, args.max_steps) if args.max_steps else total_steps

    params, frozen = stage.init(run, jax.random.PRNGKey(args.seed))
    schedule = stage.schedule(run, total_steps)
    tx = stage.optimizer(run, total_steps) if stage.optimizer else optim.adamw(schedule, args.grad_clip)
    extra = stage.init_extra(run, params, frozen)
    if resolve_dtype(args.dtype) == "float16":
        extra = {**extra, "loss_scale": LossScale.create()}
    state = TrainState.create(params, tx, args.seed, extra)
    state_shardings = state_sharding(state, mesh)
    state = jax.device_put(state, state_shardings)
    frozen = jax.device_put(frozen, state_sharding(frozen, mesh))
    if args.from_resume:
        state = _restore(run, state, A * B)
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


def train(stage: Stage, args) -> Session:
    """Run one stage to the end (or to --max_steps); session.run.run_dir then holds its outputs."""
    s = setup(stage, args)
    run, args = s.run, s.run.args
    start = int(jax.device_get(s.state.step))
    mgr = checkpoint.manager(run.run_dir / "checkpoints")
    log = MetricsLog(run.run_dir / "metrics.jsonl", resume_step=start, enabled=jax.process_index() == 0,
                     tracker="wandb" if args.use_wandb else None, run_name=run.run_dir.name,
                     config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))})
    bar = tqdm(total=s.stop, initial=start, desc=stage.name, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not sys.stderr.isatty())   # logs get the summary lines only
    tokens_per_step = args.accumulation_steps * args.batch_size * (args.max_seq_len - 1)
    step, t_last, s_last = start, time.perf_counter(), start
    while step < s.stop:
        batch, info = s.batch(step)
        t_update = time.perf_counter()
        s.state, metrics = s.step_fn(s.state, batch, s.frozen)
        if "rollout_s" in info:        # RL: the next rollout waits for these params anyway, so timing costs nothing
            jax.block_until_ready(metrics)
            info = {**info, "update_s": time.perf_counter() - t_update}
        step += 1
        bar.update(1)
        if step % args.log_interval == 0 or step == s.stop:
            now = time.perf_counter()
            record = {"step": step, "epoch": (step - 1) // s.steps_per_epoch,
                      **{k: float(v) for k, v in jax.device_get(metrics).items()}, **info,
                      "lr": float(s.schedule(step - 1)),
                      "tokens_per_s": tokens_per_step * (step - s_last) / (now - t_last), "time": time.time()}
            t_last, s_last = now, step
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
            tqdm.write(summary(record))
        if step % args.save_interval == 0 or step == s.stop:
            epoch, in_epoch = divmod(step, s.steps_per_epoch)
            checkpoint.save(mgr, s.state, {"stage": stage.name, "global_batch": args.accumulation_steps * args.batch_size,
                                           "steps_per_epoch": s.steps_per_epoch, "epoch": epoch,
                                           "batch_in_epoch": in_epoch, "num_processes": jax.process_count(),
                                           "config": run.cfg.to_dict()})
            _write_export(run, stage, s.state, s.frozen)
    bar.close()
    if start >= s.stop:
        print(f"{stage.name}: already at step {start} of {s.stop}; nothing to do")
        _write_export(run, stage, s.state, s.frozen)
    if stage.evaluate is not None and jax.process_index() == 0:
        report = stage.evaluate(run, s.state, s.frozen)
        (run.run_dir / "eval.json").write_text(json.dumps(report, indent=1))
        print(f"{stage.name} evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in report.items()))
    return s
