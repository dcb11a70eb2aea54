"""What a stage is: data, not a copy of a trainer. The engine (engine.py) runs any Stage.

A stage says which jsonl rows it reads, how its trainable and frozen params start, its pure loss, and — for the RL
stages — how a batch of prompts becomes a batch of scored rollouts before the jitted update. Everything the engine
must know about a stage is a field here; the engine never asks for a stage by name.
"""
import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optax
from jax.sharding import Mesh

from minimind_jax import MiniMindForCausalLM
from minimind_jax.convert import params_to_torch
from train import optim
from train.config import TrainConfig
from train.weights import start_params


@dataclasses.dataclass(frozen=True)
class Run:
    """What a stage's functions may read, built once per stage by the engine."""
    config: TrainConfig
    model: MiniMindForCausalLM   # config.model under the run's precision policy
    tokenizer: Any
    mesh: Mesh
    run_dir: Path                # <out_dir>/<save_weight>_<hidden>[_moe]
    data_path: Path              # the jsonl this run trains on (--data_path or the stage's sample file)
    score: Callable | None = None  # RL: (prompts, responses, answers) -> (rewards f32 [N], {part: f32 [N]})


# ---- the defaults of the fields below: what most stages do ---------------------------------------------------------

def init_full(run: Run):
    """Train every weight of the starting model; nothing frozen."""
    return start_params(run.config), {}


def sft_schedule(run: Run, total_steps: int, rows: int) -> optax.Schedule:
    """The reference's per-micro-batch cosine, at the indexing of the run's MiniMind generation."""
    o = run.config.optim
    if run.config.model.generation == 3:
        micro_per_epoch = -(-rows // o.batch_size)                      # the reference's batches per epoch
        return optim.sft_schedule3(o.learning_rate, micro_per_epoch, o.epochs, o.accumulation_steps)
    return optim.sft_schedule(o.learning_rate, total_steps * o.accumulation_steps, o.accumulation_steps)


def rl_schedule(run: Run, total_steps: int, rows: int) -> optax.Schedule:
    return optim.rl_schedule(run.config.optim.learning_rate, total_steps)


def export_full(run: Run, params, frozen) -> dict[str, np.ndarray]:
    return params_to_torch(params, run.config.model)


def _no_extra(run: Run, params, frozen, dataset) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    defaults: dict                          # the reference's defaults, by flag name; flags given win
    data_file: str                          # in the embedded sample, used when --data_path is not given
    dataset: str                            # what the rows are: 'pretrain', 'sft', 'dpo', 'rlaif' (data.open_dataset)
    make_loss: Callable[[Run], Callable]    # run -> loss_fn(params, batch, rng, frozen, extra) -> (loss, metrics)
    init: Callable = init_full              # run -> (trainable params, frozen pytree)
    schedule: Callable = sft_schedule       # (run, total optimizer steps, rows) -> lr(step), also what is logged
    export: Callable = export_full          # (run, params, frozen) -> {reference name: array}
    init_extra: Callable = _no_extra        # (run, params, frozen, dataset) -> the stage's own state, checkpointed
    optimizer: Callable | None = None       # (run, total steps) -> optax transformation; None: AdamW on `schedule`
    prepare: Callable | None = None         # RL: (run, state, frozen, arrays, host, step) -> (batch, info, extra):
    #                                         the rollout batch, its logged info, and the stage state the step should
    #                                         run on when host-side work changed it (None: unchanged)
    resample: Callable | None = None        # (run, state, rows int [A, B], step) -> rows [A, B]: the rows the step
    #                                         trains on, drawn from the whole step's (every process draws alike)
    update_extra: Callable | None = None    # (run) -> fn(extra, params, batch, step) -> extra, inside the jit
    evaluate: Callable | None = None        # (run, state, frozen) -> {metric: float}, after training (eval.json)
    make_step: Callable | None = None       # (run, loss_fn, tx, update_extra, schedule) -> step(state, batch,
    #                                         frozen), for several updates per rollout; None: make_train_step
    single_process: str | None = None       # why the stage cannot span processes yet (None: it can)
    train_rows: Callable | None = None      # rows -> the rows it trains on (the rest held out), None: all
    defaults3: dict = dataclasses.field(default_factory=dict)   # MiniMind-3's defaults where they differ
    generations: tuple[int, ...] = (2, 3)   # the model generations the stage implements

    @property
    def rollouts(self) -> bool:
        """RL stages sample before each update: the engine times the update apart from the rollout."""
        return self.prepare is not None
