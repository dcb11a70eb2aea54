"""What a stage is: data, not a copy of a trainer (DESIGN.md). The engine (engine.py) runs any Stage.

A stage says which jsonl rows it reads, how its trainable and frozen params start, its pure loss, and — for the RL
stages — how a batch of prompts becomes a batch of scored rollouts before the jitted update.
"""
import dataclasses
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.convert import load_weights, params_to_torch
from train import optim


class UsageError(Exception):
    """A bad flag, a missing file: printed as one line by train.run, exit code 2."""


@dataclasses.dataclass
class Run:
    """Everything a stage's functions may need, built once per stage by the engine."""
    args: Namespace
    cfg: MiniMindConfig
    model: MiniMindForCausalLM
    tokenizer: Any
    mesh: Mesh
    run_dir: Path              # <out_dir>/<save_weight>_<hidden>[_moe]
    cache: dict = dataclasses.field(default_factory=dict)   # things built once per run (jitted scorers, ...)


def weight_dir(out_dir, name: str, cfg: MiniMindConfig) -> Path:
    """The reference's naming, `{name}_{hidden}[_moe]`, as a directory."""
    return Path(out_dir) / f"{name}_{cfg.hidden_size}{'_moe' if cfg.use_moe else ''}"


def resolve_weight(out_dir, name: str, cfg: MiniMindConfig, flag: str = "--from_weight") -> Path:
    """NAME -> <out_dir>/NAME_<hidden>[_moe]/weights.safetensors; a .pth/.safetensors path or a run dir as given."""
    path = Path(name)
    if path.suffix in (".pth", ".safetensors"):
        candidate = path
    elif path.is_dir():
        candidate = path / "weights.safetensors"
    else:
        candidate = weight_dir(out_dir, name, cfg) / "weights.safetensors"
    if not candidate.exists():
        raise UsageError(f"{flag} {name}: {candidate} does not exist (train that stage first, or pass a path)")
    return candidate


def random_params(model: MiniMindForCausalLM, rng: jax.Array):
    return model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]


def load_or_init(run: Run, rng: jax.Array, name: str | None = None, cfg: MiniMindConfig | None = None,
                 flag: str = "--from_weight"):
    """The params a stage starts from: `--from_weight none` is a fresh random init."""
    name = run.args.from_weight if name is None else name
    cfg = cfg or run.cfg
    if name in (None, "", "none"):
        return random_params(MiniMindForCausalLM(cfg), rng)
    return load_weights(resolve_weight(run.args.out_dir, name, cfg, flag), cfg)


# ---- defaults shared by most stages -------------------------------------------------------------------------------

def init_full(run: Run, rng):
    """Train every weight; nothing frozen."""
    return load_or_init(run, rng), {}


def sft_schedule(run: Run, total_steps: int) -> optax.Schedule:
    a = run.args
    return optim.sft_schedule(a.learning_rate, total_steps * a.accumulation_steps, a.accumulation_steps)


def rl_schedule(run: Run, total_steps: int) -> optax.Schedule:
    return optim.rl_schedule(run.args.learning_rate, total_steps)


def export_full(run: Run, params, frozen) -> dict[str, np.ndarray]:
    return params_to_torch(params, run.cfg)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    defaults: dict                          # the reference's defaults (SPEC.md §5), overridden by flags
    data_file: str                          # in data/sample/, used when --data_path is not given
    dataset: type                           # minimind_jax.data dataset class
    make_loss: Callable[[Run], Callable]    # run -> loss_fn(params, batch, rng, frozen, extra) -> (loss, metrics)
    init: Callable = init_full              # (run, rng) -> (trainable params, frozen pytree)
    init_extra: Callable = lambda run, params, frozen: {}    # the stage's own state, checkpointed
    schedule: Callable = sft_schedule       # (run, total optimizer steps) -> lr(step), also what is logged
    optimizer: Callable | None = None       # (run, total steps) -> optax transformation; None: AdamW on `schedule`
    prepare: Callable | None = None         # RL: (run, state, frozen, batch, step) -> device batch (rollouts)
    update_extra: Callable | None = None    # (run) -> fn(extra, params, batch, step) -> extra, inside the jit
    export: Callable = export_full          # (run, params, frozen) -> {reference name: array}
    evaluate: Callable | None = None        # (run, state, frozen) -> {metric: float}, after training (eval.json)
